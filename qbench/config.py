"""RunConfig: the one configuration shared by the CLI and the Python API.

It round-trips through JSON (``to_json`` / ``from_json``), and every field has a CLI flag of the
same name (``--batch-size`` for ``batch_size``). Unknown keys and bad values are refused with a
:class:`~qbench.errors.ConfigError`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from qbench.errors import ConfigError

DEFAULT_MODEL = "toy-flux"  # the trained toy world: offline, seconds per run, meaningful numbers
MODES = ("simulate", "kernel")


@dataclass
class RunConfig:
    model: str = DEFAULT_MODEL
    method: str = "fp"
    bits: str | None = None  # e.g. "W4A8"; None for methods without quantization
    mode: str = "simulate"  # "simulate" (fake quant) or "kernel" (real low-bit execution)
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
        if self.mode not in MODES:
            raise ConfigError(f"unknown mode {self.mode!r}; expected one of {', '.join(MODES)}")
        for name in ("batch_size", "latency_repeats"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.latency_warmup < 0:
            raise ConfigError(f"latency_warmup must be >= 0, got {self.latency_warmup}")
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"steps must be >= 1, got {self.steps}")
        if self.resolution is not None and (self.resolution < 8 or self.resolution % 8):
            raise ConfigError(f"resolution must be a positive multiple of 8, got {self.resolution}")
        if isinstance(self.metrics, str):
            self.metrics = [m.strip() for m in self.metrics.split(",") if m.strip()]
        if self.bits is not None:
            self.bits = self.bits.upper()

    # -- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown RunConfig field(s): {', '.join(unknown)}")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> "RunConfig":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"RunConfig JSON is malformed: {e}") from None
        return cls.from_dict(data)

    def replace(self, **changes: Any) -> "RunConfig":
        return dataclasses.replace(self, **changes)

    @property
    def db_path(self) -> str:
        import os

        return self.db or os.path.join(self.out_dir, "qbench.sqlite")


def stable_hash(obj: Any, n: int = 12) -> str:
    """Short sha256 of a JSON-serialisable object (sorted keys), for cache keys."""
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:n]
