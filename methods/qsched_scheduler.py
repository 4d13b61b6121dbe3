"""Q-Sched's scheduler side, for plain diffusers users: the scheduler wrapper and ``apply_qsched``
(coefficients and checkpoint files: :mod:`qbench.methods.qsched_coeffs`, re-exported here) (Frumkin & Marculescu, arXiv 2509.01624).

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
import functools
import inspect
import json
import os
from typing import Any, ClassVar

from qbench.methods.qsched_coeffs import (  # noqa: F401  (re-exported: coefficients and checkpoint files)
    CKPT_FORMAT,
    PARAMETERISATIONS,
    QSchedCoefficients,
    checkpoint_coefficients,
    identity_params,
    linspace,
    load_checkpoint,
    make_checkpoint,
    n_params,
    resolve_coefficients,
    save_checkpoint,
    validate_checkpoint,
)

from qbench.errors import ConfigError, QBenchError

CONFIG_KEY = "qsched"  # key of the coefficients inside a saved scheduler_config.json

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
