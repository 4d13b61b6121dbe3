"""The protocols every plug-in follows: prompts, methods, metrics and their values.

* A **method** (``methods/<name>.py``) is built from the run's :class:`RunConfig` and changes a
  loaded model in three explicit steps, ``prepare -> calibrate -> convert`` (torchao's
  prepare/convert flow). ``describe()`` returns everything that makes its output differ from
  another configuration; it is stored with the run and keys the image cache.
* A **metric** (``qbench/metrics/<name>.py``) is a thin stateful class around pure functions:
  ``update(images, prompts, references) -> compute() -> MetricValue``; ``reset()``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:  # pragma: no cover
    from PIL.Image import Image

    from qbench.config import RunConfig
    from qbench.models.base import LoadedModel


@dataclass(frozen=True)
class Prompt:
    """One prompt with a stable id (e.g. ``coco2017/139/372891`` or ``file:3``).

    ``index`` is the prompt's position in its full set; the generation seed of a prompt is
    ``run seed + index``, so a prompt's image never depends on batch size or order.
    """

    id: str
    text: str
    index: int
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass
class MetricValue:
    value: float
    stderr: float | None = None
    n: int = 0
    higher_is_better: bool = True
    details: dict[str, Any] = field(default_factory=dict)  # model, protocol, weights source, ...
    #: per-prompt scores {prompt id: score} of per-image metrics; stored in their own table (not in
    #: ``to_dict``) so that ``qbench compare`` can pair two runs prompt by prompt
    per_image: dict[str, float] | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "stderr": self.stderr,
            "n": self.n,
            "higher_is_better": self.higher_is_better,
            "details": self.details,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "MetricValue":
        return cls(d["value"], d.get("stderr"), d.get("n", 0), d.get("higher_is_better", True), d.get("details", {}))

    @property
    def finite(self) -> bool:
        return self.value is not None and math.isfinite(self.value)


class Method:
    """Base class of quantization methods. ``fp`` is this class unchanged."""

    name: ClassVar[str] = "base"
    description: ClassVar[str] = ""
    #: whether ``--bits`` is required / accepted
    uses_bits: ClassVar[bool] = False

    def __init__(self, cfg: "RunConfig"):
        self.cfg = cfg
        self.options: dict[str, Any] = dict(cfg.method_options)

    # the three explicit steps -------------------------------------------------------------------
    def prepare(self, model: "LoadedModel") -> None:
        """Insert observers / wrappers. Default: nothing."""

    def calibrate(self, model: "LoadedModel", prompts: "list[Prompt]") -> None:
        """Run calibration data through the prepared model. Default: nothing."""

    def convert(self, model: "LoadedModel") -> None:
        """Replace modules / schedulers by their final (quantized) form. Default: nothing."""

    # bookkeeping --------------------------------------------------------------------------------
    @property
    def mode(self) -> str:
        """How the numbers were made: ``"none"`` (no quantization), ``"simulate"`` or ``"kernel"``."""
        return "none"

    @property
    def calibration_prompts_default(self) -> str | None:
        """Prompt-set spec used for calibration when ``cfg.calib_prompts`` is None (None: no calibration)."""
        return None

    def describe(self) -> dict[str, Any]:
        """Everything that changes this method's images; stored with the run, keys the image cache."""
        return {"method": self.name, "bits": None, "mode": self.mode, "options": self.options}

    def report(self) -> dict[str, Any]:
        """Facts learned while converting (layers quantized, kernel used, ...); stored with the run."""
        return {}

    @property
    def label(self) -> str:
        """Short label for tables, e.g. ``naive W4A8 kernel``."""
        d = self.describe()
        parts = [self.name] + [str(d[k]) for k in ("bits", "mode") if d.get(k) not in (None, "none")]
        return " ".join(parts)


@dataclass
class MetricContext:
    """What a metric may need besides images: device, options, the model and run being scored."""

    device: str = "cpu"
    options: dict[str, Any] = field(default_factory=dict)  # RunConfig.metric_options
    model_name: str | None = None
    model_family: str | None = None  # e.g. "toy" selects the toy world's CLIP by default
    resolution: int | None = None
    prompt_set: str | None = None
    cache_dir: str = "reports/cache"


class Metric:
    name: ClassVar[str] = "base"
    description: ClassVar[str] = ""
    higher_is_better: ClassVar[bool] = True
    #: needs the full-precision model's images of the same prompts and seeds
    needs_fp_reference: ClassVar[bool] = False

    def __init__(self, ctx: MetricContext):
        self.ctx = ctx

    def update(self, images: "list[Image]", prompts: "list[Prompt]", references: "list[Image] | None" = None) -> None:
        raise NotImplementedError

    def compute(self) -> MetricValue | dict[str, MetricValue]:
        """One value, or several named values (e.g. ``toy-acc/shape``)."""
        raise NotImplementedError

    def reset(self) -> None:
        raise NotImplementedError
