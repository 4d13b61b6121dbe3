"""Q-Sched: quantization-aware scheduling (Frumkin & Marculescu, arXiv 2509.01624).

    qbench calibrate --method qsched --model M --bits W4A8 [--search grid|own] [--calib-prompts SPEC]
    qbench run --method qsched --model M [--bits W4A8] [--qsched-ckpt FILE]

``run`` uses ``<out_dir>/qsched/<model>_<bits>_<base>_<parameterisation>_<steps>steps.json`` if it
exists (and was made with the same base-method settings), else calibrates first and writes it;
``calibrate`` always calibrates (and also writes a ``.<search>.json`` copy). Method options
(``-O key=value``): ``base`` (naive), ``base_options`` ({}), ``parameterisation``
(ramp | start_end | per_step), ``search`` (own | grid), ``grid_lo``/``grid_hi``/``grid_n``
(0.8/1.2/50), ``calib_batch_size`` (5), ``max_images`` (own search budget; default = the 2-scalar
grid's images / 20 minus the identity baseline's images), ``search_options`` (own_search
keywords), ``qsched_ckpt``, ``recalibrate``,
``scorer_options`` (JAQ metric options), ``progress``. Default calibration prompts:
``coco2017-calib:25`` (the tail of coco2017, held out from ``coco2017:N``), ``toy-calib:25`` for
the toy world; calibration prompts that overlap the run's evaluation prompts are refused.

Q-Sched changes the *scheduler*, not the weights. At denoising step ``i`` two scalars rescale
the inputs of the wrapped scheduler's own ``step()``::

    model_output = model_output * c_eps[i]     # the (quantized) denoiser's prediction
    sample       = sample       * c_x[i]       # the current latent x_t

and the scheduler's update then runs unchanged. With every coefficient 1.0 the result is
bit-identical to the wrapped scheduler (``x * 1.0 == x`` exactly in IEEE arithmetic; tested).
What each scheduler used by qbench then computes (diffusers 0.3x code, epsilon/flow prediction):

* flow-match Euler (FLUX.1-schnell, shift 1, no dynamic shifting), velocity ``v``:
  ``x_next = c_x*x_t + (sigma_{i+1} - sigma_i) * c_eps*v``
* Euler ancestral, epsilon, trailing (SDXL-Turbo):
  ``x0 = c_x*x - sigma_i*c_eps*eps``;
  ``x_next = c_x*x + c_eps*eps*(sigma_down - sigma_i) + sigma_up*z``
* TCD (PCM; trailing, eta = 0, deterministic), ``abar`` = alphas_cumprod:
  ``x0 = (c_x*x_t - sqrt(1-abar_t)*c_eps*eps) / sqrt(abar_t)``;
  ``x_s = sqrt(abar_s)*x0 + sqrt(1-abar_s)*c_eps*eps``  (s = the next timestep)
* LCM (LCM_Dreamshaper_v7), ``c_skip, c_out`` the boundary-condition scalings:
  ``x0 = (c_x*x_t - sqrt(1-abar_t)*c_eps*eps) / sqrt(abar_t)``;
  ``denoised = c_out*x0 + c_skip*c_x*x_t``;
  ``x_next = sqrt(abar_prev)*denoised + sqrt(1-abar_prev)*z``  (no noise at the last step);
  with v-prediction (the toy LCM) ``x0 = sqrt(abar_t)*c_x*x_t - sqrt(1-abar_t)*c_eps*v``.

Coefficient parameterisations (``n`` = number of inference steps, ``linspace`` = numpy's):

* ``ramp`` (the public code): 2 scalars ``(c_eps0, c_x0)``;
  ``c_eps = linspace(c_eps0, 1.0, n)``, ``c_x = linspace(c_x0, 1.0, n)``.
* ``start_end`` (the public code's shipped example): 4 scalars ``(c_eps0, c_eps1, c_x0, c_x1)``;
  ``c_eps = linspace(c_eps0, c_eps1, n)``, ``c_x = linspace(c_x0, c_x1, n)``.
* ``per_step``: ``2n`` scalars ``(c_eps[0..n-1], c_x[0..n-1])``, only valid for that ``n``.

The wrapper is a subclass of the wrapped scheduler's class made on the fly
(``QSchedLCMScheduler`` etc.) that overrides only ``step``; an existing scheduler is copied and
given that class, so the pipeline sees the scheduler's own ``timesteps``, ``set_timesteps``,
``config``, ``order``, ``init_noise_sigma``, ``scale_model_input``, ``sigmas``, ``isinstance``
checks and ``step``'s signature (pipelines inspect it for ``eta`` and ``generator``). The step
index is the wrapped scheduler's own ``step_index`` (it honours ``begin_index``); schedulers
without one use a call counter reset by ``set_timesteps``. Schedulers of order > 1 are refused.

Calibration (reference-free; the full-precision model never runs): images of the calibration
prompts (seed = run seed + prompt index) from the base-quantized model under candidate
coefficients are scored with JAQ (``qbench/metrics/jaq.py``); the mean over prompts is maximised
by the public code's grid or by qbench's own search (``qbench/calibration.py``). Every
(point, prompt) score is appended to ``<out_dir>/cache/qsched/<context hash>.jsonl`` as soon as
its batch is done, so a killed calibration resumes where it stopped.

Plain diffusers users: ``apply_qsched(pipe, "ckpt.json")`` wraps ``pipe.scheduler``; a wrapped
scheduler's ``save_pretrained(dir)`` writes its coefficients into ``scheduler_config.json`` and
``load_qsched_scheduler(dir)`` loads it back.
"""
from __future__ import annotations

import copy
import datetime as _dt
import functools
import hashlib
import inspect
import json
import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from qbench.api import Method
from qbench.errors import ConfigError, QBenchError
from qbench.fsutil import atomic_write_text

if TYPE_CHECKING:  # pragma: no cover
    from qbench.api import Prompt
    from qbench.calibration import SearchResult
    from qbench.models.base import LoadedModel

PARAMETERISATIONS = ("ramp", "start_end", "per_step")
CKPT_FORMAT = "qbench-qsched/1"
CONFIG_KEY = "qsched"
DEFAULT_BITS = "W4A8"  # the paper's main setting; used when --bits is not given
GRID_MAX_POINTS = 100_000  # refuse grids beyond this (start_end at 50 points per axis = 6.25 M)  # key of the coefficients inside a saved scheduler_config.json


# -- coefficients (pure) -------------------------------------------------------------------------
def linspace(start: float, stop: float, n: int) -> list[float]:
    """``numpy.linspace(start, stop, n)`` as Python floats (n = 1 gives ``[start]``)."""
    import numpy as np

    if n < 1:
        raise ConfigError(f"number of steps must be >= 1, got {n}")
    return [float(v) for v in np.linspace(float(start), float(stop), int(n))]


def n_params(parameterisation: str, steps: int | None = None) -> int:
    if parameterisation == "ramp":
        return 2
    if parameterisation == "start_end":
        return 4
    if parameterisation == "per_step":
        if not steps or steps < 1:
            raise ConfigError("the per_step parameterisation needs the number of steps")
        return 2 * int(steps)
    raise ConfigError(f"unknown Q-Sched parameterisation {parameterisation!r}; expected one of {', '.join(PARAMETERISATIONS)}")


def identity_params(parameterisation: str, steps: int | None = None) -> tuple[float, ...]:
    return (1.0,) * n_params(parameterisation, steps)


def resolve_coefficients(parameterisation: str, params: Sequence[float], n: int) -> tuple[list[float], list[float]]:
    """The per-step ``(c_eps, c_x)`` of a parameterisation for ``n`` steps (module docstring)."""
    p = [float(v) for v in params]
    want = n_params(parameterisation, n)
    if len(p) != want:
        raise ConfigError(f"{parameterisation} coefficients need {want} values for {n} steps, got {len(p)}")
    if not all(math.isfinite(v) for v in p):
        raise ConfigError(f"Q-Sched coefficients must be finite, got {p}")
    if parameterisation == "ramp":
        return linspace(p[0], 1.0, n), linspace(p[1], 1.0, n)
    if parameterisation == "start_end":
        return linspace(p[0], p[1], n), linspace(p[2], p[3], n)
    return p[:n], p[n:]


@dataclass(frozen=True)
class QSchedCoefficients:
    """A parameterisation and its scalars; ``steps`` is required for ``per_step``."""

    parameterisation: str
    params: tuple[float, ...]
    steps: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", tuple(float(v) for v in self.params))
        want = n_params(self.parameterisation, self.steps)
        if len(self.params) != want:
            raise ConfigError(f"{self.parameterisation} coefficients need {want} values, got {len(self.params)}")
        if not all(math.isfinite(v) for v in self.params):
            raise ConfigError(f"Q-Sched coefficients must be finite, got {list(self.params)}")

    @classmethod
    def identity(cls, parameterisation: str = "ramp", steps: int | None = None) -> QSchedCoefficients:
        return cls(parameterisation, identity_params(parameterisation, steps), steps)

    def resolve(self, n: int) -> tuple[list[float], list[float]]:
        if self.parameterisation == "per_step" and n != self.steps:
            raise QBenchError(f"per_step Q-Sched coefficients are for {self.steps} steps, the scheduler runs {n}")
        return resolve_coefficients(self.parameterisation, self.params, n)

    def to_dict(self) -> dict[str, Any]:
        return {"parameterisation": self.parameterisation, "params": list(self.params), "steps": self.steps}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> QSchedCoefficients:
        try:
            return cls(str(d["parameterisation"]), tuple(d["params"]), d.get("steps"))
        except (KeyError, TypeError, ValueError) as e:
            raise QBenchError(f"malformed Q-Sched coefficients {d!r}: {e}") from None

    @property
    def sha(self) -> str:
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


# -- the scheduler wrapper -----------------------------------------------------------------------
class QSchedSchedulerMixin:
    """Mixed in front of a diffusers scheduler class: rescales ``step``'s inputs, nothing else."""

    _qsched: QSchedCoefficients | None = None
    _qsched_calls: int = 0
    qsched_base_class: ClassVar[type]

    # coefficients -------------------------------------------------------------------------------
    @property
    def qsched_coefficients(self) -> QSchedCoefficients | None:
        return self._qsched

    def set_qsched(self, coeffs: QSchedCoefficients) -> None:
        """Set the coefficients (also written into ``config`` so ``save_pretrained`` keeps them)."""
        if not isinstance(coeffs, QSchedCoefficients):
            raise TypeError("set_qsched expects QSchedCoefficients")
        self._qsched = coeffs
        self.register_to_config(**{CONFIG_KEY: {**coeffs.to_dict(), "base_class": self.qsched_base_class.__name__}})

    def qsched_at(self, index: int) -> tuple[float, float]:
        """``(c_eps[index], c_x[index])`` for the current number of inference steps."""
        if self._qsched is None:
            raise QBenchError(f"{type(self).__name__} has no Q-Sched coefficients; call set_qsched first")
        n = getattr(self, "num_inference_steps", None)
        if n is None:
            n = len(self.timesteps)
        c_eps, c_x = self._qsched.resolve(int(n))
        if not 0 <= index < len(c_eps):
            raise QBenchError(f"Q-Sched step index {index} is outside the {len(c_eps)} scheduled steps")
        return c_eps[index], c_x[index]

    # the only behavioural change -------------------------------------------------------------------
    def _qsched_index(self, timestep: Any) -> int:
        if hasattr(self, "step_index") and hasattr(self, "_init_step_index"):
            if self.step_index is None:  # what the wrapped step() would do first; idempotent
                self._init_step_index(timestep)
            return int(self.step_index)
        return int(self._qsched_calls)

    def _qsched_step(self, model_output: Any, timestep: Any, sample: Any, *args: Any, **kwargs: Any) -> Any:
        c_eps, c_x = self.qsched_at(self._qsched_index(timestep))
        out = self.qsched_base_class.step(self, model_output * c_eps, timestep, sample * c_x, *args, **kwargs)
        self._qsched_calls += 1
        return out

    # loading a saved wrapped scheduler -----------------------------------------------------------
    @classmethod
    def from_config(cls, config: Any = None, return_unused_kwargs: bool = False, **kwargs: Any) -> Any:
        config = dict(config or {})
        q = config.pop(CONFIG_KEY, None)
        if q is None:
            raise QBenchError(f"{cls.__name__}: scheduler config has no {CONFIG_KEY!r} coefficients")
        out = super().from_config(config, return_unused_kwargs=return_unused_kwargs, **kwargs)  # type: ignore[misc]
        sched = out[0] if return_unused_kwargs else out
        sched.set_qsched(QSchedCoefficients.from_dict(q))
        return out


_CLASSES: dict[type, type] = {}


def qsched_scheduler_class(base_cls: type) -> type:
    """The Q-Sched subclass of a diffusers scheduler class (made once, then cached)."""
    if issubclass(base_cls, QSchedSchedulerMixin):
        return base_cls
    if base_cls in _CLASSES:
        return _CLASSES[base_cls]
    if not callable(getattr(base_cls, "step", None)) or not hasattr(base_cls, "set_timesteps"):
        raise ConfigError(f"{base_cls.__name__} is not a diffusers scheduler (no step/set_timesteps)")
    if getattr(base_cls, "order", 1) != 1:
        raise ConfigError(f"Q-Sched supports first-order schedulers only; {base_cls.__name__} has order {base_cls.order}")

    def step(self, model_output, timestep, sample, *args, **kwargs):
        return self._qsched_step(model_output, timestep, sample, *args, **kwargs)

    functools.update_wrapper(step, base_cls.step)  # same signature/doc: pipelines inspect step() for eta/generator
    step.__signature__ = inspect.signature(base_cls.step)  # type: ignore[attr-defined]
    members: dict[str, Any] = {"step": step, "qsched_base_class": base_cls, "__module__": __name__}
    if not (hasattr(base_cls, "step_index") and hasattr(base_cls, "_init_step_index")):
        # no own step index: count step() calls, reset by set_timesteps (signature kept: pipelines
        # inspect set_timesteps for `sigmas` / `timesteps`)
        def set_timesteps(self, *args, **kwargs):
            self._qsched_calls = 0
            return base_cls.set_timesteps(self, *args, **kwargs)

        functools.update_wrapper(set_timesteps, base_cls.set_timesteps)
        set_timesteps.__signature__ = inspect.signature(base_cls.set_timesteps)  # type: ignore[attr-defined]
        members["set_timesteps"] = set_timesteps
    name = f"QSched{base_cls.__name__}"
    cls = type(name, (QSchedSchedulerMixin, base_cls), members)
    cls.__qualname__ = name
    globals()[name] = cls  # importable (and picklable) by name
    _CLASSES[base_cls] = cls
    return cls


def __getattr__(name: str) -> Any:
    """Lazy module attributes for diffusers' loader: a pipeline saved with a wrapped scheduler
    names ``["qbench.methods.qsched", "QSched<Base>"]`` in ``model_index.json``; after
    ``import qbench.methods.qsched``, ``DiffusionPipeline.from_pretrained`` resolves the class here
    and checks it against ``SchedulerMixin`` (also looked up here)."""
    if name == "SchedulerMixin":
        from diffusers import SchedulerMixin

        return SchedulerMixin
    if name.startswith("QSched") and name.endswith("Scheduler") and name != "QSchedScheduler":
        import diffusers

        base = getattr(diffusers, name[len("QSched") :], None)
        if isinstance(base, type):
            return qsched_scheduler_class(base)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def wrap_scheduler(scheduler: Any, coeffs: QSchedCoefficients) -> Any:
    """A copy of ``scheduler`` whose ``step`` applies ``coeffs``; re-wrapping replaces them."""
    base = unwrap_scheduler(scheduler) if isinstance(scheduler, QSchedSchedulerMixin) else scheduler
    cls = qsched_scheduler_class(type(base))
    new = copy.deepcopy(base)
    new.__class__ = cls
    new._qsched_calls = 0
    new.set_qsched(coeffs)
    return new


def unwrap_scheduler(scheduler: Any) -> Any:
    """A plain copy of the wrapped scheduler (coefficients removed from its config)."""
    if not isinstance(scheduler, QSchedSchedulerMixin):
        return scheduler
    new = copy.deepcopy(scheduler)
    new.__class__ = scheduler.qsched_base_class
    cfg = dict(new._internal_dict)
    cfg.pop(CONFIG_KEY, None)
    from diffusers.configuration_utils import FrozenDict

    new._internal_dict = FrozenDict(cfg)
    for attr in ("_qsched", "_qsched_calls"):
        new.__dict__.pop(attr, None)
    return new


def load_qsched_scheduler(path: str, subfolder: str | None = None) -> Any:
    """Load a scheduler saved by a wrapped scheduler's ``save_pretrained`` (coefficients included)."""
    import diffusers

    cfg_file = os.path.join(path, subfolder or "", "scheduler_config.json")
    try:
        with open(cfg_file) as f:
            cfg = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise QBenchError(f"cannot read Q-Sched scheduler config {cfg_file}: {e}") from None
    q = cfg.get(CONFIG_KEY)
    if not isinstance(q, dict) or "base_class" not in q:
        raise QBenchError(f"{cfg_file} is not a Q-Sched scheduler (no {CONFIG_KEY!r}.base_class)")
    base_cls = getattr(diffusers, q["base_class"], None)
    if base_cls is None:
        raise QBenchError(f"{cfg_file}: unknown diffusers scheduler class {q['base_class']!r}")
    return qsched_scheduler_class(base_cls).from_pretrained(path, subfolder=subfolder)


# -- checkpoints -------------------------------------------------------------------------------
def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("qbench", "torch", "diffusers", "transformers", "torchao", "open_clip_torch"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def make_checkpoint(coeffs: QSchedCoefficients, *, steps: int, **provenance: Any) -> dict[str, Any]:
    """A checkpoint dict: the coefficients, their per-step values for ``steps`` and provenance."""
    c_eps, c_x = coeffs.resolve(steps)
    return {
        "format": CKPT_FORMAT,
        **coeffs.to_dict(),
        "steps": steps,
        "c_eps": c_eps,
        "c_x": c_x,
        **provenance,
        "versions": _versions(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def save_checkpoint(path: str, ckpt: dict[str, Any]) -> str:
    validate_checkpoint(ckpt, source=path)
    return atomic_write_text(path, json.dumps(ckpt, indent=1, sort_keys=True, default=str) + "\n")


def validate_checkpoint(ckpt: Any, source: str = "checkpoint") -> QSchedCoefficients:
    if not isinstance(ckpt, dict) or ckpt.get("format") != CKPT_FORMAT:
        raise QBenchError(f"{source} is not a Q-Sched checkpoint (expected format {CKPT_FORMAT!r})")
    steps = ckpt.get("steps")
    if not isinstance(steps, int) or steps < 1:
        raise QBenchError(f"{source}: 'steps' must be a positive integer, got {steps!r}")
    try:
        coeffs = QSchedCoefficients(str(ckpt.get("parameterisation")), tuple(ckpt.get("params") or ()), steps if ckpt.get("parameterisation") == "per_step" else None)
    except (QBenchError, TypeError, ValueError) as e:
        raise QBenchError(f"{source}: bad coefficients: {e}") from None
    c_eps, c_x = coeffs.resolve(steps)
    if ckpt.get("c_eps") is not None and [float(v) for v in ckpt["c_eps"]] != c_eps or ckpt.get("c_x") is not None and [float(v) for v in ckpt["c_x"]] != c_x:
        raise QBenchError(f"{source}: per-step c_eps/c_x disagree with the parameterisation's values")
    return coeffs


def load_checkpoint(path: str) -> dict[str, Any]:
    """Read and validate a checkpoint file (one-line QBenchError on any problem)."""
    try:
        with open(path) as f:
            ckpt = json.load(f)
    except FileNotFoundError:
        raise QBenchError(f"Q-Sched checkpoint {path} does not exist") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise QBenchError(f"Q-Sched checkpoint {path} is unreadable: {str(e).splitlines()[0]}") from None
    validate_checkpoint(ckpt, source=path)
    return ckpt


def checkpoint_coefficients(ckpt: dict[str, Any]) -> QSchedCoefficients:
    return validate_checkpoint(ckpt)


def apply_qsched(pipe: Any, ckpt: str | dict[str, Any] | QSchedCoefficients) -> Any:
    """Wrap ``pipe.scheduler`` with a checkpoint's coefficients (a path, a dict or coefficients).

    One call for plain diffusers users::

        pipe = FluxPipeline.from_pretrained(...); apply_qsched(pipe, "flux-schnell_W4A8.json")

    Refuses a checkpoint calibrated for another scheduler class. Returns ``pipe``.
    """
    if isinstance(ckpt, QSchedCoefficients):
        coeffs = ckpt
    else:
        data = load_checkpoint(ckpt) if isinstance(ckpt, (str, os.PathLike)) else ckpt
        coeffs = validate_checkpoint(data)
        want = data.get("scheduler_class")
        base = unwrap_scheduler(pipe.scheduler)
        if want and type(base).__name__ != want:
            raise QBenchError(f"Q-Sched checkpoint was calibrated with {want}, the pipeline uses {type(base).__name__}")
    pipe.scheduler = wrap_scheduler(pipe.scheduler, coeffs)
    return pipe


# -- the method ----------------------------------------------------------------------------------
def _qsched_options() -> tuple:
    from qbench.calibration import SEARCHES
    from qbench.options import Opt

    return (
        Opt("base", "str", "naive", "the quantization method under the scheduler"),
        Opt("base_options", "map", {}, "options of the base method"),
        Opt("parameterisation", "str", "ramp", "coefficient schedule", choices=PARAMETERISATIONS),
        Opt("search", "str", "own", "coefficient search", choices=SEARCHES),
        Opt("grid_lo", "float", 0.8, "lowest coefficient of the public grid", minimum=1e-9),
        Opt("grid_hi", "float", 1.2, "highest coefficient of the public grid", minimum=1e-9),
        Opt("grid_n", "int", 50, "grid points per axis", minimum=1),
        Opt("calib_batch_size", "int", 5, "images per calibration batch", minimum=1),
        Opt("max_images", "int", None, "own-search budget (default: the 2-scalar grid's images / 20 minus the identity baseline)", minimum=1),
        Opt("search_options", "map", {}, "own_search keyword arguments (coarse, rungs, keep, ...)"),
        Opt("qsched_ckpt", "str", None, "a Q-Sched checkpoint JSON to use instead of the stored one"),
        Opt("recalibrate", "bool", False, "calibrate even if a stored checkpoint exists"),
        Opt("scorer_options", "map", {}, "options of the JAQ scorer (metric options)"),
        Opt("progress", "bool", True, "show the calibration progress bar"),
    )


class QSched(Method):
    name = "qsched"
    description = "Q-Sched: JAQ-calibrated scheduler coefficients over a base quantizer (default naive)"
    uses_bits = True
    OPTIONS = _qsched_options()

    def __init__(self, cfg: Any, *, scorer: Callable[[list[Any], list[Prompt]], Sequence[float]] | None = None):
        """``scorer`` (images, prompts) -> per-image scores replaces JAQ (tests, other objectives).

        Without ``--bits`` the paper's setting, W4A8, is used (``describe()["bits"]`` says so)."""
        if cfg.bits is None:
            cfg = cfg.replace(bits=DEFAULT_BITS)
        super().__init__(cfg)
        from qbench.options import parse_options

        self.opts = parse_options(f"method {self.name!r}", self.OPTIONS, self.options)
        self._check_options()
        if self.opts["base"] == "qsched":
            raise ConfigError("qsched cannot be its own base method")
        from qbench.catalog import METHODS, MODELS

        if self.opts["search"] == "grid":
            steps = cfg.steps or (MODELS.get(cfg.model).steps if cfg.model in MODELS else None)
            n = n_params(self.opts["parameterisation"], steps)
            if self.opts["grid_n"] ** n > GRID_MAX_POINTS:
                raise ConfigError(f"a {self.opts['parameterisation']} grid has {self.opts['grid_n']}^{n} = {self.opts['grid_n'] ** n:,} points; use --search own or a smaller grid_n")
        base_cls = METHODS.get(self.opts["base"])
        quantizes = {} if base_cls.uses_bits else {"bits": None, "mode": None}  # e.g. base fp: scheduler only
        self.base: Method = base_cls(cfg.replace(method=self.opts["base"], method_options=dict(self.opts["base_options"]), **quantizes))
        self._scorer = scorer
        self._base_converted = False
        self.ckpt: dict[str, Any] | None = None
        self.ckpt_path: str | None = None
        self.ckpt_origin: str | None = None  # "option" | "stored" | "calibrated"
        self.search_result: SearchResult | None = None
        self.eval_overlap: int | None = None  # calibration prompts among the evaluation prompts
        self._model_name: str | None = None
        self._steps: int | None = None
        self._calib_prompts: list[Any] = []
        self._ctx: Any = None

    def _check_options(self) -> None:
        """Relations between options (their types are checked by ``OPTIONS``)."""
        o = self.opts
        if not (0 < o["grid_lo"] <= o["grid_hi"]):
            raise ConfigError(f"qsched grid range must satisfy 0 < grid_lo <= grid_hi, got [{o['grid_lo']}, {o['grid_hi']}]")

    @classmethod
    def run_calibration(cls, cfg: Any, *, show_progress: bool = True) -> dict[str, Any]:
        """Entry point of ``qbench calibrate`` (module-level :func:`run_calibration`)."""
        return run_calibration(cfg, show_progress=show_progress)

    # -- bookkeeping ------------------------------------------------------------------------------
    @property
    def mode(self) -> str:
        return self.base.mode

    CALIBRATION_PROMPTS = 25  # the public code's first 25 prompts

    @property
    def NEEDS_FP_CALIBRATION_IMAGES(self) -> bool:  # noqa: N802 - mirrors the base method's class flag
        return bool(getattr(self.base, "NEEDS_FP_CALIBRATION_IMAGES", False))

    @property
    def calibration_prompts_n(self) -> int:
        """25 (the public code's), or more if the base method needs more for its own calibration."""
        return max(self.CALIBRATION_PROMPTS, self.base.calibration_prompts_n)

    def calibration_cost(self, n_prompts: int) -> dict[str, Any] | None:
        """None when a checkpoint will be used; else the images the search generates (at most)."""
        if self._peek_checkpoint() is not None:
            return None
        from qbench.calibration import lattice

        from qbench.models.loader import get_spec

        steps = self.cfg.steps or get_spec(self.cfg.model).steps
        n = n_params(self.opts["parameterisation"], steps)
        axis = lattice(self.opts["grid_lo"], self.opts["grid_hi"], self.opts["grid_n"])
        grid_images = len(axis) ** n * n_prompts
        if self.opts["search"] == "grid":
            images = grid_images + n_prompts
        else:
            budget = self.opts["max_images"]
            if budget is None:
                budget = max(n_prompts, min(grid_images, len(axis) ** 2 * n_prompts) // 20 - n_prompts)
            images = budget + n_prompts
        return {"images": images, "what": f"Q-Sched {self.opts['search']} search over {n} coefficients (at most; cached scores are reused)"}

    def metric_needs(self) -> list[tuple[str, dict[str, Any]]]:
        """The JAQ scorer, when this run will calibrate (no usable checkpoint, no injected scorer)."""
        if self._scorer is not None or self._peek_checkpoint() is not None:
            return []
        from qbench.metrics.jaq import JAQMetric
        from qbench.options import parse_options

        options = {**self.cfg.metric_options, **dict(self.opts["scorer_options"])}
        from qbench.metrics.common import GLOBAL_OPTIONS

        known = {o.name for o in JAQMetric.OPTIONS + GLOBAL_OPTIONS}
        parse_options("qsched scorer (jaq)", JAQMetric.OPTIONS + GLOBAL_OPTIONS, {k: v for k, v in options.items() if k in known or k in self.opts["scorer_options"]})
        return [("jaq", options)]

    def describe(self) -> dict[str, Any]:
        coeffs = None
        ckpt = self.ckpt or self._peek_checkpoint()
        if ckpt is not None:
            c = validate_checkpoint(ckpt)
            coeffs = {**c.to_dict(), "sha": c.sha, "c_eps": ckpt["c_eps"], "c_x": ckpt["c_x"]}
        opts = {k: v for k, v in self.opts.items() if k not in ("progress", "qsched_ckpt", "recalibrate")}
        return {
            "method": self.name,
            "bits": self.cfg.bits,
            "mode": self.mode,
            "base": self.base.describe(),
            "coefficients": coeffs,  # None until a checkpoint is known
            "options": opts,
        }

    def report(self) -> dict[str, Any]:
        out: dict[str, Any] = {"base": self.base.report(), "checkpoint": self.ckpt_path, "checkpoint_origin": self.ckpt_origin, "calib_eval_overlap": self.eval_overlap}
        if self.ckpt is not None:
            cal = self.ckpt.get("calibration", {})
            out.update(
                coefficients={"parameterisation": self.ckpt["parameterisation"], "params": self.ckpt["params"], "c_eps": self.ckpt["c_eps"], "c_x": self.ckpt["c_x"]},
                calibrated_for={k: self.ckpt.get(k) for k in ("model", "bits", "base", "steps")},
                calibration={k: cal.get(k) for k in ("search", "jaq_before", "jaq_after", "chosen", "images", "images_generated", "wall_s", "prompts")},
            )
        return out

    @property
    def label(self) -> str:
        return f"qsched/{self.opts['base']} {self.cfg.bits} {self.mode}"

    # -- checkpoint lookup ------------------------------------------------------------------------
    def stored_checkpoint_path(self, model_name: str | None = None, steps: int | None = None) -> str:
        model_name = model_name or self.cfg.model
        steps = steps or self._steps or self.cfg.steps
        if steps is None:
            from qbench.catalog import MODELS

            steps = MODELS.get(model_name).steps
        stem = f"{model_name}_{self.cfg.bits}_{self.opts['base']}_{self.opts['parameterisation']}_{steps}steps"
        return os.path.join(self.cfg.out_dir, "qsched", stem.replace("/", "-") + ".json")

    def _peek_checkpoint(self) -> dict[str, Any] | None:
        if self.opts["qsched_ckpt"]:
            return load_checkpoint(self.opts["qsched_ckpt"])
        if self.opts["recalibrate"]:
            return None
        path = self.stored_checkpoint_path()
        return load_checkpoint(path) if os.path.exists(path) else None

    def _eval_overlap(self, ids: list[str], texts: list[str]) -> int:
        """How many calibration prompts (by id or text) are among the run's evaluation prompts."""
        from qbench.prompts import load_prompts

        from qbench.models.loader import get_spec

        ev = load_prompts(self.cfg.prompts or get_spec(self.cfg.model).default_prompts)
        ev_ids, ev_texts = {p.id for p in ev}, {p.text for p in ev}
        return sum(i in ev_ids or t in ev_texts for i, t in zip(ids, texts))

    def _check_ckpt_fits(self, ckpt: dict[str, Any], source: str) -> None:
        if ckpt.get("model") != self._model_name:
            raise QBenchError(f"Q-Sched checkpoint {source} was calibrated for model {ckpt.get('model')!r}, not {self._model_name!r}")
        if ckpt["steps"] != self._steps:
            raise QBenchError(f"Q-Sched checkpoint {source} was calibrated for {ckpt['steps']} steps, this run uses {self._steps}")
        cal_ids = list(ckpt.get("calibration", {}).get("prompt_ids") or [])
        self.eval_overlap = self._eval_overlap(cal_ids, [""] * len(cal_ids)) if cal_ids else None
        if self.eval_overlap:
            _say(f"qsched: warning: {self.eval_overlap} of the checkpoint's calibration prompts are among the evaluation prompts")

    # -- prepare -> calibrate -> convert ----------------------------------------------------------
    def prepare(self, model: LoadedModel) -> None:
        self._model_name = self.cfg.model
        self._steps = int(self.cfg.steps or model.spec.steps)
        self.base.prepare(model)

    def _convert_base(self, model: LoadedModel) -> None:
        if self._base_converted:
            return
        base_prompts = list(self._calib_prompts[: self.base.calibration_prompts_n])
        if self.base.calibration_prompts_n and len(base_prompts) < self.base.calibration_prompts_n:
            raise QBenchError(f"qsched: the base method needs {self.base.calibration_prompts_n} calibration prompts, got {len(base_prompts)}")
        self.base.calibrate(model, base_prompts, self._ctx)
        self.base.convert(model)
        self._base_converted = True

    def calibrate(self, model: LoadedModel, prompts: list[Prompt], ctx=None) -> None:
        if self._steps is None:
            self.prepare(model)
        self._calib_prompts = list(prompts)
        self._ctx = ctx
        self._convert_base(model)
        if self.opts["qsched_ckpt"]:
            path = self.opts["qsched_ckpt"]
            ckpt = load_checkpoint(path)
            self._check_ckpt_fits(ckpt, path)
            self.ckpt, self.ckpt_path, self.ckpt_origin = ckpt, path, "option"
            return
        path = self.stored_checkpoint_path()
        if os.path.exists(path) and not self.opts["recalibrate"]:
            ckpt = load_checkpoint(path)
            self._check_ckpt_fits(ckpt, path)
            if _jsonable(ckpt.get("base_describe")) == _jsonable(self.base.describe()):
                self.ckpt, self.ckpt_path, self.ckpt_origin = ckpt, path, "stored"
                _say(f"qsched: using stored checkpoint {path}")
                return
            _say(f"qsched: stored checkpoint {path} was calibrated with other base-method settings; recalibrating")
        if not prompts:
            raise QBenchError("qsched: no checkpoint and no calibration prompts")
        self.eval_overlap = 0  # the harness refuses calibration prompts that overlap the evaluation prompts
        if not self.opts["recalibrate"]:
            _say(f"qsched: no stored checkpoint for {self.cfg.model} {self.cfg.bits} base={self.opts['base']} ({path}); calibrating first")
        self.ckpt = self.calibrate_coefficients(model, prompts)
        self.ckpt_path = save_checkpoint(path, self.ckpt)
        copy_path = path[: -len(".json")] + f".{self.ckpt['calibration']['search']}.json"
        save_checkpoint(copy_path, self.ckpt)
        self.ckpt_origin = "calibrated"
        _say(f"qsched: wrote checkpoint {path}")

    def convert(self, model: LoadedModel) -> None:
        if self._steps is None:
            self.prepare(model)
        self._convert_base(model)
        if self.ckpt is None:
            ckpt = self._peek_checkpoint()
            if ckpt is None:
                raise QBenchError(f"qsched: no checkpoint for {self.cfg.model} {self.cfg.bits}; run `qbench calibrate --method qsched` first")
            self._check_ckpt_fits(ckpt, self.opts["qsched_ckpt"] or self.stored_checkpoint_path())
            self.ckpt = ckpt
            self.ckpt_path = self.opts["qsched_ckpt"] or self.stored_checkpoint_path()
            self.ckpt_origin = "option" if self.opts["qsched_ckpt"] else "stored"
        apply_qsched(model.pipe, self.ckpt)

    # -- calibration ------------------------------------------------------------------------------
    def _make_scorer(self, model: LoadedModel) -> tuple[Callable[[list[Any], list[Prompt]], Sequence[float]], dict[str, Any]]:
        """JAQ per image (``qbench.metrics.jaq.JAQ``; the run's metric options + ``scorer_options``)."""
        if self._scorer is not None:
            return self._scorer, {"scorer": getattr(self._scorer, "__qualname__", repr(self._scorer))}
        from qbench.api import MetricContext
        from qbench.metrics.jaq import JAQ

        ctx = MetricContext(
            device=model.device,
            options={**self.cfg.metric_options, **dict(self.opts["scorer_options"])},
            model_name=model.spec.name,
            model_family=model.spec.family,
            resolution=self.cfg.resolution or model.spec.resolution,
            prompt_set=self.calib_spec,
            cache_dir=os.path.join(self.cfg.out_dir, "cache"),
        )
        jaq = JAQ(ctx)

        def score(images: list[Any], prompts: list[Prompt]) -> Sequence[float]:
            return jaq.score(images, [p.text for p in prompts])

        return score, {"metric": "jaq", **jaq.describe()}

    def calibrate_coefficients(self, model: LoadedModel, prompts: list[Prompt]) -> dict[str, Any]:
        """Search the coefficients maximising mean JAQ over ``prompts``; returns a checkpoint dict."""
        from qbench.calibration import CachedObjective, lattice, run_search
        from qbench.config import stable_hash

        param, steps = self.opts["parameterisation"], int(self._steps)
        guidance = self.cfg.guidance if self.cfg.guidance is not None else model.spec.guidance
        resolution = self.cfg.resolution or model.spec.resolution
        score_fn, scorer_desc = self._make_scorer(model)
        base_sched = unwrap_scheduler(model.pipe.scheduler)
        model.pipe.scheduler = wrap_scheduler(base_sched, QSchedCoefficients.identity(param, steps))

        def compute(point: tuple[float, ...], idx: list[int]) -> list[float]:
            model.pipe.scheduler.set_qsched(QSchedCoefficients(param, point, steps if param == "per_step" else None))
            ps = [prompts[i] for i in idx]
            images = model.generate([p.text for p in ps], [self.cfg.seed + p.index for p in ps], steps=steps, guidance=guidance, resolution=resolution)
            return [float(v) for v in score_fn(images, ps)]

        context = {
            "model": self.cfg.model,
            "model_path": self.cfg.model_path,
            "source": model.source,
            "device": str(model.device),
            "dtype": str(model.dtype),
            "bits": self.cfg.bits,
            "base": self.base.describe(),
            "parameterisation": param,
            "steps": steps,
            "guidance": guidance,
            "resolution": resolution,
            "seed": self.cfg.seed,
            "scorer": scorer_desc,
        }
        cache = os.path.join(self.cfg.out_dir, "cache", "qsched", f"{self.cfg.model}-{stable_hash(context)}.jsonl")
        n = n_params(param, steps)
        axis = lattice(float(self.opts["grid_lo"]), float(self.opts["grid_hi"]), int(self.opts["grid_n"]))
        axes = [axis] * n
        grid_images = len(axis) ** n * len(prompts)
        search = self.opts["search"]
        search_opts = dict(self.opts["search_options"])
        if search == "own":
            ramp_grid_images = len(axis) ** 2 * len(prompts)  # the public code's grid, whatever the parameterisation
            # the identity baseline (len(prompts) images, unless the search passes through it) is
            # part of what a calibration costs, so it comes out of the 20x budget too
            default_budget = max(len(prompts), min(grid_images, ramp_grid_images) // 20 - len(prompts))
            search_opts.setdefault("max_images", self.opts["max_images"] if self.opts["max_images"] is not None else default_budget)
        elif search_opts:
            raise ConfigError("search_options apply to the own search only")
        total = grid_images if search == "grid" else search_opts["max_images"]

        t0 = time.perf_counter()
        try:
            with _progress(enabled=bool(self.opts["progress"]), total=total + len(prompts), what=f"qsched {search} search: images generated") as advance:
                obj = CachedObjective(compute, [p.id for p in prompts], batch_size=int(self.opts["calib_batch_size"]), cache_path=cache, context=context, on_images=advance)
                if obj.images_cached:
                    _say(f"qsched: resuming from {cache} ({obj.images_cached} cached scores are not regenerated)")
                identity = identity_params(param, steps)
                jaq_before = obj.mean(identity)
                result = run_search(search, obj, axes, **search_opts)
        finally:
            model.pipe.scheduler = base_sched  # also on Ctrl-C; convert() wraps it with the chosen coefficients
        wall = time.perf_counter() - t0
        self.search_result = result
        identity_on_path = any(t["point"] == list(identity) and t["n_prompts"] == len(prompts) for t in result.trajectory)
        if result.best_score > jaq_before:
            chosen, best, jaq_after = "search", result.best_point, result.best_score
        else:
            chosen, best, jaq_after = "identity", identity, jaq_before
        coeffs = QSchedCoefficients(param, best, steps if param == "per_step" else None)
        return make_checkpoint(
            coeffs,
            steps=steps,
            model=self.cfg.model,
            model_source=model.source,
            family=model.spec.family,
            scheduler_class=type(base_sched).__name__,
            guidance=guidance,
            resolution=resolution,
            bits=self.cfg.bits,
            base=self.opts["base"],
            base_describe=self.base.describe(),
            mode=self.mode,
            calibration={
                "prompts": self.calib_spec,
                "prompt_ids": [p.id for p in prompts],
                "seed": self.cfg.seed,
                "batch_size": int(self.opts["calib_batch_size"]),
                "search": search,
                "search_options": search_opts,
                "grid": {"lo": self.opts["grid_lo"], "hi": self.opts["grid_hi"], "n": self.opts["grid_n"], "images": grid_images},
                "scorer": scorer_desc,
                "jaq_before": jaq_before,
                "jaq_searched": result.best_score,
                "jaq_after": jaq_after,
                "chosen": chosen,
                "images": result.images + (0 if identity_on_path else len(prompts)),  # + the identity baseline
                "images_generated": obj.images_generated,
                "evaluations": result.evaluations,
                "stopped_by_budget": result.stopped_by_budget,
                "wall_s": wall,
                "cache": cache,
                "trajectory": result.trajectory,
            },
        )


# -- small helpers -------------------------------------------------------------------------------
def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def _console() -> Any:
    """The global rich console while a live display (the harness's progress) runs on it, so our
    bar nests in it (rich >= 14.1); otherwise stderr, keeping stdout clean for ``--json``."""
    from rich import get_console
    from rich.console import Console

    glob = get_console()
    return glob if getattr(glob, "_live_stack", None) else Console(stderr=True)


def _say(msg: str) -> None:
    _console().print(msg, highlight=False, soft_wrap=True)


class _progress:
    """A rich progress bar over generated images, or a no-op; ``with _progress(...) as advance``."""

    def __init__(self, *, enabled: bool, total: int, what: str):
        self.enabled, self.total, self.what = enabled, total, what
        self._p: Any = None

    def __enter__(self) -> Callable[[int], None]:
        if not self.enabled:
            return lambda n: None
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self._p = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=_console(), transient=False)
        self._p.start()
        task = self._p.add_task(f"{self.what} (images)", total=self.total)
        return lambda n: self._p.advance(task, n)

    def __exit__(self, *exc: object) -> None:
        if self._p is not None:
            self._p.stop()


def run_calibration(cfg: Any, *, show_progress: bool = True, search: str | None = None) -> dict[str, Any]:
    """``qbench calibrate --method qsched``: load the model, calibrate (always; a stored checkpoint
    for the same model/bits/base is overwritten), write the checkpoint, return a summary."""
    from qbench.models.loader import load_model

    if cfg.method != "qsched":
        raise ConfigError(f"this calibration is for --method qsched, got {cfg.method!r}")
    opts = dict(cfg.method_options)
    if opts.get("qsched_ckpt"):
        raise ConfigError("qbench calibrate writes a checkpoint; --qsched-ckpt is for qbench run")
    if search is not None:
        opts["search"] = search
    opts["recalibrate"] = True
    opts.setdefault("progress", show_progress)
    cfg = cfg.replace(method_options=opts)
    method = QSched(cfg)
    from qbench.preflight import calibration_prompts

    prompts = calibration_prompts(cfg, method)
    from qbench.api import MetricContext
    from qbench.catalog import METRICS
    from qbench.models.loader import get_spec

    family = get_spec(cfg.model).family
    for name, options in method.metric_needs():  # the JAQ scorer's weights, before the model loads
        METRICS.get(name).preflight(MetricContext(options=options, model_family=family, cache_dir=os.path.join(cfg.out_dir, "cache")), prompts)
    model = load_model(cfg.model, model_path=cfg.model_path, device=cfg.device, dtype=cfg.dtype)
    method.prepare(model)
    method.calibrate(model, prompts)
    assert method.ckpt is not None and method.ckpt_path is not None
    cal = method.ckpt["calibration"]
    _say(
        f"qsched: {cal['search']} search: JAQ {cal['jaq_before']:.4f} -> {cal['jaq_after']:.4f} ({cal['chosen']}); "
        f"{cal['images']} images needed, {cal['images_generated']} generated now, {cal['wall_s']:.1f} s"
    )
    return {
        "checkpoint": method.ckpt_path,
        "model": cfg.model,
        "bits": cfg.bits,
        "base": method.opts["base"],
        "parameterisation": method.ckpt["parameterisation"],
        "params": method.ckpt["params"],
        "c_eps": method.ckpt["c_eps"],
        "c_x": method.ckpt["c_x"],
        **{k: cal[k] for k in ("search", "prompts", "jaq_before", "jaq_searched", "jaq_after", "chosen", "images", "images_generated", "evaluations", "stopped_by_budget", "wall_s", "cache")},
        "trajectory_by_stage": trajectory_by_stage(cal["trajectory"]),
    }


def trajectory_by_stage(trajectory: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Pure: per consecutive stage, its evaluations, prompts, images so far and best full-set score."""
    out: list[dict[str, Any]] = []
    for t in trajectory:
        if not out or out[-1]["stage"] != t["stage"]:
            out.append({"stage": t["stage"], "evaluations": 0, "n_prompts": t["n_prompts"]})
        out[-1].update(evaluations=out[-1]["evaluations"] + 1, images=t["images"], best_score=t["best_score"], t=t["t"])
    return out


__all__ = [
    "PARAMETERISATIONS",
    "QSched",
    "QSchedCoefficients",
    "QSchedSchedulerMixin",
    "apply_qsched",
    "load_checkpoint",
    "load_qsched_scheduler",
    "make_checkpoint",
    "qsched_scheduler_class",
    "resolve_coefficients",
    "run_calibration",
    "save_checkpoint",
    "unwrap_scheduler",
    "wrap_scheduler",
]
