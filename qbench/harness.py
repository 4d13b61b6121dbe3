"""The harness: ``run(cfg) -> RunResult``, the ``run`` sequence of :mod:`qbench.phases`.

plan (validate everything, locate every file: :mod:`qbench.preflight`; the run's identity) ->
load -> references (full-precision images, if a metric needs them) -> apply (method.prepare ->
calibrate -> convert) -> generate (batched, per-prompt seeds, image cache, progress) -> measure
(latency and peak memory, after a flush, before any metric network is loaded) -> score (each
metric network loaded once) -> store. The result record and the helpers the phases share live
in :mod:`qbench.runparts` (re-exported here); methods and metrics plug in through the registries,
nothing here knows any particular method.
"""
from __future__ import annotations

from typing import Callable

from qbench.api import Prompt  # noqa: F401  (re-exported)
from qbench.config import RunConfig
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
from qbench.runparts import (  # noqa: F401  (re-exported: the result record and the phases' helpers)
    RunResult,
    _bits,
    _calibration_context,
    _check_writable,
    _compute_metrics,
    _latency_kind,
    _notes,
    build_result,
)


def run(cfg: RunConfig, *, show_progress: bool = True, log: Callable[[str], None] | None = None, plan=None, pipe=None) -> RunResult | None:
    """Run ``cfg`` end to end and store the result: the ``run`` sequence of
    :mod:`qbench.phases` (plan -> load -> references -> apply -> generate -> measure -> score ->
    store).

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
    from qbench.phases import RunState, run_phases

    state = RunState(cfg, show_progress=show_progress, say=log or (lambda msg: None), pipe=pipe, plan=plan)
    run_phases(state, "run")
    return state.result
