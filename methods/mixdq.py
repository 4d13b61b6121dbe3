"""``mixdq``: MixDQ-style mixed-precision quantization of the denoiser.

    qbench run --method mixdq --bits W4A8 --model toy-flux [--mode kernel]
    qbench calibrate --method mixdq --bits W4A8 --model toy-flux
    qbench run --method qsched -O base=mixdq --bits W4A8 --model toy-flux

Source: Zhao et al., "MixDQ: Memory-Efficient Few-Step Text-to-Image Diffusion Models with
Metric-Decoupled Mixed Precision Quantization", ECCV 2024 (arXiv 2405.17873), and its public code
github.com/thu-nics/MixDQ. ``docs/mixdq.md`` lists the facts taken from them (BOS-aware text
layers, metric-decoupled SSIM / SQNR sensitivity, the per-group integer programs and their budget
split, quality layers at 4 or 8 bits only) and the exact rules qbench applies (layers incl. Conv2d,
quantizer, ``-O rule=mixdq|loose``, the weight and activation budgets, BOS); the math is in
:mod:`qbench.quant.allocate`.

The allocation is stored as ``<out_dir>/mixdq/<model>_<bits>_<key>.yaml`` (MixDQ's format,
``layer.name: 4``, or ``{w: 4, a: 16}`` where a layer's activations differ from ``--bits``) plus a
``.json`` with sensitivities, the sweep and provenance; ``naive --bits <same> -O layers=FILE``
loads the YAML (the same layers, without the BOS path), ``mixdq -O allocation=FILE`` too. The
YAML's header comment names the model and ``--bits`` it was made for; ``mixdq`` refuses a file
made for another model or ``--bits`` (its widths were solved for that budget), ``naive`` one made
for another model; files without the header (MixDQ's public YAMLs) are taken as they are.
"""
from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Any

from qbench.methods.mixdq_alloc import (  # noqa: F401 (re-exported)
    allocation_identity,
    allocation_yaml,
    check_made_for,
    overrides_of,
    parse_allocation,
)
from qbench.methods.mixdq_calib import calibrate_allocation

from qbench.api import Capabilities, Method
from qbench.config import stable_hash
from qbench.errors import ConfigError, QBenchError
from qbench.quant import allocate as al
from qbench.quant.spec import QUANT_OPTIONS, BitSpec, QuantConfig

if TYPE_CHECKING:  # pragma: no cover
    from qbench.api import Prompt
    from qbench.models.base import LoadedModel

#: default content-layer patterns per denoiser class (module docstring)
CONTENT = {
    "UNet2DConditionModel": ("*attn2*", "*ff*"),
    "FluxTransformer2DModel": ("context_embedder", "*text_embedder*", "*add_q_proj", "*add_k_proj", "*add_v_proj", "*to_add_out", "*ff*", "*proj_mlp"),
}
#: options that only steer the calibration (nothing of a given allocation's images depends on them)
CALIBRATION_ONLY = {"rule", "conv", "w_candidates", "a_candidates", "k_sweep", "b_sweep", "tolerance", "act_alloc", "a_k_sweep", "a_fp16", "content"}
#: options that change neither the allocation nor the images (where it comes from, how fast it is made)
NO_EFFECT = ("allocation", "recalibrate", "calib_batch_size", "reuse_prefix")
PASS_THROUGH = ("group_size", "include", "exclude", "w_clip", "group_scales", "a_granularity")


def _options() -> tuple:
    from qbench.options import Opt

    q = {o.name: o for o in QUANT_OPTIONS}
    return (
        Opt("rule", "str", "mixdq", "group widths: mixdq (quality layers 4 or 8 bits, splits with quality mean >= 4; content 2/4/8) "
            "and the 16-bit activation layers outside the A budget, as MixDQ's code; or loose (every layer any of w_candidates, "
            "both group means down to the narrowest, the 16-bit layers counted in the A mean)", choices=("mixdq", "loose")),
        Opt("conv", "bool", True, "allocate the denoiser's Conv2d layers too (MixDQ quantizes them); false: Linear only"),
        Opt("w_candidates", "any", None, "candidate weight widths (default 2,4,8; with rule=mixdq the quality layers take those >= 4)"),
        Opt("a_candidates", "any", None, "candidate activation widths (default 4,8)"),
        Opt("k_sweep", "any", None, "the values of k = b_content/b_quality to sweep, a list (k_sweep=1 means k = 1.0, not 1 point; "
            "default MixDQ's linspace(0.46, 1.36, 10))"),
        Opt("b_sweep", "any", None, "the overall weight budgets B to sweep, a list of bits in [narrowest candidate, W] (b_sweep=2 means B = 2.0 bits, "
            "not 2 points; default linspace(W-0.3, W, 10))"),
        Opt("tolerance", "float", 0.02, "allowed deviation of a group's mean bits from its budget", minimum=0.0),
        Opt("act_alloc", "str", "mixed", "activation widths: mixed (ILP, mean = A) or uniform (A, a_fp16 layers at 16)", choices=("mixed", "uniform")),
        Opt("a_k_sweep", "any", None, "k values of the activation split (default 1)"),
        Opt("a_fp16", "int", None, "most activation-sensitive layers kept at 16 bits (default ceil(1% of layers), 0 if it cannot fit)", minimum=0),
        Opt("content", "list", None, "fnmatch patterns of content (SSIM-scored) layers (default per architecture)"),
        Opt("bos", "bool", True, "BOS-aware text-fed layers (token 0 in full precision, its k/v cached)"),
        Opt("text_token_rule", "str", "none", "text streams without a prompt-independent token 0: none, first or outlier token in FP", choices=("none", "first", "outlier")),
        Opt("allocation", "str", None, "a per-layer YAML allocation to use instead of calibrating", path=True),
        Opt("recalibrate", "bool", False, "calibrate even if a stored allocation exists"),
        Opt("calib_batch_size", "int", None, "images per generation batch while calibrating (default --batch-size)", minimum=1),
        Opt("reuse_prefix", "bool", True, "output SQNR: serve the units before the perturbed layer from recorded full-precision outputs (same scores, less work)"),
        *(q[n] for n in PASS_THROUGH),
    )


def _numbers(name: str, values: Any, default: list, cast=float) -> list:
    """An option holding numbers: a number, a list of numbers or a comma-separated string."""
    if values is None:
        return list(default)
    if isinstance(values, str):
        values = [v for v in values.replace(" ", "").split(",") if v]
    elif isinstance(values, (int, float)) and not isinstance(values, bool):
        values = [values]
    bad = ConfigError(f"method 'mixdq' option {name} must be a number or a list of numbers{' of bits' if cast is int else ''}, got {values!r}")
    if not isinstance(values, (list, tuple)) or not values:
        raise bad
    try:
        nums = [float(v) for v in values if not isinstance(v, bool)]
    except (TypeError, ValueError):
        raise bad from None
    if len(nums) != len(values) or not all(math.isfinite(v) for v in nums) or (cast is int and any(v != int(v) for v in nums)):
        raise bad
    return [cast(v) for v in nums]


class MixDQ(Method):
    name = "mixdq"
    description = "MixDQ-style mixed precision: BOS-aware text layers, metric-decoupled sensitivity, ILP bit allocation"
    uses_bits = True
    OPTIONS = _options()
    CALIBRATION_PROMPTS = 32  # the paper's calibration set size
    CAPABILITIES = Capabilities(fp_calibration_images=True, calibrate_command=True)

    def __init__(self, cfg):
        if not cfg.bits:
            raise ConfigError("method 'mixdq' needs --bits, e.g. --bits W4A8 (W: the mean weight-bit budget, A: the activation budget)")
        super().__init__(cfg)
        from qbench.options import parse_options

        self.opts = parse_options(f"method {self.name!r}", self.OPTIONS, self.options)
        quant = {k: self.opts[k] for k in PASS_THROUGH if self.opts[k] is not None}
        self.qconfig = QuantConfig(bits=cfg.bits, mode=cfg.mode or "simulate", **quant)
        self.sim_config = self.qconfig.replace(mode="simulate")
        self.bits: BitSpec = self.qconfig.bits
        o = self.opts
        self.w_cands = sorted(set(_numbers("w_candidates", o["w_candidates"], [2, 4, 8], int)))
        self.a_cands = sorted(set(_numbers("a_candidates", o["a_candidates"], [4, 8], int)))
        for b in self.w_cands + self.a_cands:
            BitSpec(b, 8)  # 2..8
        w = self.bits.w
        if not self.w_cands[0] <= w <= self.w_cands[-1]:
            raise ConfigError(f"mixdq: the weight budget W{w} lies outside the candidate widths {self.w_cands}")
        # the quality (output-SQNR) group's widths and least mean: MixDQ's rule keeps it at >= 4 bits
        q_min = al.MIXDQ_QUALITY_WIDTHS[0] if o["rule"] == "mixdq" else self.w_cands[0]
        self.q_cands = [b for b in self.w_cands if b >= q_min]
        if not self.q_cands:
            raise ConfigError(f"mixdq: rule=mixdq gives the quality layers {q_min} bits or more, w_candidates {self.w_cands} has none (or pass -O rule=loose)")
        self.q_range = (float(max(q_min, self.q_cands[0])), float(self.q_cands[-1]))
        self.k_sweep = _numbers("k_sweep", o["k_sweep"], list(al.MIXDQ_K_SWEEP))
        self.b_sweep = _numbers("b_sweep", o["b_sweep"], al.budget_grid(w))
        self.a_k_sweep = _numbers("a_k_sweep", o["a_k_sweep"], [1.0])
        if min(self.k_sweep + self.a_k_sweep) <= 0:
            raise ConfigError("mixdq: k_sweep and a_k_sweep values must be > 0")
        bad = [b for b in self.b_sweep if b > w + o["tolerance"] + 1e-9 or b < self.w_cands[0] - 1e-9]
        if bad:
            raise ConfigError(f"mixdq: b_sweep values must lie in [{self.w_cands[0]} (narrowest of w_candidates), W{w} (--bits)], got {', '.join(f'{b:g}' for b in bad)}: "
                              f"b_sweep lists weight budgets B in bits (b_sweep=2 means B = 2.0, not 2 points)")
        if o["a_fp16"] and self.bits.a is None:
            raise ConfigError("mixdq: a_fp16 applies to quantized activations; --bits has A16 (weight-only)")
        self.given = parse_allocation(o["allocation"], self.bits) if o["allocation"] else None
        if self.given is not None:
            check_made_for(o["allocation"], cfg.model, self.bits)
        self.alloc: dict[str, dict[str, Any]] | None = None
        self.origin: str | None = None  # option | stored | calibrated
        self.calib_info: dict[str, Any] = {}
        self.text: dict[str, Any] | None = None
        self._qreport: Any = None
        self._swapped: list[Any] = []

    @classmethod
    def run_calibration(cls, cfg: Any, *, show_progress: bool = True) -> dict[str, Any]:
        """Entry point of ``qbench calibrate`` (module-level :func:`run_calibration`)."""
        from qbench.methods.mixdq_calib import run_calibration

        return run_calibration(cfg, show_progress=show_progress)

    # -- where allocations live -------------------------------------------------------------------
    def content_patterns(self, denoiser_class: str) -> tuple[str, ...]:
        return tuple(self.opts["content"]) if self.opts["content"] else CONTENT.get(denoiser_class, CONTENT["UNet2DConditionModel"])

    def allocation_key(self) -> dict[str, Any]:
        from qbench.models.loader import get_spec

        spec = get_spec(self.cfg.model)
        keep = {k: v for k, v in self.opts.items() if k not in NO_EFFECT}
        return {"model": self.cfg.model, "model_path": self.cfg.model_path, "bits": str(self.bits), "steps": self.cfg.steps or spec.steps,
                "seed": self.cfg.seed, "resolution": self.cfg.resolution or spec.resolution,
                "guidance": spec.guidance if self.cfg.guidance is None else self.cfg.guidance,
                "calib": self.cfg.calib_prompts or f"{spec.calib_prompts}:{self.default_calibration_n(self.CALIBRATION_PROMPTS)}", "options": keep}

    def stored_path(self) -> str:
        """``<out_dir>/mixdq/<model>_<bits>_<key>.json``, ``key`` the first 12 characters of the
        allocation's identity (:func:`~qbench.methods.mixdq_alloc.allocation_identity`)."""
        stem = f"{self.cfg.model}_{self.bits}_{allocation_identity(self).key[:12]}".replace("/", "-")
        return os.path.join(self.cfg.out_dir, "mixdq", stem + ".json")

    def _stored(self) -> dict[str, Any] | None:
        """The stored allocation of this configuration's identity (none while the weights cannot be
        located: nothing was calibrated on them here; none when it records another key)."""
        import json

        from qbench.errors import MissingWeightsError

        try:
            path = self.stored_path()
        except MissingWeightsError:
            return None
        if self.opts["recalibrate"] or not os.path.exists(path):
            return None
        try:
            with open(path, encoding="utf-8") as f:
                stored = json.load(f)
        except (OSError, ValueError) as e:
            raise QBenchError(f"stored mixdq allocation {path} is unreadable ({e}); delete it or pass -O recalibrate=true") from None
        return stored if isinstance(stored, dict) and (stored.get("identity") or {}).get("key") == allocation_identity(self).key else None

    def identity_describe(self) -> dict[str, Any]:
        """A given allocation file: its content; else what determines the calibrated allocation
        (its identity key), so a stored run is found again whether or not the allocation exists yet."""
        if self.given is not None:
            return {**self.describe(), "files": self.option_files()}
        return {**{k: v for k, v in self.describe().items() if k != "allocation"}, "allocation": allocation_identity(self).key}

    def _peek(self) -> dict[str, dict[str, Any]] | None:
        if self.alloc is not None:
            return self.alloc
        if self.given is not None:
            return self.given
        st = self._stored()
        return None if st is None else {n: {"w": v["w"], "a": v["a"]} for n, v in st["allocation"].items()}

    def check_layers(self, denoiser: Any) -> None:
        """Preflight of ``-O allocation=FILE`` on the denoiser built on the meta device: every
        layer it names exists and can be quantized (ConfigError listing the missing names), so a
        wrong file fails before any model loads or reference image is generated."""
        if self.given is None:
            return
        import difflib

        from qbench.quant.api import _check_overrides

        named = dict(denoiser.named_modules())
        missing = sorted(n for n in self.given if n not in named)
        if missing:
            hint = next(((n, c[0]) for n in missing[:5] for c in [difflib.get_close_matches(n, list(named), n=1, cutoff=0.6)] if c), None)
            more = f" (+{len(missing) - 5} more)" if len(missing) > 5 else ""
            raise ConfigError(f"mixdq allocation {self.opts['allocation']} names {len(missing)} layer(s) that are not modules of {self.cfg.model}'s denoiser "
                              f"({type(denoiser).__name__}): {', '.join(missing[:5])}{more}" + (f"; did you mean {hint[1]!r} for {hint[0]!r}?" if hint else ""))
        try:
            _check_overrides(named, self.qconfig.replace(overrides=overrides_of(self.given)))
        except ConfigError as e:
            raise ConfigError(f"mixdq allocation {self.opts['allocation']}: {e}") from None

    # -- protocol ---------------------------------------------------------------------------------
    @property
    def mode(self) -> str:
        return self.qconfig.mode

    @property
    def calibration_prompts_n(self) -> int:
        """0 when an allocation is given or stored; else 32 (the model's smoke size on a tiny twin:
        :meth:`default_calibration_n`), or all of ``--calib-prompts``."""
        if self.given is not None:
            return 0
        if self.cfg.calib_prompts:
            from qbench.prompts import load_prompts

            return len(load_prompts(self.cfg.calib_prompts))
        return 0 if self._stored() is not None else self.default_calibration_n(self.CALIBRATION_PROMPTS)

    def calibration_cost(self, n_prompts: int) -> dict[str, Any] | None:
        if self._peek() is not None:
            return None
        from qbench.methods.mixdq_cost import estimate_cost

        return estimate_cost(self, n_prompts)

    def prepare(self, model: LoadedModel) -> None:
        """Nothing to insert: calibration perturbs one layer at a time and restores it."""

    def calibrate(self, model: LoadedModel, prompts: list[Prompt], ctx=None) -> None:
        if self.given is not None:
            self.alloc, self.origin = self.given, "option"
            return
        st = self._stored()
        if st is not None and st.get("provenance", {}).get("weights") in (None, model.source):
            self.alloc = {n: {"w": v["w"], "a": v["a"]} for n, v in st["allocation"].items()}
            self.origin, self.calib_info = "stored", {k: st.get(k) for k in ("mean_w", "mean_a", "chosen", "timings", "yaml", "act_sizes", "rule")}
            _say(f"mixdq: using stored allocation {self.stored_path()}")
            return
        if not prompts:
            raise QBenchError("mixdq: no stored allocation and no calibration prompts")
        if ctx is None:
            from qbench.calibctx import CalibrationContext

            ctx = CalibrationContext.standalone(model, self.cfg, prompts, self.name)
        if self.text is None:
            from qbench.quant.bos import probe_text_stream  # torch: not at import (qbench list)

            self.text = probe_text_stream(model, self.opts["bos"], self.opts["text_token_rule"])
        result = calibrate_allocation(self, model, list(prompts), ctx)
        self.alloc, self.origin, self.calib_info = result["allocation"], "calibrated", result

    def convert(self, model: LoadedModel) -> None:
        from torch import nn

        from qbench.quant.api import quant_layers, quantize_
        from qbench.quant.bos import BOSAwareLinear
        from qbench.quant.sensitivity import set_module

        if self.alloc is None:
            alloc = self._peek()
            if alloc is None:
                raise QBenchError(f"mixdq: no allocation for {self.cfg.model} {self.bits}; run `qbench calibrate --method mixdq` first")
            self.alloc, self.origin = alloc, "option" if self.given is not None else "stored"
        if self.text is None:
            from qbench.quant.bos import probe_text_stream  # torch: not at import (qbench list)

            self.text = probe_text_stream(model, self.opts["bos"], self.opts["text_token_rule"])
        den = model.denoiser
        qc = self.qconfig.replace(overrides=overrides_of(self.alloc))
        orig = {n: den.get_submodule(n) for n in self.text["wrap"] if n in self.alloc}
        self._qreport = quantize_(den, qc)
        if not quant_layers(den):
            raise ConfigError("mixdq: no layer was quantized")
        for n, mod in orig.items():
            if isinstance(mod, nn.Linear):
                spec = den.get_submodule(n).spec
                new = BOSAwareLinear.from_float(mod, spec, self.text["rule"], self.text.get("bos_input"))
                set_module(den, n, new)
                self._swapped.append((n, new))

    # -- bookkeeping ------------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """Everything that changes the images. With ``-O allocation=FILE`` the options that only
        steer the calibration (the sweep, candidates, content patterns, ...) change nothing and are
        left out; the allocation's sha (of its ``{layer: {w, a}}`` map, not the file's bytes) is
        what identifies the configuration, and :attr:`label` carries its first 8 hex digits."""
        alloc = self._peek()
        drop = set(NO_EFFECT) | (CALIBRATION_ONLY if self.given is not None else set())
        opts = {k: v for k, v in self.opts.items() if k not in drop}
        out: dict[str, Any] = {"method": self.name, "bits": str(self.bits), "mode": self.mode, "options": opts, "allocation": None}
        if alloc is not None:
            out["allocation"] = {"sha": stable_hash(overrides_of(alloc), 16), "layers": len(alloc)}
        if self.given is not None:
            out["allocation"]["given"] = True
        return out

    @property
    def label(self) -> str:
        """``mixdq W3A8 simulate``; with ``-O allocation=FILE`` ``mixdq W3A8 simulate alloc=<8 hex>``
        (the allocation's sha), so that a given allocation and the calibrated one, or two given
        ones, are different configurations in ``compare`` and ``export-results``."""
        base = f"{self.name} {self.bits} {self.mode}"
        return base if self.given is None else f"{base} alloc={stable_hash(overrides_of(self.given), 16)[:8]}"

    def report(self) -> dict[str, Any]:
        if self._qreport is None:
            return {}
        r = self._qreport
        layers = {d["name"]: d for d in r.layers}
        params = {n: d["shape"][0] * d["shape"][1] for n, d in layers.items() if n in (self.alloc or {})}
        mean_w = al.mean_bits({n: self.alloc[n]["w"] for n in params}, params)
        # MixDQ weights the activation budget by input activation size (known from the calibration)
        asz = {n: v for n, v in (self.calib_info.get("act_sizes") or {}).items() if n in params}
        a_weights = asz if len(asz) == len(params) and sum(asz.values()) else params
        mean_a, mean_a_all = al.act_means({n: self.alloc[n]["a"] for n in params}, a_weights)
        text = {k: v for k, v in (self.text or {}).items() if k != "bos_input"}
        text["wrapped"] = [n for n, _ in self._swapped]
        text["bos_hits"] = sum(m.bos_hits for _, m in self._swapped if m.rule == "bos")
        text["bos_misses"] = sum(m.bos_misses for _, m in self._swapped if m.rule == "bos")
        out = {
            "allocation_origin": self.origin,
            "budget": {"w": self.bits.w, "a": self.bits.a or 16},
            "mean_w": round(mean_w, 3), "mean_a": round(mean_a, 3), "mean_a_with_16bit": round(mean_a_all, 3),
            "mean_a_weighted_by": "input activation size" if a_weights is asz else "weight parameters (activation sizes unknown for a given allocation)",
            "layers_quantized": r.n_quantized, "bits_by_layer_count": r.to_dict()["bits_by_layer_count"],
            "kernel_path": r.kernel_path, "bytes_before": r.bytes_before, "bytes_after": r.bytes_after, "bytes_packed": r.bytes_packed,
            "text_stream": text,
            "calibration": {k: v for k, v in self.calib_info.items() if k not in ("allocation", "params", "act_sizes", "sensitivity", "sweep")},
        }
        return out


def _say(msg: str) -> None:
    from qbench.progress import say

    say(msg)


__all__ = ["CONTENT", "MixDQ", "allocation_yaml", "check_made_for", "overrides_of", "parse_allocation"]
