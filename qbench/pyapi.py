"""qbench's Python API: what people script, the same code paths as the commands (docs/api.md).

* :func:`evaluate` — ``qbench run`` from Python: a :class:`~qbench.config.RunConfig` or its fields
  as keywords, optionally a pipeline you bring (scored as method ``external``); stored in the same
  results store, under the same identity, as the same result record.
* :func:`compare` — ``qbench compare`` as a :class:`pandas.DataFrame` (one row per configuration,
  the columns of ``qbench compare --csv``).
* :func:`quantize` — apply a registered method to a pipeline you loaded: the ``apply`` phase of a
  run (prepare -> calibrate -> convert), in place; returns the pipeline.
* :func:`load_pipeline` — a registered model's diffusers pipeline, as a run loads it.
* :func:`qbench.export.load_quantized` — a pipeline written by ``qbench export``.

``import qbench`` stays cheap: :mod:`qbench` imports this module (and torch) on first use.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qbench.config import RunConfig
from qbench.errors import ConfigError, QBenchError

if TYPE_CHECKING:  # pragma: no cover
    import pandas

    from qbench.runparts import RunResult


def evaluate(config: RunConfig | None = None, *, pipe: Any = None, show_progress: bool = False, **fields: Any) -> RunResult:
    """Run one configuration end to end and store it, as ``qbench run`` does
    (:func:`qbench.harness.run`: plan -> load -> references -> apply -> generate -> measure ->
    score -> store). Returns the :class:`~qbench.runparts.RunResult` (``.metrics``: name ->
    ``{"value", "stderr", "n", ...}``; ``.to_dict()``: the record ``qbench run --json`` prints).

    ``config``: a :class:`~qbench.config.RunConfig`; ``fields``: RunConfig fields (``model``,
    ``method``, ``bits``, ``prompts``, ``metrics``, ``out_dir``, ``method_options``, ...) that
    replace its values (or make one from the defaults). ``pipe``: a diffusers pipeline you made or
    quantized yourself, scored as given under method ``external`` (``methods/external.py``;
    ``method_options={"label": ...}`` names it; ``model`` says which registered model it was made
    from: sampling defaults, metrics, full-precision references).

    Raises :class:`~qbench.errors.ConfigError` for an unknown field or a ``config`` that is not a
    RunConfig; :class:`~qbench.errors.QBenchError` (or a subclass) for what the preflight refuses
    (unknown model, method, metric or prompt set: every problem in one message), missing weights
    offline, and a run that fails (stored as failed)."""
    from qbench.harness import run

    if config is not None and not isinstance(config, RunConfig):
        raise ConfigError(f"evaluate() takes a RunConfig (or keyword fields), got {type(config).__name__}")
    try:
        cfg = config.replace(**fields) if config is not None else RunConfig(**fields)
    except TypeError as e:
        raise ConfigError(f"evaluate(): {e}") from None
    result = run(cfg, show_progress=show_progress, pipe=pipe)
    if result is None:  # a non-main rank of a distributed run: the main rank stores and returns it
        raise QBenchError("evaluate(): this rank is not the main rank of a distributed run; its result is on rank 0")
    return result


def compare(model: str | None = None, *, out_dir: str = "reports", db: str | None = None, baseline: str | None = None,
            runs: list[str] | None = None) -> pandas.DataFrame:
    """The stored runs side by side, as ``qbench compare --csv`` writes them: one row per
    configuration (the newest finished run of each; ``runs``: exactly these run ids), grouped into
    tables of comparable settings (column ``table``), each metric ``M`` with ``M_se``, ``M_n`` and,
    paired prompt by prompt with the table's baseline (``baseline``: a method, label, tag or run
    id; default full precision), ``M_delta``, ``M_delta_se``, ``M_resolved``; then latency
    (seconds), peak memory and size (bytes). Read from ``db`` (default ``<out_dir>/qbench.sqlite``).

    Raises :class:`~qbench.errors.QBenchError` when there is no such store or no finished run of
    ``model`` (every model when None), :class:`~qbench.errors.NoSuchRunError` for an unknown run id."""
    import os

    import pandas as pd

    from qbench.comparison import compare as compare_rows
    from qbench.results_export import compare_records
    from qbench.store import Store

    store = Store(db or os.path.join(out_dir, "qbench.sqlite"), create=False)
    selected = [store.get(r) for r in runs] if runs else None
    if selected and any(r["status"] != "done" for r in selected):
        bad = next(r for r in selected if r["status"] != "done")
        raise QBenchError(f"run {bad['id']} is {bad['status']}: only finished runs can be compared")
    models = [model] if model else (list(dict.fromkeys(r["model"] for r in selected)) if selected else store.models())
    if not models:
        raise QBenchError(f"no finished runs in {store.path}; evaluate() or `qbench run` first")
    payload = {}
    for m in models:
        rows = [r for r in selected if r["model"] == m] if selected else store.runs(model=m)
        if not rows:
            raise QBenchError(f"no finished runs for model {m!r} in {store.path}")
        payload[m], _ = compare_rows(rows, store.per_image, baseline=baseline, keep_all=bool(selected), selected=bool(selected))
    return pd.DataFrame.from_records(compare_records(payload))


#: attribute :func:`load_pipeline` sets on the pipelines it loads: the registered model's name
MODEL_ATTR = "_qbench_model"


def _model_of(pipe: Any, model: str | None) -> str:
    """``model``; else the model :func:`load_pipeline` loaded ``pipe`` as; else the one registered
    model whose pipeline class ``pipe`` is (ConfigError when none or several are: ``model=`` says
    which)."""
    from qbench.catalog import MODELS

    if model or getattr(pipe, MODEL_ATTR, None):
        return model or getattr(pipe, MODEL_ATTR)
    cls = type(pipe).__name__
    names = [n for n in MODELS.names() if MODELS.get(n).pipeline_class == cls]
    if len(names) != 1:
        which = f"the pipeline class of {', '.join(names)}" if names else "the pipeline class of no registered model (`qbench list models`)"
        raise ConfigError(f"quantize(): {cls} is {which}: say which model it was made from with model=")
    return names[0]


def quantize(pipe: Any, method: str, bits: str | None = None, *, model: str | None = None, out_dir: str = "reports",
             calib_prompts: str | None = None, show_progress: bool = False, **options: Any) -> Any:
    """Quantize ``pipe`` (a loaded diffusers pipeline, on its own device and dtype) in place with
    the registered ``method`` (``qbench list methods``) at ``bits`` (``W4A8``, ``W8A8``, ...;
    docs/conventions.md) and the method's ``options`` (``-O`` of ``qbench run``); returns the same
    pipeline. This is the ``apply`` phase of a run (:mod:`qbench.phases`: the method's prepare ->
    calibrate -> convert, calibrating on ``calib_prompts`` or the method's default set; what a
    calibration writes goes under ``out_dir``), on your pipeline instead of a freshly loaded one.

    ``model``: the registered model the pipeline was made from (its calibration defaults; not
    needed for a pipeline from :func:`load_pipeline`, nor when only one registered model has the
    pipeline's class). Nothing is stored as a run:
    score the result with :func:`evaluate` ``(pipe=...)``.

    Raises :class:`~qbench.errors.ConfigError` for an unknown method, bits or option, a method
    that does not quantize (``fp``, ``external``) or a pipeline of another class than ``model``'s."""
    import diffusers

    from qbench.dist import current
    from qbench.models.base import LoadedModel
    from qbench.models.fingerprint import pipeline_fingerprint
    from qbench.phases import PHASES, RunState
    from qbench.preflight import plan_run
    from qbench.progress import make_progress

    name = _model_of(pipe, model)
    device = pipe.device.type
    cfg = RunConfig(model=name, method=method, bits=bits, method_options=dict(options), calib_prompts=calib_prompts, metrics=[],
                    out_dir=out_dir, device=device, dtype=str(pipe.dtype).replace("torch.", ""))
    plan = plan_run(cfg)
    if not isinstance(pipe, getattr(diffusers, plan.spec.pipeline_class)):
        raise ConfigError(f"pipe is a {type(pipe).__name__}, but model {name!r} is a {plan.spec.pipeline_class}")
    if not plan.method.uses_bits:
        raise ConfigError(f"method {method!r} does not quantize: quantize() applies a quantization method (`qbench list methods`)")
    state = RunState(plan.cfg, plan=plan, record=False, show_progress=show_progress)
    state.dist = current(device)
    pipe.set_progress_bar_config(disable=True)
    state.model = LoadedModel(spec=plan.spec, pipe=pipe, source=plan.ref.source, device=str(pipe.device), dtype=pipe.dtype,
                              fingerprint=pipeline_fingerprint(pipe))
    with make_progress(show_progress) as progress:
        state.progress = progress
        PHASES["apply"].fn(state)
    return pipe


def load_pipeline(model: str, *, device: str = "auto", dtype: str | None = None, model_path: str | None = None) -> Any:
    """The diffusers pipeline of the registered ``model`` (``qbench list models``), loaded as a run
    loads it (:func:`qbench.models.loader.load_model`: its scheduler and sampling set-up; offline,
    from the local cache or ``model_path``). Raises :class:`~qbench.errors.MissingWeightsError`
    when the weights are not on this machine."""
    from qbench.models.loader import load_model

    pipe = load_model(model, device=device, dtype=dtype, model_path=model_path).pipe
    setattr(pipe, MODEL_ATTR, model)  # quantize(pipe, ...) knows which model's defaults apply
    return pipe
