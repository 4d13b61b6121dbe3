"""Q-Sched's coefficients and checkpoint files (Frumkin & Marculescu, arXiv 2509.01624): pure
functions and a dataclass, no diffusers, no harness. :mod:`qbench.methods.qsched_scheduler`
(the scheduler wrapper) and :mod:`qbench.methods.qsched` (the method) re-export everything here.

Coefficient parameterisations (``n`` = number of inference steps, ``linspace`` = numpy's):

* ``ramp`` (the public code): 2 scalars ``(c_eps0, c_x0)``;
  ``c_eps = linspace(c_eps0, 1.0, n)``, ``c_x = linspace(c_x0, 1.0, n)``.
* ``start_end`` (the public code's shipped example): 4 scalars ``(c_eps0, c_eps1, c_x0, c_x1)``;
  ``c_eps = linspace(c_eps0, c_eps1, n)``, ``c_x = linspace(c_x0, c_x1, n)``.
* ``per_step``: ``2n`` scalars ``(c_eps[0..n-1], c_x[0..n-1])``, only valid for that ``n``.

A checkpoint is a JSON object: ``format``, the parameterisation and its ``params``, ``steps``, the
resolved per-step ``c_eps`` / ``c_x`` (checked against the parameterisation), what it was
calibrated for, its calibration record and identity, and provenance.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from qbench.errors import ConfigError, QBenchError
from qbench.fsutil import atomic_write_text

PARAMETERISATIONS = ("ramp", "start_end", "per_step")
CKPT_FORMAT = "qbench-qsched/1"

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
