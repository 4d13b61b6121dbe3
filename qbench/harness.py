"""The harness: ``run(cfg) -> RunResult``.

preflight (validate everything, locate every file: :mod:`qbench.preflight`) -> load model ->
[full-precision reference images, if a metric needs them] -> method.prepare -> method.calibrate
-> method.convert -> generate (batched, per-prompt seeds, image cache, progress) -> latency and
peak memory (after a flush, before any metric network is loaded) -> metrics (each network loaded
once) -> model size -> store. Methods and metrics plug in through the registries; nothing here
knows any particular method.
"""
from __future__ import annotations

import gc
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from qbench.api import MetricValue, Prompt
from qbench.config import RunConfig
from qbench.errors import NonFiniteOutputError, QBenchError, RunInterrupted
from qbench.generation import (  # noqa: F401  (re-exported: the harness's public helpers)
    CachedImages,
    batches,
    comparability,
    fp_method,
    generate_cached,
    image_key,
    sampling_settings,
    seed_for,
)
from qbench.imagecache import ImageCache
from qbench.store import Store, iter_chunks


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_writable(path: str) -> None:
    """The results folder exists and takes a file: :func:`qbench.fsutil.check_writable_folder`
    (a ``mkstemp`` probe, never a fixed name a symlink could be planted on; always removed)."""
    from qbench.fsutil import check_writable_folder

    check_writable_folder(path, "output folder")


def run(cfg: RunConfig, *, show_progress: bool = True, log: Callable[[str], None] | None = None, plan=None, pipe=None) -> RunResult | None:
    """Run ``cfg`` end to end (see the module docstring) and store the result.

    ``pipe``: a diffusers pipeline the caller brings (quantized by any tool), scored as given
    instead of loading and converting ``cfg.model``: the run's method is ``external``
    (``qbench.methods.external``; ``cfg.method_options["label"]`` names it), its image cache is
    keyed by the pipeline's content fingerprint, and ``cfg.model`` says which model's sampling
    defaults, metrics and full-precision references apply (the pipeline must be of that model's
    pipeline class, on its own device and dtype).

    Everything is validated first (:func:`qbench.preflight.plan_run`; pass ``plan`` to reuse
    one); a problem found there raises before anything is loaded, generated or stored. Launched
    with several ranks (``torchrun`` / ``accelerate launch``, :mod:`qbench.dist`), every rank
    generates its block of batches and scores it; the main rank stores the run and returns it,
    the others return None."""
    import dataclasses

    from qbench.dist import current, rank_device
    from qbench.imagecache import code_version
    from qbench.measure import PeakMemory, flush, measure_latency, process_rss, provenance
    from qbench.models.base import module_nbytes
    from qbench.models.loader import load_model
    from qbench.models.truncation import prompt_truncation
    from qbench.preflight import plan_run
    from qbench.progress import make_progress
    from qbench.quant.api import size_report

    dist = current(cfg.device)
    say = (log or (lambda msg: None)) if dist.is_main else (lambda msg: None)
    if pipe is not None:  # a brought pipeline is scored as method "external" (qbench/methods/external.py)
        from qbench.methods.external import config_for, loaded_model

        cfg = config_for(cfg, pipe)
    plan = plan or plan_run(cfg)
    cfg, method, prompts = plan.cfg, plan.method, plan.prompts
    ref = dataclasses.replace(plan.ref, device=rank_device(cfg.device, dist)) if dist.enabled else plan.ref
    store, run_id = None, None
    if dist.is_main:
        _check_writable(cfg.out_dir)
        store = Store(cfg.db_path)
        desc = method.describe()
        run_id = store.start_run(cfg.to_dict(), method.label, desc.get("bits"), method.mode)
    run_id = dist.broadcast(run_id)
    ranks = f" on {dist.world} ranks ({dist.backend})" if dist.enabled else ""
    say(f"run {run_id}: {cfg.model} / {method.label} on {len(prompts)} prompts ({cfg.prompts}){ranks}")
    if plan.calibration:
        say(f"calibrating first on {plan.calib_spec}: {plan.calibration['images']} images ({plan.calibration['what']})")
    timings: dict[str, float] = {}
    cache: ImageCache | None = None
    t_start = time.perf_counter()
    try:
        flush(ref.device)
        rss_before_load = process_rss()
        t = time.perf_counter()
        model = loaded_model(plan, pipe) if pipe is not None else load_model(cfg.model, ref=ref)
        timings["load_s"] = time.perf_counter() - t
        with make_progress(show_progress and dist.is_main) as progress:
            references, n_ref, fp_cache = None, 0, None
            if plan.needs_fp_reference:
                fp_model = load_model(cfg.model, ref=ref) if pipe is not None else model  # a brought pipeline is not the reference
                fp_key, fp_meta = image_key(fp_model, fp_method(cfg).describe(), cfg)
                fp_cache = ImageCache(cfg.out_dir, cfg.model, fp_key, fp_meta)
                t = time.perf_counter()
                references, n_ref = generate_cached(fp_model, fp_cache, prompts, cfg, progress, "full-precision references", dist)
                timings["reference_s"] = time.perf_counter() - t
                del fp_model
                gc.collect()  # free it now (pipelines can hold reference cycles), before the quantized run's memory is measured
            t = time.perf_counter()
            ctx = _calibration_context(plan, model, progress, say, dist)
            method.prepare(model)
            method.calibrate(model, plan.calib_prompts, ctx)
            method.convert(model)
            timings["quantize_s"] = time.perf_counter() - t
            desc = method.describe()  # may now include calibrated values
            key, meta = image_key(model, desc, cfg)
            cache = ImageCache(cfg.out_dir, cfg.model, key, meta)
            t = time.perf_counter()
            images, n_main = generate_cached(model, cache, prompts, cfg, progress, f"generating ({method.label})", dist)
            n_gen = n_main + (n_ref if fp_cache is not None and fp_cache.dir == cache.dir else 0)  # fp: its references are its images
            timings["generate_s"] = time.perf_counter() - t
            timings["generate_per_image_s"] = timings["generate_s"] / n_main if n_main else float("nan")
            latency, mem = None, None
            if dist.is_main:  # latency and memory before any metric network is loaded, after a flush
                flush(model.device)
                t = time.perf_counter()
                with PeakMemory(model.device, baseline=rss_before_load) as mem:
                    latency = measure_latency(
                        model, prompts[0].text, seed_for(cfg, prompts[0]), warmup=cfg.latency_warmup, repeats=cfg.latency_repeats,
                        steps=cfg.steps, guidance=cfg.guidance, resolution=cfg.resolution,
                    )
                timings["latency_s"] = time.perf_counter() - t
                latency["kind"] = _latency_kind(method) + (f"; measured on rank 0 of {dist.world}" if dist.enabled else "")
            t = time.perf_counter()
            metrics = _compute_metrics(plan, model.device, prompts, images, references, progress, dist)
            timings["metrics_s"] = time.perf_counter() - t
        if not dist.is_main:
            return None
        timings["total_s"] = time.perf_counter() - t_start
        memory = dict(mem.result, measured_during="latency runs (batch 1 generation), metric networks not loaded yet"
                      + (f", rank 0 of {dist.world}" if dist.enabled else ""))
        result = RunResult(
            run_id=run_id,
            config=cfg.to_dict(),
            label=method.label,
            mode=method.mode,
            bits=desc.get("bits"),
            model_source=model.source,
            method=desc,
            method_report=method.report(),
            metrics={k: v.to_dict() for k, v in metrics.items()},
            latency=latency,
            memory=memory,
            model_bytes=module_nbytes(model.denoiser),
            size=size_report(model.denoiser),
            effective_bits=_bits(method, model),
            sampling=comparability(model, cfg, prompts),
            timings=timings,
            n_images=len(images),
            n_generated=n_gen,
            images_dir=cache.dir,
            provenance=dict(provenance(model.device), dtype=str(model.dtype).replace("torch.", ""), weights=model.source, tiny_random=model.spec.is_tiny,
                            code=code_version(), **({"distributed": dist.describe()} if dist.enabled else {})),
            notes=_notes(model, method),
            calibration={"prompts": plan.calib_spec, "prompt_ids": [p.id for p in plan.calib_prompts]} if plan.calib_prompts else {},
        )
        result.prompt_truncation = prompt_truncation(model.pipe, [p.text for p in prompts], model.spec.call_kwargs)
        store.finish_run(run_id, result.to_dict(), result.metrics,
                         per_image={k: v.per_image for k, v in metrics.items() if v.per_image})
        return result
    except KeyboardInterrupt as e:
        kept = f"; {cache.dir} keeps the images already made" if cache else ""
        _mark(store, run_id, "interrupted", str(e) or "KeyboardInterrupt")  # the CLI's SIGTERM handler names its signal
        raise RunInterrupted(f"run {run_id} interrupted{kept}; re-run the same command to resume (only missing images are generated)") from None
    except NonFiniteOutputError as e:
        hint = ("the quantization may be too aggressive (fewer layers or more bits)" if method.uses_bits
                else f"the {cfg.dtype or 'native'} dtype may overflow: try --dtype float32")
        _mark(store, run_id, "failed", f"{e}; {hint}")
        raise NonFiniteOutputError(f"{e}; {hint}") from None
    except QBenchError as e:
        _mark(store, run_id, "failed", str(e))
        raise
    except BaseException as e:
        _mark(store, run_id, "failed", f"{type(e).__name__}: {e}")
        raise


def _mark(store, run_id, status: str, error: str) -> None:
    if store is not None:  # the main rank's
        store.mark(run_id, status, error)


def _calibration_context(plan, model, progress, say, dist=None):
    """The method's CalibrationContext, with full-precision images of the calibration prompts
    generated first (the model is still full precision here) when the method asks for them."""
    from qbench.calibctx import CalibrationContext

    if not plan.calib_prompts:
        return None
    cfg = plan.cfg
    fp = None
    if getattr(plan.method, "NEEDS_FP_CALIBRATION_IMAGES", False):
        key, meta = image_key(model, fp_method(cfg).describe(), cfg)
        fp, _ = generate_cached(model, ImageCache(cfg.out_dir, cfg.model, key, meta), plan.calib_prompts, cfg, progress,
                                "full-precision calibration images", dist)
    return CalibrationContext(model, cfg, plan.calib_prompts, method_name=plan.method.name, fp_images=fp, progress=progress, say=say, dist=dist)


def _bits(method, model) -> dict[str, Any]:
    from qbench.quant.api import bit_map, effective_bits

    if not method.uses_bits:
        return {}
    layer_types = tuple(getattr(getattr(method, "qconfig", None), "layer_types", ("linear",)))
    bm = method.bit_map(model) if hasattr(method, "bit_map") else bit_map(model.denoiser, layer_types)  # a method with its own layers
    return {"effective": effective_bits(bm), "by_layer": bm}


def _latency_kind(method) -> str:
    if getattr(method, "latency_kind", None):
        return method.latency_kind
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
