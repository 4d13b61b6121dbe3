"""The pieces the phases of a run share (:mod:`qbench.phases`): the stored result record
(:class:`RunResult`, :func:`build_result`), the calibration context a method gets, the metrics'
scoring loop, the run's notes and how its latency was made. Nothing here knows a particular
method or model.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from qbench.api import MetricValue
from qbench.generation import fp_method, generate_cached, image_key
from qbench.imagecache import ImageCache
from qbench.store import iter_chunks


@dataclass
class RunResult:
    run_id: str
    config: dict[str, Any]
    label: str
    mode: str
    bits: str | None  # the --bits label (e.g. W4A8); for a mixed-precision method its mean budget
    model_source: str
    method: dict[str, Any]
    method_report: dict[str, Any]
    metrics: dict[str, dict[str, Any]]
    latency: dict[str, Any]
    memory: dict[str, Any]
    model_bytes: int  # resident bytes of the denoiser (size["resident_bytes"])
    timings: dict[str, float]
    n_images: int
    n_generated: int
    images_dir: str
    provenance: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    #: denoiser sizes (``qbench.quant.api.size_report``): resident, 16-bit and deployable bytes
    size: dict[str, Any] = field(default_factory=dict)
    #: what a run must share with another to be compared (``comparability``)
    sampling: dict[str, Any] = field(default_factory=dict)
    #: effective bits of the denoiser: parameter-weighted means and the per-layer map
    #: (``qbench.quant.api.bit_map``); empty for unquantized runs
    effective_bits: dict[str, Any] = field(default_factory=dict)
    #: calibration prompts used by the method (spec and ids), empty when it does not calibrate
    calibration: dict[str, Any] = field(default_factory=dict)
    #: per tokenizer, how many prompts exceed its token limit (``qbench.models.truncation``)
    prompt_truncation: dict[str, Any] = field(default_factory=dict)
    #: the run's identity (``qbench.phases.run_identity``): its key is what ``qbench sweep``
    #: matches to call a cell finished
    identity: dict[str, Any] = field(default_factory=dict)
    #: the artefacts the run used, by kind, with their identity keys (image folders, ...)
    reused: dict[str, Any] = field(default_factory=dict)
    #: prompt id -> image file, for a run scored from images made elsewhere (``qbench score``)
    image_files: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_writable(path: str) -> None:
    """The results folder exists and takes a file: :func:`qbench.fsutil.check_writable_folder`
    (a ``mkstemp`` probe, never a fixed name a symlink could be planted on; always removed)."""
    from qbench.fsutil import check_writable_folder

    check_writable_folder(path, "output folder")


def build_result(s) -> RunResult:
    """The :class:`RunResult` of a finished ``run`` sequence (``s``: its :class:`qbench.phases.RunState`)."""
    from qbench.generation import comparability
    from qbench.measure import provenance, qbench_version
    from qbench.models.base import module_nbytes
    from qbench.models.truncation import prompt_truncation
    from qbench.quant.api import size_report

    cfg, plan, model, method, dist = s.cfg, s.plan, s.model, s.plan.method, s.dist
    desc = method.describe()
    result = RunResult(
        run_id=s.run_id,
        config=cfg.to_dict(),
        label=method.label,
        mode=method.mode,
        bits=desc.get("bits"),
        model_source=model.source,
        method=desc,
        method_report=method.report(),
        metrics={k: v.to_dict() for k, v in s.metrics.items()},
        latency=s.latency,
        memory=s.memory,
        model_bytes=module_nbytes(model.denoiser),
        size=size_report(model.denoiser),
        effective_bits=_bits(method, model),
        sampling=comparability(model, cfg, plan.prompts),
        timings=s.timings,
        n_images=len(s.images),
        n_generated=s.n_generated,
        images_dir=s.cache.dir,
        provenance=dict(provenance(model.device), dtype=str(model.dtype).replace("torch.", ""), weights=model.source, tiny_random=model.spec.is_tiny,
                        qbench=qbench_version(), **({"distributed": dist.describe()} if dist.enabled else {})),
        notes=_notes(model, method),
        calibration={"prompts": plan.calib_spec, "prompt_ids": [p.id for p in plan.calib_prompts]} if plan.calib_prompts else {},
        identity=s.identity.record(),
        reused={k: {"key": v["key"], "kind": v["kind"]} for k, v in s.reused.items()},
    )
    result.timings["total_s"] = sum(v for k, v in s.timings.items() if k.endswith("_s") and k != "generate_per_image_s" and k != "total_s")
    result.prompt_truncation = prompt_truncation(model.pipe, [p.text for p in plan.prompts], model.spec.call_kwargs)
    return result


def _calibration_context(plan, model, progress, say, dist=None):
    """The method's CalibrationContext, with full-precision images of the calibration prompts
    generated first (the model is still full precision here) when the method asks for them."""
    from qbench.calibctx import CalibrationContext

    if not plan.calib_prompts:
        return None
    cfg = plan.cfg
    fp = None
    if plan.method.capabilities.fp_calibration_images:
        key, meta = image_key(model, fp_method(cfg), cfg)
        fp, _ = generate_cached(model, ImageCache(cfg.out_dir, cfg.model, key, meta), plan.calib_prompts, cfg, progress,
                                "full-precision calibration images", dist)
    return CalibrationContext(model, cfg, plan.calib_prompts, method_name=plan.method.name, fp_images=fp, progress=progress, say=say, dist=dist,
                              calib_spec=plan.calib_spec)


def _bits(method, model) -> dict[str, Any]:
    from qbench.quant.api import effective_bits

    if not method.uses_bits:
        return {}
    bm = method.bit_map(model)  # qbench's layers by default; a method with its own layers overrides it
    return {"effective": effective_bits(bm), "by_layer": bm}


def _latency_kind(method) -> str:
    declared = method.capabilities.latency_kind
    if declared:
        return declared
    if method.mode == "simulate":
        return "simulate mode: float GEMMs plus quantize-dequantize (fake quantization); NOT a deployment latency"
    if method.mode == "kernel":
        path = (method.report() or {}).get("kernel_path") or "?"
        return f"kernel mode: real low-bit execution ({path})"
    return "full precision"


def _notes(model, method=None) -> list[str]:
    notes = []
    if model.spec.is_tiny:
        notes.append("tiny twin with RANDOM weights: learned metrics are meaningless; numbers check mechanics only")
    if model.spec.family.startswith("toy"):
        notes.append("TOY WORLD: synthetic 32x32 scenes, models and CLIP trained in this repo; numbers do not transfer to real images")
    if str(model.device).startswith("cpu"):
        from qbench.measure import omp_wait_policy

        if omp_wait_policy() != "PASSIVE":
            notes.append(f"OMP_WAIT_POLICY was {omp_wait_policy()} when torch loaded: on a busy CPU OpenMP's active wait can make latency many times "
                         "slower (170x measured on a shared 2-core machine); import qbench before torch, or set OMP_WAIT_POLICY=PASSIVE")
    if method is not None and method.mode == "kernel" and (model.spec.is_tiny or model.spec.family.startswith("toy")):
        notes.append("kernel-mode latency on a tiny model is dominated by per-call activation quantization and int4 unpacking of small layers; see `qbench bench-kernels` for real GEMM shapes")
    return notes


def _compute_metrics(plan, device: str, prompts, images, references, progress, dist=None) -> dict[str, MetricValue]:
    """Build each metric (its network is loaded now, after generation and latency) and score.

    With several ranks, each scores the images of its own block of batches and the main rank
    folds the states (``Metric.merge_shards``) in rank order, which is image order; a metric that
    cannot be sharded is computed by the main rank over every image. Only the main rank's values
    are returned."""
    from qbench.api import Metric
    from qbench.catalog import METRICS

    out: dict[str, MetricValue] = {}
    if not plan.metric_names:
        return out
    sharded = dist is not None and dist.enabled
    # metric chunks are cut from the whole image list, then each rank takes a contiguous block of
    # chunks: every network forward sees the same images as in one process (same float results)
    chunks = list(iter_chunks(list(range(len(prompts))), max(plan.cfg.batch_size, 8)))
    mine = dist.shard(chunks) if sharded else chunks
    ctx = plan.metric_context(device)
    task = progress.add_task("metrics", total=len(plan.metric_names) * sum(map(len, mine)))
    for name in plan.metric_names:
        metric = METRICS.get(name)(ctx)
        metric.reset()
        shardable = type(metric).shard_state is not Metric.shard_state
        todo = mine if (shardable or not sharded) else (chunks if dist.is_main else [])
        if sharded and shardable:
            metric.begin_shard()
        for idx in todo:
            metric.update(
                [images[i] for i in idx],
                [prompts[i] for i in idx],
                [references[i] for i in idx] if references is not None and getattr(metric, "needs_fp_reference", False) else None,
            )
            progress.advance(task, len(idx))
        if sharded and shardable:
            states = dist.gather_to_main(metric.shard_state())
            if dist.is_main:
                metric.merge_shards(states)
        if sharded and not dist.is_main:
            continue
        value = metric.compute()
        if isinstance(value, MetricValue):
            out[name] = value
        else:
            for sub, v in value.items():
                out[sub if sub.startswith(name) else f"{name}/{sub}"] = v
    return out
