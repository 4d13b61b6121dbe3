"""RunConfig: the one configuration shared by the CLI and the Python API.

It round-trips through JSON (``to_json`` / ``from_json``), and every field has a CLI flag of the
same name (``--batch-size`` for ``batch_size``). Unknown keys and bad values are refused with a
:class:`~qbench.errors.ConfigError`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import reprlib
from dataclasses import dataclass, field
from typing import Any

from qbench.errors import ConfigError

DEFAULT_MODEL = "toy-flux"  # the trained toy world: offline, seconds per run, meaningful numbers
MODES = ("simulate", "kernel")
DTYPES = ("float32", "float16", "bfloat16")
MAX_STEPS = 1000  # denoising steps: few-step models use 1-8, their schedulers at most ~50
MAX_SEED = 2**62  # torch generators take 64-bit seeds; prompt i uses seed + i
_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


@dataclass
class RunConfig:
    model: str = DEFAULT_MODEL
    method: str = "fp"
    bits: str | None = None  # e.g. "W4A8"; None for methods without quantization
    mode: str | None = None  # "simulate" (fake quant, the default of quantizing methods) or "kernel"
    prompts: str | None = None  # a prompt-set spec ("coco2017:8") or a file path; None: the model's default set
    calib_prompts: str | None = None  # prompts for methods that calibrate (None: the method's default)
    seed: int = 42  # prompt i of a set is generated with seed + its stable index
    batch_size: int = 4
    steps: int | None = None  # None: the model's default
    guidance: float | None = None
    resolution: int | None = None
    metrics: list[str] | None = None  # None: the model's default metric list
    model_path: str | None = None  # a local diffusers folder instead of the hub id
    device: str = "auto"  # "auto" -> cuda if available else cpu
    dtype: str | None = None  # None: the model's native dtype
    out_dir: str = "reports"
    db: str | None = None  # None: <out_dir>/qbench.sqlite
    latency_warmup: int = 1
    latency_repeats: int = 3
    method_options: dict[str, Any] = field(default_factory=dict)
    metric_options: dict[str, Any] = field(default_factory=dict)
    tag: str | None = None  # free text label shown in tables

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Types and ranges of every field. Raises :class:`ConfigError` (one problem) or
        :class:`~qbench.errors.ManyErrors` (all the problems found, one line each)."""
        errors: list[str] = []
        bad = errors.append
        for name in _STR_FIELDS:
            v = getattr(self, name)
            if v is not None and not isinstance(v, str):
                bad(f"{name} must be a string, got {show_value(v)}")
        for name in _STR_FIELDS:
            v = getattr(self, name)
            if isinstance(v, str) and (len(v) > MAX_STR or "\0" in v):
                bad(f"{name} must be at most {MAX_STR} characters without NUL bytes, got {show_value(v)}")
            elif name == "tag" and isinstance(v, str) and any(ord(c) < 32 or 127 <= ord(c) < 160 for c in v):
                bad(f"tag must be printable text (no control characters, escape sequences or line breaks), got {show_value(v)}")
        for name in ("model", "method", "out_dir", "device"):
            if isinstance(getattr(self, name), str) and not getattr(self, name):
                bad(f"{name} must not be empty")
        for name, lo in _INT_FIELDS.items():
            v = getattr(self, name)
            if v is None and name in _OPTIONAL:
                continue
            if isinstance(v, bool) or not isinstance(v, int):
                bad(f"{name} must be an integer, got {show_value(v)}")
            elif v < lo:
                bad(f"{name} must be >= {lo}, got {v}")
            elif name in _INT_MAX and v > _INT_MAX[name]:
                bad(f"{name} must be <= {_INT_MAX[name]}, got {show_value(v)} ({_INT_WHY[name]})")
            elif name == "seed" and v >= MAX_SEED:
                bad(f"seed must be < 2**62, got {v}")
            elif name == "resolution" and v % 8:
                bad(f"resolution must be a positive multiple of 8, got {v}")
        if self.guidance is not None:
            if isinstance(self.guidance, bool) or not isinstance(self.guidance, (int, float)):
                bad(f"guidance must be a number, got {show_value(self.guidance)}")
            elif not math.isfinite(self.guidance) or self.guidance < 0:
                bad(f"guidance must be a finite number >= 0, got {self.guidance}")
            else:
                self.guidance = float(self.guidance)
        if isinstance(self.mode, str) and self.mode not in MODES:
            bad(f"unknown mode {self.mode!r}; expected one of {', '.join(MODES)}")
        if isinstance(self.dtype, str) and self.dtype not in DTYPES:
            bad(f"unsupported dtype {self.dtype!r}; expected one of {', '.join(DTYPES)}")
        if isinstance(self.device, str) and not _DEVICE_RE.match(self.device):
            bad(f"unknown device {self.device!r}; expected auto, cpu, cuda, cuda:N or mps")
        if isinstance(self.metrics, str):
            self.metrics = [m.strip() for m in self.metrics.split(",") if m.strip()]
        if self.metrics is not None and (not isinstance(self.metrics, list) or not all(isinstance(m, str) for m in self.metrics)):
            bad(f"metrics must be a list of names or a comma-separated string, got {show_value(self.metrics)}")
        for name in ("method_options", "metric_options"):
            v = getattr(self, name)
            if not isinstance(v, dict) or not all(isinstance(k, str) for k in v):
                bad(f"{name} must be a mapping of option names to values, got {show_value(v)}")
        if isinstance(self.bits, str):
            self.bits = self.bits.strip().upper()
        if len(errors) == 1:
            raise ConfigError(errors[0])
        if errors:
            from qbench.errors import ManyErrors

            raise ManyErrors([ConfigError(e) for e in errors])

    # -- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, validate: bool = True) -> "RunConfig":
        """A RunConfig from a mapping of fields (unknown fields refused). ``validate=False`` defers
        the field checks to a later ``validate()`` (the CLI's preflight reports them together
        with every other problem)."""
        if not isinstance(data, dict):
            raise ConfigError(f"a RunConfig must be a JSON object of fields, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown RunConfig field(s): {', '.join(unknown)}")
        if validate:
            return cls(**data)
        obj = cls.__new__(cls)
        for f in dataclasses.fields(cls):
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            setattr(obj, f.name, data.get(f.name, default))
        return obj

    @classmethod
    def from_json(cls, text: str) -> "RunConfig":
        from qbench.fsutil import parse_json

        return cls.from_dict(parse_json(text, "RunConfig JSON"))

    def to_cli(self) -> str:
        """The ``qbench run`` command of this configuration (fields left at their defaults out)."""
        import shlex

        parts = ["qbench", "run"]
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            if v == default or v is None:
                continue
            flag = "--" + f.name.replace("_", "-")
            if f.name in ("method_options", "metric_options"):
                short = "-O" if f.name == "method_options" else "-M"
                for k, x in v.items():
                    parts += [short, f"{k}={json.dumps(x) if not isinstance(x, str) else x}"]
            elif f.name == "metrics":
                parts += [flag, ",".join(v)]
            else:
                parts += [flag, str(v)]
        return " ".join(shlex.quote(p) for p in parts)

    def replace(self, **changes: Any) -> "RunConfig":
        return dataclasses.replace(self, **changes)

    @property
    def db_path(self) -> str:
        import os

        return self.db or os.path.join(self.out_dir, "qbench.sqlite")


_STR_FIELDS = ("model", "method", "bits", "mode", "prompts", "calib_prompts", "model_path", "device", "dtype", "out_dir", "db", "tag")
_INT_FIELDS = {"seed": 0, "batch_size": 1, "steps": 1, "resolution": 8, "latency_warmup": 0, "latency_repeats": 1}
_OPTIONAL = ("steps", "resolution")
#: upper bounds: far above any real use, low enough that a typo is refused before a run is stored
#: (``--resolution 100000`` once asked for 40 GB after the run row was written; issue 23 §3)
_INT_MAX = {"batch_size": 4096, "steps": MAX_STEPS, "resolution": 4096, "latency_warmup": 1000, "latency_repeats": 1000}
_INT_WHY = {"batch_size": "images per forward pass", "steps": "denoising steps", "resolution": "pixels per side; 16.7 megapixels",
            "latency_warmup": "untimed warm-up generations", "latency_repeats": "timed generations; the median of a few is enough"}
#: longest string field (a path, a tag, a prompt spec)
MAX_STR = 4096
_REPR = reprlib.Repr()
_REPR.maxstring, _REPR.maxother, _REPR.maxlevel = 50, 50, 3


def show_value(v: Any) -> str:
    """A short, bounded rendering of a bad value for an error line: never serialises the whole
    value (a YAML of nested aliases expands to gigabytes; a 200,000-deep list overflows json)."""
    text = _REPR.repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def stable_hash(obj: Any, n: int = 12) -> str:
    """Short sha256 of a JSON-serialisable object (sorted keys), for cache keys."""
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:n]
