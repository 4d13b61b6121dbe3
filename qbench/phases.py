"""The named phases of a run, shared by ``run``, ``export``, ``calibrate`` and ``sweep``.

    plan -> load -> references -> apply -> generate -> measure -> score -> store

Each :class:`Phase` declares what it needs from the :class:`RunState` and what it makes;
:func:`run_phases` runs a sequence of them in order and refuses a sequence whose phase needs
something no earlier phase made. The sequences (:data:`SEQUENCES`):

* ``run`` (``qbench run``, :func:`qbench.harness.run`, sweep cells): all eight; ``export``: plan ->
  load -> apply; ``calibrate``: plan -> load -> apply without convert (the method writes its
  artefact); ``score`` (:mod:`qbench.scoring`): plan-images -> reference-images -> read -> score ->
  store; ``try`` (``qbench serve``'s try-it page): plan -> load -> apply -> generate, unrecorded.

Artefact keys are :mod:`qbench.identity`'s: ``plan`` computes the run's identity
(:func:`run_identity`, the key of a finished sweep cell), ``references`` and ``generate`` the image
folders'; every identity used is recorded in ``state.reused`` and stored with the run.
"""
from __future__ import annotations

import dataclasses
import gc
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from qbench.config import RunConfig
from qbench.errors import QBenchError


@dataclass
class RunState:
    """Inputs of a sequence and everything its phases make (None until made)."""

    cfg: RunConfig
    show_progress: bool = True
    say: Callable[[str], None] = lambda msg: None
    pipe: Any = None  # a pipeline the caller brings (method "external"); None: load cfg.model
    plan: Any = None  # qbench.preflight.RunPlan, or one given by the caller
    convert: bool = True  # apply: False stops after the method's calibration (``qbench calibrate``)
    record: bool = True  # plan opens a row in the results store (the run is "running" from then)
    scored: Any = None  # ``qbench score``: what it was given and read (qbench.scoring.ScoreInputs)
    # made by the phases
    dist: Any = None
    identity: Any = None  # the run's qbench.identity.Identity
    store: Any = None
    run_id: str | None = None
    ref: Any = None  # the located model (qbench.models.loader.ModelRef), on this rank's device
    model: Any = None
    progress: Any = None
    references: Any = None
    fp_cache: Any = None
    n_ref: int = 0
    applied: bool | None = None
    images: Any = None
    cache: Any = None
    n_generated: int = 0
    latency: dict[str, Any] | None = None
    memory: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None
    result: Any = None
    rss_before_load: int | None = None
    timings: dict[str, float] = field(default_factory=dict)
    reused: dict[str, dict[str, Any]] = field(default_factory=dict)  # artefact -> identity record


@dataclass(frozen=True)
class Phase:
    name: str
    fn: Callable[[RunState], None]
    needs: tuple[str, ...]
    makes: tuple[str, ...]


# -- the phases ------------------------------------------------------------------------------------
def _plan(s: RunState) -> None:
    """Validate everything and locate every file (:func:`qbench.preflight.plan_run`), compute the
    run's identity, and (``record``) open the run's row in the store."""
    from qbench.dist import current

    s.dist = current(s.cfg.device)
    if s.pipe is not None:  # a brought pipeline is scored as method "external" (qbench/methods/external.py)
        from qbench.methods.external import config_for

        s.cfg = config_for(s.cfg, s.pipe)
    if s.plan is None:
        from qbench.preflight import plan_run

        s.plan = plan_run(s.cfg)
    s.cfg = s.plan.cfg
    s.identity = run_identity(s.plan)
    _open_row(s)


def _open_row(s: RunState) -> None:  # the run is "running" from here
    if not s.record:
        return
    from qbench.runparts import _check_writable
    from qbench.store import Store

    run_id = None
    if s.dist.is_main:
        _check_writable(s.cfg.out_dir)
        s.store = Store(s.cfg.db_path)
        method = s.plan.method
        run_id = s.store.start_run(s.cfg.to_dict(), method.label, method.describe().get("bits"), method.mode)
    s.run_id = s.dist.broadcast(run_id)


def _scoring(name: str) -> Callable[[RunState], None]:
    """``qbench score``'s phase ``name`` of :mod:`qbench.scoring`; its plan also opens the run's row."""
    def phase(s: RunState) -> None:
        from qbench import scoring

        getattr(scoring, name)(s)
        if name == "plan_images":
            _open_row(s)
    return phase


def _load(s: RunState) -> None:
    from qbench.dist import rank_device
    from qbench.measure import flush, process_rss
    from qbench.models.loader import load_model

    plan = s.plan
    s.ref = ref = dataclasses.replace(plan.ref, device=rank_device(s.cfg.device, s.dist)) if s.dist.enabled else plan.ref
    flush(ref.device)
    s.rss_before_load = process_rss()
    if s.pipe is not None:
        from qbench.methods.external import loaded_model
        s.model = loaded_model(plan, s.pipe)
    else:
        s.model = load_model(s.cfg.model, ref=ref)


def _references(s: RunState) -> None:
    """Full-precision reference images of the evaluation prompts, when a metric needs them."""
    from qbench.generation import fp_method, generate_cached, image_identity
    from qbench.imagecache import ImageCache
    from qbench.models.loader import load_model

    s.references = []
    if not s.plan.needs_fp_reference:
        return
    cfg = s.cfg
    fp_model = load_model(cfg.model, ref=s.ref) if s.pipe is not None else s.model  # a brought pipeline is not the reference
    ident = image_identity(fp_model, fp_method(cfg), cfg)
    s.reused["fp_references"] = ident.record()
    s.fp_cache = ImageCache(cfg.out_dir, cfg.model, ident.key, ident.record())
    s.references, s.n_ref = generate_cached(fp_model, s.fp_cache, s.plan.prompts, cfg, s.progress, "full-precision references", s.dist)
    del fp_model
    gc.collect()  # free it now (pipelines can hold reference cycles), before the quantized run's memory is measured


def _apply(s: RunState) -> None:
    """The method: prepare -> calibrate -> convert (convert skipped for ``qbench calibrate``)."""
    from qbench.runparts import _calibration_context

    method = s.plan.method
    ctx = _calibration_context(s.plan, s.model, s.progress, s.say, s.dist)
    method.prepare(s.model)
    method.calibrate(s.model, s.plan.calib_prompts, ctx)
    if s.convert:
        method.convert(s.model)
    s.applied = True


def _generate(s: RunState) -> None:
    from qbench.generation import generate_cached, image_identity
    from qbench.imagecache import ImageCache

    method, cfg = s.plan.method, s.cfg
    ident = image_identity(s.model, method, cfg)  # the method's description may now hold calibrated values
    s.reused["images"] = ident.record()
    s.cache = ImageCache(cfg.out_dir, cfg.model, ident.key, ident.record())
    t = time.perf_counter()
    s.images, n_main = generate_cached(s.model, s.cache, s.plan.prompts, cfg, s.progress, f"generating ({method.label})", s.dist)
    s.n_generated = n_main + (s.n_ref if s.fp_cache is not None and s.fp_cache.dir == s.cache.dir else 0)  # fp: its references are its images
    s.timings["generate_per_image_s"] = (time.perf_counter() - t) / n_main if n_main else float("nan")


def _measure(s: RunState) -> None:
    """Latency and peak memory, before any metric network is loaded, after a flush. With several
    ranks, rank 0 measures while the others wait idle at a barrier, at the thread count a
    one-process run uses."""
    from qbench.generation import seed_for
    from qbench.runparts import _latency_kind
    from qbench.measure import PeakMemory, flush, measure_latency

    cfg, prompts = s.cfg, s.plan.prompts
    s.dist.barrier()
    if s.dist.is_main:
        flush(s.model.device)
        with _one_process_threads(s.dist, s.model.device) as threads, PeakMemory(s.model.device, baseline=s.rss_before_load) as mem:
            s.latency = measure_latency(s.model, prompts[0].text, seed_for(cfg, prompts[0]), warmup=cfg.latency_warmup,
                                        repeats=cfg.latency_repeats, steps=cfg.steps, guidance=cfg.guidance, resolution=cfg.resolution)
        s.latency["kind"] = _latency_kind(s.plan.method) + (
            f"; measured on rank 0 of {s.dist.world} with the other ranks idle, {threads} threads" if s.dist.enabled else "")
        s.memory = dict(mem.result, measured_during="latency runs (batch 1 generation), metric networks not loaded yet"
                        + (f", rank 0 of {s.dist.world}" if s.dist.enabled else ""))
    s.dist.barrier()


class _one_process_threads:
    """On a CPU rank of a sharded run, use the threads a one-process run would (every core this
    process may run on) while latency is measured; elsewhere the current count. Yields it."""

    def __init__(self, dist, device: str):
        self.change = dist.enabled and str(device).startswith("cpu")

    def __enter__(self) -> int:
        import os

        import torch

        self.before = torch.get_num_threads()
        if self.change:
            torch.set_num_threads(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))
        return torch.get_num_threads()

    def __exit__(self, *exc: Any) -> None:
        if self.change:
            import torch

            torch.set_num_threads(self.before)


def _score(s: RunState) -> None:
    from qbench.runparts import _compute_metrics

    device = s.model.device if s.model is not None else s.plan.ref.device  # score: no model, the plan's device
    s.metrics = _compute_metrics(s.plan, device, s.plan.prompts, s.images, s.references or None, s.progress, s.dist)


def _store(s: RunState) -> None:
    """The main rank builds the :class:`~qbench.harness.RunResult` and stores it (one transaction)."""
    from qbench.runparts import build_result
    from qbench.scoring import build_scored_result

    if not s.dist.is_main:
        return
    s.result = build_scored_result(s) if s.scored is not None else build_result(s)
    s.store.finish_run(s.run_id, s.result.to_dict(), s.result.metrics,
                       per_image={k: v.per_image for k, v in s.metrics.items() if v.per_image})


PHASES: dict[str, Phase] = {p.name: p for p in (
    Phase("plan", _plan, (), ("plan", "identity", "dist")),
    Phase("load", _load, ("plan",), ("model",)),
    Phase("references", _references, ("model",), ("references",)),
    Phase("apply", _apply, ("model",), ("applied",)),
    Phase("generate", _generate, ("applied",), ("images",)),
    Phase("measure", _measure, ("applied",), ()),
    Phase("score", _score, ("images", "references"), ("metrics",)),
    Phase("store", _store, ("metrics",), ()),
    Phase("plan-images", _scoring("plan_images"), (), ("plan", "identity", "dist")),
    Phase("reference-images", _scoring("reference_images"), ("plan",), ("references",)),
    Phase("read", _scoring("read"), ("plan",), ("images",)),
)}
SEQUENCES: dict[str, tuple[str, ...]] = {
    "run": ("plan", "load", "references", "apply", "generate", "measure", "score", "store"),
    "export": ("plan", "load", "apply"),
    "calibrate": ("plan", "load", "apply"),
    "score": ("plan-images", "reference-images", "read", "score", "store"),
    "try": ("plan", "load", "apply", "generate"),  # `qbench serve`'s try-it page (qbench.serve_try): nothing recorded
}
#: phases that run inside the progress display (the ones that generate or score)
_WITH_PROGRESS = ("references", "apply", "generate", "score")


def check_sequence(names: tuple[str, ...]) -> None:
    """Refuse a sequence whose phase needs something no earlier phase makes."""
    made: set[str] = set()
    for n in names:
        if n not in PHASES:
            raise ValueError(f"unknown phase {n!r}; phases: {', '.join(PHASES)}")
        missing = [x for x in PHASES[n].needs if x not in made]
        if missing:
            raise ValueError(f"phase {n!r} needs {', '.join(missing)}, which no earlier phase of {names} makes")
        made.update(PHASES[n].makes)


def run_phases(state: RunState, sequence: str, *, after_plan: Callable[[RunState], None] | None = None) -> RunState:
    """Run the phases of ``SEQUENCES[sequence]`` on ``state`` in order; each phase's wall time goes
    into ``state.timings["<phase>_s"]``; ``after_plan(state)`` runs right after the plan phase
    (a caller's own refusals, before anything loads). A run that fails after its row was opened is
    marked (interrupted, or failed with the reason) and the error re-raised as one line."""
    from qbench.progress import make_progress

    names = SEQUENCES[sequence]
    check_sequence(names)
    t_start = time.perf_counter()
    bar = None
    try:
        for name in names:
            if name in _WITH_PROGRESS and bar is None:
                bar = make_progress(state.show_progress and (state.dist is None or state.dist.is_main))
                state.progress = bar.__enter__()
            if name == "store" and bar is not None:
                bar.__exit__(None, None, None)
                bar = None
            t = time.perf_counter()
            PHASES[name].fn(state)
            state.timings[f"{name}_s"] = time.perf_counter() - t
            if name in ("plan", "plan-images"):
                if after_plan is not None:
                    after_plan(state)
                if state.record:
                    _say_start(state)
        if state.dist is not None:
            state.dist.barrier()  # a failure on any rank in the last phase fails this sequence on every rank
    except BaseException as e:
        if bar is not None:
            bar.__exit__(type(e), e, e.__traceback__)
        if state.dist is not None and not isinstance(e, KeyboardInterrupt):
            state.dist.announce_failure(e)  # the other ranks raise RankFailed in their next collective
        _on_failure(state, e)
        raise
    if bar is not None:
        bar.__exit__(None, None, None)
    state.timings["total_s"] = time.perf_counter() - t_start
    return state


def _say_start(s: RunState) -> None:
    plan, dist = s.plan, s.dist
    if not dist.is_main:
        return
    ranks = f" on {dist.world} ranks ({dist.backend})" if dist.enabled else ""
    s.say(f"run {s.run_id}: {s.cfg.model} / {plan.method.label} on {len(plan.prompts)} prompts ({s.cfg.prompts}){ranks}")
    if plan.calibration:
        s.say(f"calibrating first on {plan.method.calib_label}: {plan.calibration['images']} images ({plan.calibration['what']})")


def _on_failure(s: RunState, e: BaseException) -> None:
    """Mark the run's row (if one was opened) and turn the error into the one line users see."""
    from qbench.errors import NonFiniteOutputError, RunInterrupted

    if s.store is None or s.run_id is None:
        return
    if isinstance(e, KeyboardInterrupt):
        kept = f"; {s.cache.dir} keeps the images already made" if s.cache else ""
        s.store.mark(s.run_id, "interrupted", str(e) or "KeyboardInterrupt")  # the CLI's SIGTERM handler names its signal
        raise RunInterrupted(f"run {s.run_id} interrupted{kept}; re-run the same command to resume (only missing images are generated)") from None
    if isinstance(e, NonFiniteOutputError):
        method = s.plan.method
        hint = ("the quantization may be too aggressive (fewer layers or more bits)" if method.uses_bits
                else f"the {s.cfg.dtype or 'native'} dtype may overflow: try --dtype float32")
        s.store.mark(s.run_id, "failed", f"{e}; {hint}")
        raise NonFiniteOutputError(f"{e}; {hint}") from None
    s.store.mark(s.run_id, "failed", str(e) if isinstance(e, QBenchError) else f"{type(e).__name__}: {e}")


# -- the run's identity ------------------------------------------------------------------------------
def run_identity(plan):
    """The :class:`~qbench.identity.Identity` of a run: its configuration (less where results are
    written), the prompts' and calibration prompts' ids and texts, the model (spec, weights
    content), the method's :meth:`~qbench.api.Method.identity_describe`, the metrics with their
    options and files, and the code and libraries of generation, method, metrics and measurement.
    A stored ``done`` run is the finished result of a configuration only under this key."""
    from qbench.catalog import METRICS
    from qbench.generation import model_code, model_inputs, sampling_settings
    from qbench.hubprompts import prompt_sources
    from qbench.identity import GENERATION_LIBRARIES, METRIC_LIBRARIES, make, option_files
    from qbench.metrics.common import GLOBAL_OPTIONS

    cfg, method = plan.cfg, plan.method
    config = {k: v for k, v in cfg.to_dict().items() if k not in ("out_dir", "db")}
    metric_modules, declared = [], []
    for name in plan.metric_names:
        cls = METRICS.get(name)
        metric_modules.append(cls.__module__)
        declared += list(cls.OPTIONS)
    # Hub prompt sets: repository, revision, resolved commit (absent for other sets: keys unchanged)
    sources = prompt_sources(plan.prompts) + [s for s in prompt_sources(plan.calib_prompts) if s not in prompt_sources(plan.prompts)]
    return make("run", {
        "config": config,
        "prompts": [[p.id, p.index, p.text] for p in plan.prompts],
        "calibration_prompts": [[p.id, p.index, p.text] for p in plan.calib_prompts],
        **({"prompt_sources": sources} if sources else {}),
        **model_inputs(plan.ref),
        "sampling": sampling_settings(plan.ref, cfg),
        "method": method.identity_describe(),
        "metrics": plan.metric_names,
        "metric_options": plan.metric_options,
    }, files=option_files(plan.metric_options, declared + list(GLOBAL_OPTIONS)),
        code={"generation": model_code(plan.ref), "method": method.code_modules(), "metrics": metric_modules,
              "measure": ["qbench.measure"]},
        libraries=GENERATION_LIBRARIES + METRIC_LIBRARIES + tuple(method.LIBRARIES))


def calibrate(cfg: RunConfig, *, show_progress: bool = True, say: Callable[[str], None] | None = None) -> RunState:
    """``qbench calibrate``: the ``calibrate`` sequence (plan -> load -> apply without convert) of
    ``cfg`` with no metrics and no stored run; the method's calibration writes its artefact.
    Returns the state (``state.plan.method`` holds what was calibrated)."""
    from qbench.calibctx import say_stderr

    state = RunState(cfg.replace(metrics=[]), show_progress=show_progress, say=say or say_stderr, record=False, convert=False)
    return run_phases(state, "calibrate")
