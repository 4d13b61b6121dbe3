"""``naive``: round-to-nearest post-training quantization, no calibration (the papers' "naive"/"vanilla").

    qbench run --method naive --bits W4A8 --mode kernel --model flux-schnell

Conventions (torchao's, docs/conventions.md; see :mod:`qbench.quant.spec` for the full table):

* ``W4A8``: int4 symmetric weights per group of 32; int8 asymmetric per-token dynamic activations.
* ``W8A8``: int8 symmetric per-channel weights; int8 symmetric per-token dynamic activations.
* ``W4A4``: int4 symmetric per-channel weights; int4 symmetric per-token activations.
* ``W4A16`` / ``W8A16``: weight-only. ``W2A8``, ``W3A8``, ... follow the ``WnA8`` row.

Only the denoiser's Linear layers by default (text encoders and VAE stay in 16 bits).
``--mode simulate`` fake-quantizes in the model's dtype; ``--mode kernel`` stores packed integers
and runs integer GEMMs. Per-group weights in kernel mode use integer group scales (two-level
format) — ``group_scales=auto`` picks them in kernel mode and float scales in simulate mode;
pass ``group_scales: int8`` to simulate exactly what the kernel computes.

``method_options`` (``-O key=value`` / ``--option key=value`` / ``RunConfig.method_options``):
``group_size`` (32), ``layers`` (a YAML/JSON file or a dict ``layer.name: {w: 8, a: 8} | 8 | fp16``;
keys may be fnmatch patterns, and ``<component>:<name>`` targets a non-denoiser component),
``include`` / ``exclude`` (fnmatch patterns on layer names), ``components`` (``denoiser``,
``text_encoder``, ``text_encoder_2``, ``vae``), ``layer_types`` (``linear``, ``conv2d``),
``w_granularity``, ``w_symmetric``, ``w_clip`` (minmax|mse), ``group_scales`` (auto|float|int8),
``a_granularity`` (token|tensor), ``a_symmetric``, ``a_static`` with ``a_calib``
(minmax|percentile|mse; calibrated on ``--calib-prompts``).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qbench.api import Method
from qbench.config import stable_hash
from qbench.errors import ConfigError
from qbench.quant.spec import QUANT_OPTIONS, QuantConfig, load_overrides, made_for

if TYPE_CHECKING:  # pragma: no cover
    from qbench.api import Prompt
    from qbench.models.base import LoadedModel

def _check_applicable(cfg: QuantConfig, options: dict[str, Any], method: str) -> None:
    """Refuse options that would change nothing (they would still change the run's description
    and the image cache key, and mislead a reader of the stored config)."""
    if options.get("a_calib") is not None and not cfg.a_static:
        raise ConfigError(f"method {method!r} option a_calib applies to static activations only (add -O a_static=true)")
    spec = cfg.resolve_spec(cfg.bits.w, cfg.bits.a)
    per_group = spec.w_granularity == "group" or any(dict(o.options).get("w_granularity") == "group" or (o.w is not None and o.w < 8) for _, o in cfg.overrides)
    for key in ("group_size", "group_scales"):
        if options.get(key) is not None and not per_group:
            raise ConfigError(f"method {method!r} option {key} applies to per-group weights; {cfg.bits} uses {spec.w_granularity} weights "
                              "(per-group: W<8 with 8-bit or no activation quantization, or -O w_granularity=group)")


def build_quant_config(bits: str | None, mode: str | None, options: dict[str, Any], method: str = "naive") -> tuple[QuantConfig, dict[str, dict[str, Any]]]:
    """QuantConfig for the denoiser plus per-component override maps, from validated options
    (:data:`qbench.quant.spec.QUANT_OPTIONS`)."""
    if not bits:
        raise ConfigError(f"method {method!r} needs --bits, e.g. --bits W4A8 (or W8A8, W4A16, W4A4, W2A8, ...)")
    kw = {k: v for k, v in options.items() if k != "layers" and v is not None}
    per_component: dict[str, dict[str, Any]] = {}
    for key, value in load_overrides(options.get("layers")).items():
        comp, sep, name = str(key).partition(":")
        if not sep:
            comp, name = "denoiser", str(key)
        per_component.setdefault(comp, {})[name] = value
    cfg = QuantConfig(bits=bits, mode=mode or "simulate", overrides=per_component.get("denoiser", {}), **kw)
    _check_applicable(cfg, options, method)
    for comp in per_component:
        if comp not in cfg.components:
            raise ConfigError(f"layer override for component {comp!r}, which is not quantized (components: {', '.join(cfg.components)})")
    return cfg, per_component


class Naive(Method):
    name = "naive"
    description = "round-to-nearest weights + dynamic activations (torchao conventions), simulate or real int kernels"
    uses_bits = True
    OPTIONS = QUANT_OPTIONS

    def __init__(self, cfg):
        super().__init__(cfg)
        # only naive's own options make the quantizer config: a subclass's options are its own
        self.qconfig, self._overrides = build_quant_config(cfg.bits, cfg.mode, self.own_options(Naive), self.name)
        layers = self.options.get("layers")
        made = made_for(layers) if isinstance(layers, str) else None
        if made is not None and made[0] != cfg.model:  # a per-layer file qbench wrote for another model
            raise ConfigError(f"layer file {layers} was made for {made[0]} (its header), this run is {cfg.model}: its layer names and widths are that model's")
        self._reports: dict[str, Any] = {}
        self._prepared = False

    # prepare -> calibrate -> convert ----------------------------------------------------------------
    def _components(self, model: LoadedModel) -> dict[str, Any]:
        from torch import nn

        out = {}
        for comp in self.qconfig.components:
            mod = model.denoiser if comp == "denoiser" else getattr(model.pipe, comp, None)
            if not isinstance(mod, nn.Module):
                raise ConfigError(f"component {comp!r} is not part of this pipeline ({type(model.pipe).__name__})")
            out[comp] = mod
        return out

    def pre_scales(self, component: str) -> dict[str, Any] | None:
        """Input pre-scales ``{layer name: [K] tensor}`` for the layers of ``component`` (the
        SmoothQuant/AWQ slot of :func:`qbench.quant.api.quantize_`). Naive: none; a subclass
        that smooths activations returns its factors here."""
        return None

    def _quantize(self, model: LoadedModel) -> None:
        from qbench.quant.api import quant_layers, quantize_

        for comp, mod in self._components(model).items():
            cfg = self.qconfig.replace(overrides=self._overrides.get(comp, {})) if comp != "denoiser" else self.qconfig
            self._reports[comp] = quantize_(mod, cfg, pre_scales=self.pre_scales(comp))
        if not any(quant_layers(mod) for mod in self._components(model).values()):
            q = self.qconfig
            raise ConfigError(
                f"{self.name}: no layer was quantized (components {', '.join(q.components)}, layer_types {', '.join(q.layer_types)}, "
                f"include {', '.join(q.include)}, exclude {', '.join(q.exclude) or '-'}): the run would be full precision labelled {q.bits}"
            )
        self._prepared = True

    def check_layers(self, denoiser) -> None:
        """Override names/patterns exist, and at least one denoiser layer would be quantized."""
        if "denoiser" not in self.qconfig.components:
            return
        from qbench.quant.api import _check_overrides, candidate_layers

        named = dict(denoiser.named_modules())
        _check_overrides(named, self.qconfig)
        if not any(self.qconfig.spec_for(n) is not None for n in candidate_layers(named, self.qconfig)):
            q = self.qconfig
            raise ConfigError(f"{self.name}: no denoiser layer would be quantized (layer_types {', '.join(q.layer_types)}, include {', '.join(q.include)}, "
                              f"exclude {', '.join(q.exclude) or '-'}): the run would be full precision labelled {q.bits}")

    def prepare(self, model: LoadedModel) -> None:
        if self.qconfig.a_static:  # observers go in before calibration
            self._quantize(model)

    @property
    def calibration_prompts_n(self) -> int:
        return self.default_calibration_n(8) if self.qconfig.a_static else 0

    def calibrate(self, model: LoadedModel, prompts: list[Prompt], ctx=None) -> None:
        if not self.qconfig.a_static:
            return
        from qbench.quant.api import observe_

        n = sum(observe_(mod, True) for mod in self._components(model).values())
        if n == 0:
            return
        model.generate([p.text for p in prompts], [self.cfg.seed + p.index for p in prompts], steps=self.cfg.steps, guidance=self.cfg.guidance, resolution=self.cfg.resolution)

    def convert(self, model: LoadedModel) -> None:
        if not self._prepared:
            self._quantize(model)
        if self.qconfig.a_static:
            from qbench.quant.api import freeze_

            for mod in self._components(model).values():
                freeze_(mod)

    # bookkeeping ----------------------------------------------------------------------------------------
    @property
    def mode(self) -> str:
        return self.qconfig.mode

    @property
    def quant_layer_types(self) -> tuple[str, ...]:
        return tuple(self.qconfig.layer_types)

    def describe(self) -> dict[str, Any]:
        """The quantizer config, plus every option a subclass declares (given or default), so a
        subclass's options key its images without each subclass restating them."""
        opts = self.qconfig.to_dict()
        opts.pop("bits")
        opts.pop("mode")
        opts["overrides"] = {c: ({k: v for k, v in o.items()}) for c, o in self._overrides.items()}
        if opts["overrides"]:
            opts["overrides_hash"] = stable_hash(opts["overrides"])
        naive = {o.name for o in Naive.OWN_OPTIONS}
        opts.update({o.name: self.options.get(o.name, o.default) for o in self.OPTIONS if o.name not in naive})
        return {"method": self.name, "bits": str(self.qconfig.bits), "mode": self.mode, "options": opts}

    def report(self) -> dict[str, Any]:
        if not self._reports:
            return {}
        comps = {c: r.to_dict() for c, r in self._reports.items()}
        den = self._reports.get("denoiser")
        out: dict[str, Any] = {
            "layers_quantized": sum(r.n_quantized for r in self._reports.values()),
            "kernel_path": next((r.kernel_path for r in self._reports.values() if r.kernel_path), None),
            "bytes_before": sum(r.bytes_before for r in self._reports.values()),
            "bytes_after": sum(r.bytes_after for r in self._reports.values()),
            "bytes_packed": sum(r.bytes_packed for r in self._reports.values()),
            "components": comps,
        }
        if den is not None:
            out["denoiser_bytes_after"] = den.bytes_after
        return out
