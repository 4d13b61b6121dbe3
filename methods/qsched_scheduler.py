"""Q-Sched's scheduler side, for plain diffusers users: coefficients, the scheduler wrapper,
checkpoints (Frumkin & Marculescu, arXiv 2509.01624).

    from qbench.methods.qsched_scheduler import apply_qsched
    pipe = FluxPipeline.from_pretrained(...); apply_qsched(pipe, "flux-schnell_W4A8.json")

This module imports no part of the qbench harness at module level (numpy and diffusers only
when used). ``qbench.methods.qsched`` (the Method) re-exports everything here, and pipelines
saved before this split (``["qbench.methods.qsched", "QSched<Base>"]`` in ``model_index.json``)
load through its lazy ``__getattr__``; new saves name this module.

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

A wrapped scheduler's ``save_pretrained(dir)`` writes its coefficients into
``scheduler_config.json`` and ``load_qsched_scheduler(dir)`` loads it back.
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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from qbench.errors import ConfigError, QBenchError
from qbench.fsutil import atomic_write_text

PARAMETERISATIONS = ("ramp", "start_end", "per_step")
CKPT_FORMAT = "qbench-qsched/1"
CONFIG_KEY = "qsched"  # key of the coefficients inside a saved scheduler_config.json

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
    names ``[<this module>, "QSched<Base>"]`` in ``model_index.json`` (``qbench.methods.qsched``
    before the split, which delegates here); ``DiffusionPipeline.from_pretrained`` imports the
    module, resolves the class here and checks it against ``SchedulerMixin`` (also looked up here)."""
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
def make_checkpoint(coeffs: QSchedCoefficients, *, steps: int, provenance: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    """A checkpoint dict: the coefficients, their per-step values for ``steps``, ``fields`` (what
    it was calibrated for) and ``provenance`` (default: the code version and the date;
    the method passes its calibration context's provenance)."""
    c_eps, c_x = coeffs.resolve(steps)
    if provenance is None:
        from qbench.measure import qbench_version

        provenance = {"qbench": qbench_version(), "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    return {"format": CKPT_FORMAT, **coeffs.to_dict(), "steps": steps, "c_eps": c_eps, "c_x": c_x, **fields, "provenance": provenance}


def save_checkpoint(path: str, ckpt: dict[str, Any]) -> str:
    validate_checkpoint(ckpt, source=path)
    return atomic_write_text(path, json.dumps(ckpt, indent=1, sort_keys=True, default=str) + "\n")


def validate_checkpoint(ckpt: Any, source: str = "checkpoint") -> QSchedCoefficients:
    """The coefficients of a checkpoint dict, after checking every field the method reads:
    ``format``; ``steps`` an integer in [1, :data:`qbench.config.MAX_STEPS`] (a bool is not one);
    ``parameterisation`` and ``params`` (finite numbers, as many as it takes); ``c_eps`` and
    ``c_x`` lists of ``steps`` numbers equal to the parameterisation's values; ``calibration`` a
    mapping when present. Raises :class:`QBenchError`, one line naming ``source``."""
    from qbench.config import MAX_STEPS, show_value

    if not isinstance(ckpt, dict) or ckpt.get("format") != CKPT_FORMAT:
        raise QBenchError(f"{source} is not a Q-Sched checkpoint (expected format {CKPT_FORMAT!r})")
    steps = ckpt.get("steps")
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
        raise QBenchError(f"{source}: 'steps' must be an integer from 1 to {MAX_STEPS}, got {show_value(steps)}")
    par, params = ckpt.get("parameterisation"), ckpt.get("params")
    if par not in PARAMETERISATIONS:
        raise QBenchError(f"{source}: 'parameterisation' must be one of {', '.join(PARAMETERISATIONS)}, got {show_value(par)}")
    if not isinstance(params, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in params):
        raise QBenchError(f"{source}: 'params' must be a list of numbers, got {show_value(params)}")
    try:
        coeffs = QSchedCoefficients(par, tuple(params), steps if par == "per_step" else None)
    except (QBenchError, TypeError, ValueError) as e:
        raise QBenchError(f"{source}: bad coefficients: {e}") from None
    c_eps, c_x = coeffs.resolve(steps)
    for key, want in (("c_eps", c_eps), ("c_x", c_x)):
        got = ckpt.get(key)
        if not isinstance(got, list) or len(got) != steps or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in got):
            raise QBenchError(f"{source}: '{key}' must be a list of {steps} numbers (one per step), got {show_value(got)}")
        if [float(v) for v in got] != want:
            raise QBenchError(f"{source}: per-step {key} disagrees with the parameterisation's values")
    if "calibration" in ckpt and not isinstance(ckpt["calibration"], dict):
        raise QBenchError(f"{source}: 'calibration' must be a mapping, got {show_value(ckpt['calibration'])}")
    return coeffs


def load_checkpoint(path: str) -> dict[str, Any]:
    """Read and validate a checkpoint file: a regular file (a FIFO is refused, never waited on),
    at most 16 MiB of JSON nested at most 64 deep (:func:`qbench.fsutil.read_json_file`);
    one-line QBenchError on any problem."""
    from qbench.fsutil import read_json_file

    ckpt = read_json_file(path, "Q-Sched checkpoint", max_bytes=16 << 20)
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


__all__ = [
    "CKPT_FORMAT", "CONFIG_KEY", "PARAMETERISATIONS", "QSchedCoefficients", "QSchedSchedulerMixin",
    "apply_qsched", "checkpoint_coefficients", "identity_params", "linspace", "load_checkpoint",
    "load_qsched_scheduler", "make_checkpoint", "n_params", "qsched_scheduler_class",
    "resolve_coefficients", "save_checkpoint", "unwrap_scheduler", "validate_checkpoint",
    "wrap_scheduler",
]
