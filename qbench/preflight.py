"""Everything a run checks before it loads a model or generates an image: :func:`plan_run`.

One pass validates the configuration (names, types, options of the method and of every metric,
prompts, calibration prompts held out from the evaluation prompts, device, dtype, step count,
guidance, a ``--model-path`` of the right pipeline class) and looks for every file the run needs
(model weights, metric networks, FID references). Problems of different parts are collected and
raised together as one :class:`~qbench.errors.QBenchError`, one line per problem, so an offline
user learns everything that is missing in one round trip. The result, a :class:`RunPlan`, is what
``qbench run --dry-run`` prints: images to generate (and how many are cached), calibration cost,
metrics and where their weights come from.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from qbench.api import MetricContext, Prompt
from qbench.config import RunConfig
from qbench.errors import ConfigError, ManyErrors, MissingWeightsError, QBenchError


@dataclass
class RunPlan:
    cfg: RunConfig  # with the model's defaults filled in (prompts)
    spec: Any  # ModelSpec
    ref: Any  # qbench.models.loader.ModelRef
    method: Any  # the constructed Method
    prompts: list[Prompt]
    metric_names: list[str]
    metric_options: dict[str, Any]  # validated and coerced
    calib_spec: str | None = None
    calib_prompts: list[Prompt] = field(default_factory=list)
    calibration: dict[str, Any] | None = None  # {"images": N, "what": ...} or None
    needs_fp_reference: bool = False
    cached: dict[str, Any] = field(default_factory=dict)  # images cached now, per image set

    def metric_context(self, device: str | None = None) -> MetricContext:
        return MetricContext(
            device=device or self.ref.device,
            options=dict(self.metric_options),
            model_name=self.spec.name,
            model_family=self.spec.family,
            resolution=self.cfg.resolution or self.spec.resolution,
            prompt_set=self.cfg.prompts,
            cache_dir=os.path.join(self.cfg.out_dir, "cache"),
        )

    def summary(self) -> dict[str, Any]:
        return {
            "model": self.spec.name,
            "weights": self.ref.source,
            "device": self.ref.device,
            "dtype": str(self.ref.dtype).replace("torch.", ""),
            "method": self.method.label,
            "prompts": self.cfg.prompts,
            "n_prompts": len(self.prompts),
            "metrics": self.metric_names,
            "fp_reference_images": len(self.prompts) if self.needs_fp_reference else 0,
            "calibration_prompts": self.calib_spec,
            "calibration_note": self.method.calib_note if self.method is not None else None,
            "calibration": self.calibration,
            "cached": self.cached,
        }


class _Problems:
    """Collects one-line problems (the same problem found by several checks once, naming all of
    them); raises them together."""

    def __init__(self) -> None:
        self.found: dict[str, list[str]] = {}  # message -> the checks that found it
        self.missing = False

    def check(self, what: str, fn, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except QBenchError as e:
            for err in e.errors if isinstance(e, ManyErrors) else [e]:
                self.missing |= isinstance(err, MissingWeightsError)
                owners = self.found.setdefault(str(err), [])
                if what and what not in owners:
                    owners.append(what)
            return None

    def raise_if_any(self) -> None:
        if not self.found:
            return
        lines = [f"{', '.join(owners)}: {msg}" if owners else msg for msg, owners in self.found.items()]
        cls = MissingWeightsError if self.missing else QBenchError
        if len(lines) == 1:
            raise cls(lines[0])
        raise cls(f"{len(lines)} problems, nothing was loaded or generated:\n" + "\n".join(f"  - {line}" for line in lines))


def resolve_metrics(cfg: RunConfig, spec) -> list[str]:
    from qbench.catalog import METRICS

    names = list(cfg.metrics) if cfg.metrics is not None else list(spec.default_metrics)
    out: list[str] = []
    for n in names:
        e = METRICS.entry(n)  # raises "unknown metric ...; did you mean"
        if not e.meta.get("system") and n not in out:
            out.append(n)
    return out


def check_metric_options(given: dict[str, Any], metric_classes: dict[str, Any]) -> dict[str, Any]:
    """Options of the run's metrics, validated: a key no metric of the run declares is refused
    (naming the metrics it belongs to when it is another metric's)."""
    from qbench.catalog import METRICS
    from qbench.metrics.common import GLOBAL_OPTIONS
    from qbench.options import parse_options, unknown_message

    decl = {o.name: o for o in GLOBAL_OPTIONS}
    for cls in metric_classes.values():
        decl.update({o.name: o for o in cls.OPTIONS})
    for key in given:
        if key in decl:
            continue
        owners = [e.name for e in METRICS if not e.meta.get("system") and key in {o.name for o in e.load().OPTIONS}]
        if owners:
            raise ConfigError(f"metric option {key!r} applies to {', '.join(owners)}, which this run does not compute (metrics: {', '.join(metric_classes) or 'none'})")
        raise ConfigError(unknown_message("metric", key, decl))
    return parse_options("metric", tuple(decl.values()), given, defaults=False)


def calibration_prompts(cfg: RunConfig, method, eval_prompts: list[Prompt] | None = None) -> list[Prompt]:
    """The calibration prompts of ``method`` for this run: ``--calib-prompts``, else the first N
    of the model's calibration set. Refuses calibration prompts that are also evaluation prompts
    (same id or same text) for every method, and ``--calib-prompts`` for a method that does not
    calibrate."""
    from qbench.models.loader import get_spec
    from qbench.prompts import load_prompts

    spec = get_spec(cfg.model)
    n = method.calibration_prompts_n
    if not n:
        if cfg.calib_prompts:
            raise ConfigError(f"--calib-prompts {cfg.calib_prompts!r} given, but {method.label} does not calibrate")
        return []
    method.calib_spec = cfg.calib_prompts or f"{spec.calib_prompts}:{n}"
    published = method.calib_capped_from  # set by calibration_prompts_n when the model's smoke size capped it
    method.calib_note = (f"{spec.name}'s smoke size: random weights, the calibration tests the code path; {method.name} calibrates on "
                         f"{published}: --calib-prompts {spec.calib_prompts}:{published}") if not cfg.calib_prompts and published and n < published else None
    calib = load_prompts(method.calib_spec)
    if eval_prompts is None:
        eval_prompts = load_prompts(cfg.prompts or spec.default_prompts)
    ids, texts = {p.id for p in eval_prompts}, {p.text for p in eval_prompts}
    overlap = [p for p in calib if p.id in ids or p.text in texts]
    if overlap:
        raise ConfigError(
            f"{len(overlap)} of {len(calib)} calibration prompts ({method.calib_spec}) are also evaluation prompts "
            f"({cfg.prompts}), e.g. {overlap[0].text[:60]!r}; calibrate on held-out prompts (--calib-prompts)"
        )
    return calib


def _names_only(cfg: RunConfig, p: _Problems) -> None:
    """The checks that need no valid field: registered names (and a prompt spec)."""
    from qbench.catalog import METHODS, METRICS, MODELS
    from qbench.prompts import load_prompts

    for reg, v in ((MODELS, cfg.model), (METHODS, cfg.method)):
        if isinstance(v, str) and v:
            p.check("", reg.entry, v)
    if isinstance(cfg.metrics, list):
        for n in cfg.metrics:
            if isinstance(n, str):
                p.check("", METRICS.entry, n)
    if isinstance(cfg.prompts, str) and cfg.prompts.strip():
        p.check("", load_prompts, cfg.prompts)
    # with an invalid field some checks may trip over it; they report what they can
    for check in (lambda: METHODS.get(cfg.method)(cfg),
                  lambda: check_metric_options(cfg.metric_options, {n: METRICS.get(n) for n in (cfg.metrics or [])}),
                  lambda: _device_available(cfg.device)):
        try:
            p.check("", check)
        except Exception:  # noqa: BLE001 - a check that cannot run on an invalid field adds nothing
            pass


def _device_available(device: Any) -> None:
    from qbench.config import _DEVICE_RE
    from qbench.models.loader import resolve_device

    if isinstance(device, str) and _DEVICE_RE.match(device):
        resolve_device(device)


def plan_run(cfg: RunConfig) -> RunPlan:
    """Validate ``cfg`` and locate everything the run needs, loading nothing heavy. Every problem
    found is reported together (a problem that makes others uncheckable skips only those)."""
    from qbench.catalog import METHODS, METRICS
    from qbench.models.loader import check_steps, get_spec, locate_model
    from qbench.prompts import load_prompts

    p = _Problems()
    try:
        cfg.validate()
    except QBenchError as e:
        p.check("", _raise, e)
        _names_only(cfg, p)
        p.raise_if_any()
    spec = p.check("", get_spec, cfg.model)
    if cfg.prompts is None and spec is not None:
        cfg = cfg.replace(prompts=spec.default_prompts)
    method_cls = p.check("", METHODS.get, cfg.method)
    method = p.check("", method_cls, cfg) if method_cls is not None else None
    prompts = (p.check("", load_prompts, cfg.prompts) or []) if cfg.prompts else []
    metric_names = (p.check("", resolve_metrics, cfg, spec) or []) if spec is not None or cfg.metrics is not None else []
    metric_classes = {n: METRICS.get(n) for n in metric_names}
    metric_options = p.check("", check_metric_options, cfg.metric_options, metric_classes)
    if spec is None:  # nothing model-dependent can be checked
        p.raise_if_any()
    p.check("", _check_guidance, cfg, spec)
    ref = p.check(f"model {spec.name}", locate_model, cfg.model, model_path=cfg.model_path, device=cfg.device, dtype=cfg.dtype)
    if ref is not None and cfg.steps:
        p.check("", check_steps, ref, cfg.steps)
    if ref is not None and method is not None:
        p.check("", check_not_prequantized, ref, cfg)
        p.check("", check_layer_names, method, ref)
        p.check("", check_reloadable, method, ref)
        if getattr(method, "mode", None) == "kernel":  # QBENCH_KERNEL_PATH and the device's integer GEMM
            from qbench.quant.backends import selection

            p.check("", selection, ref.device)
    calib_prompts: list[Prompt] = []
    if method is not None and prompts:
        calib_prompts = p.check("", calibration_prompts, cfg, method, prompts) or []
    plan = RunPlan(cfg, spec, ref, method, prompts, metric_names, metric_options or {})
    if prompts and metric_options is not None:
        ctx = plan.metric_context(ref.device if ref is not None else "cpu")
        for name, cls in metric_classes.items():
            p.check(f"metric {name}", cls.preflight, ctx, prompts)
        if method is not None:
            for name, options in method.metric_needs():
                p.check(f"{method.name} ({name} scorer)", METRICS.get(name).preflight, dataclasses.replace(ctx, options=options), calib_prompts)
    p.raise_if_any()
    plan.calib_prompts = calib_prompts
    plan.calib_spec = method.calib_spec
    plan.calibration = method.calibration_cost(len(calib_prompts)) if calib_prompts else None
    plan.needs_fp_reference = any(getattr(c, "needs_fp_reference", False) for c in metric_classes.values())
    plan.cached = count_cached(plan)
    _warn_steps(cfg, spec)
    return plan


def plan_calibration(cfg: RunConfig, method) -> tuple[list[Prompt], Any]:
    """``qbench calibrate``'s preflight: the calibration prompts (held out from the evaluation
    prompts), the located model, the step count, the layer names and the weights of every scorer
    the method will run, all checked before anything loads and reported together.
    Returns ``(calibration prompts, ModelRef)``."""
    from qbench.catalog import METRICS
    from qbench.models.loader import check_steps, get_spec, locate_model

    p = _Problems()
    spec = get_spec(cfg.model)
    prompts = p.check("", calibration_prompts, cfg, method) or []
    ref = p.check(f"model {spec.name}", locate_model, cfg.model, model_path=cfg.model_path, device=cfg.device, dtype=cfg.dtype)
    if ref is not None and cfg.steps:
        p.check("", check_steps, ref, cfg.steps)
    if ref is not None:
        p.check("", check_layer_names, method, ref)
    ctx = MetricContext(device=ref.device if ref is not None else "cpu", options=dict(cfg.metric_options), model_name=spec.name,
                        model_family=spec.family, resolution=cfg.resolution or spec.resolution, prompt_set=cfg.calib_prompts,
                        cache_dir=os.path.join(cfg.out_dir, "cache"))
    for name, options in method.metric_needs():
        p.check(f"{method.name} ({name} scorer)", METRICS.get(name).preflight, dataclasses.replace(ctx, options=options), prompts)
    p.raise_if_any()
    return prompts, ref


def _raise(e: Exception) -> None:
    raise e


def _warn_steps(cfg: RunConfig, spec) -> None:
    if cfg.steps and cfg.steps > 4 * spec.steps:
        import logging

        logging.getLogger("qbench").warning(f"{spec.name} is a {spec.steps}-step model: --steps {cfg.steps} is {cfg.steps / spec.steps:.0f}x its default")


def check_not_prequantized(ref, cfg: RunConfig) -> None:
    """Refuse weights that are already quantized (:func:`qbench.models.loader.prequantized`): as
    ``fp`` they would score themselves as their own full-precision reference and become the
    baseline of every comparison; under a quantizing method they would be quantized twice."""
    from qbench.models.loader import prequantized

    why = prequantized(ref)
    if why:
        raise ConfigError(
            f"--model-path {cfg.model_path} holds already-quantized weights ({why}): it cannot be run as method {cfg.method!r} "
            f"(fp would make it the full-precision baseline). Score it as a labelled method instead: "
            f"qbench.harness.run(RunConfig(model={cfg.model!r}, method='external', method_options={{'label': ...}}), pipe=qbench.load_quantized(PATH)) "
            f"(or diffusers' from_pretrained for other backends)")


def check_layer_names(method, ref) -> None:
    """Let the method check its layer names/patterns against the denoiser's modules, built from
    its config on the meta device (no weights read), when the weights are local."""
    module = denoiser_on_meta(ref)
    if module is not None:
        method.check_layers(module)


def check_reloadable(method, ref) -> None:
    """A method that re-loads components from the weights folder (``reloads_components``) would
    drop what the loader changes after loading: refuse a model whose LoRA is fused at load."""
    if method.capabilities.reloads_components and ref.spec.lora:
        raise ConfigError(f"method {method.name!r} re-loads the components it quantizes from the weights folder, but {ref.spec.name!r} fuses a LoRA "
                          "into its denoiser after loading (the folder's weights are not the model's): pick a model without a LoRA")


def denoiser_on_meta(ref):
    """The model's denoiser built from its config on the meta device (no weights, no memory;
    None for a hub model not downloaded yet)."""
    import json
    import os

    import diffusers
    import torch

    folder = os.path.join(ref.where, ref.spec.denoiser)
    cfg_path = os.path.join(folder, "config.json")
    if not ref.local_only or not os.path.isfile(cfg_path):
        return None
    with open(cfg_path, encoding="utf-8") as f:
        config = json.load(f)
    cls = getattr(diffusers, config.get("_class_name", ""), None)
    if cls is None:
        return None
    with torch.device("meta"):
        return cls.from_config(config)


def _check_guidance(cfg: RunConfig, spec) -> None:
    if cfg.guidance is not None and not spec.accepts_guidance and cfg.guidance != spec.guidance:
        raise ConfigError(f"model {spec.name!r} ignores guidance (guidance-distilled, no guidance embedding): --guidance {cfg.guidance:g} would change nothing; drop it")


def count_cached(plan: RunPlan) -> dict[str, Any]:
    """How many of the run's images (and FP references) are already in the image cache."""
    from qbench.generation import batches, fp_method, image_key
    from qbench.imagecache import ImageCache

    out: dict[str, Any] = {}
    sets = [("images", plan.method)]
    if plan.needs_fp_reference:
        sets.append(("fp_references", fp_method(plan.cfg)))
    for what, method in sets:
        if plan.calibration and method is plan.method:
            out[what] = "unknown until calibrated"
            continue
        key, meta = image_key(plan.ref, method, plan.cfg)
        cache = ImageCache(plan.cfg.out_dir, plan.cfg.model, key, meta, create=False)
        out[what] = sum(len(c) for c, sig in batches(plan.prompts, plan.cfg) if all(cache.has(p, plan.cfg.seed + p.index, sig) for p in c))
    return out


def print_plan(plan: RunPlan, con) -> None:
    from rich.markup import escape

    s = plan.summary()
    n = s["n_prompts"]
    lines = [
        f"dry run — nothing loaded, nothing generated, nothing stored",
        f"model      {s['model']} ({s['weights']}) on {s['device']}, {s['dtype']}",
        f"method     {s['method']}",
        f"prompts    {s['prompts']}: {n} prompts, seeds {plan.cfg.seed}..{plan.cfg.seed + max(p.index for p in plan.prompts)}",
        f"metrics    {', '.join(s['metrics']) or 'none'}",
    ]
    if s["fp_reference_images"]:
        c = s["cached"].get("fp_references", 0)
        lines.append(f"fp refs    {n} full-precision reference images: {c} cached, {n - c} to generate")
    if s["calibration"]:
        lines.append(f"calibrate  on {plan.method.calib_label}: {s['calibration']['images']} images ({s['calibration']['what']})")
    c = s["cached"].get("images")
    lines.append(f"generate   {n} images: " + (f"{c} cached, {n - c} to generate" if isinstance(c, int) else str(c)))
    for line in lines:
        con.print(escape(line), highlight=False)
