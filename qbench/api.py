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
    """Base class of quantization methods. ``fp`` is this class unchanged.

    ``OPTIONS`` declares the method's ``-O key=value`` options (:class:`qbench.options.Opt`);
    the constructor refuses unknown or ill-typed ones, and ``--bits`` / ``--mode`` for a method
    that does not quantize, with one :class:`~qbench.errors.ConfigError` line. ``self.options``
    holds the options given (coerced), without defaults.
    """

    name: ClassVar[str] = "base"
    description: ClassVar[str] = ""
    #: whether ``--bits`` / ``--mode`` apply (the method quantizes)
    uses_bits: ClassVar[bool] = False
    OPTIONS: ClassVar[tuple[Any, ...]] = ()
    #: calibration prompts taken from the model's calibration set when ``--calib-prompts`` is not
    #: given (0: the method does not calibrate); see :attr:`calibration_prompts_n`
    CALIBRATION_PROMPTS: ClassVar[int] = 0
    #: the harness generates full-precision images of the calibration prompts before ``prepare``
    #: (``ctx.fp_images()``), e.g. for fidelity-based sensitivity
    NEEDS_FP_CALIBRATION_IMAGES: ClassVar[bool] = False
    #: libraries (distribution names) whose versions change this method's output beyond the
    #: generation libraries (torch, diffusers, ...), e.g. ``("torchao",)``: part of its identity
    LIBRARIES: ClassVar[tuple[str, ...]] = ()

    def __init__(self, cfg: "RunConfig"):
        from qbench.errors import ConfigError
        from qbench.options import parse_options

        self.cfg = cfg
        if not self.uses_bits:
            if cfg.bits:
                raise ConfigError(f"method {self.name!r} does not quantize: --bits {cfg.bits} does not apply (try --method naive)")
            if cfg.mode:
                raise ConfigError(f"method {self.name!r} does not quantize: --mode {cfg.mode} does not apply")
        self.options: dict[str, Any] = parse_options(f"method {self.name!r}", self.OPTIONS, cfg.method_options, defaults=False)
        #: the calibration prompt spec the harness resolved (recorded with calibration artefacts)
        self.calib_spec: str | None = None

    # the three explicit steps -------------------------------------------------------------------
    def prepare(self, model: "LoadedModel") -> None:
        """Insert observers / wrappers. Default: nothing."""

    def calibrate(self, model: "LoadedModel", prompts: "list[Prompt]", ctx: Any = None) -> None:
        """Run calibration data through the prepared model. ``ctx`` is the run's
        :class:`qbench.calibctx.CalibrationContext` (None outside the harness: build one with
        ``CalibrationContext.standalone``). Default: nothing."""

    def convert(self, model: "LoadedModel") -> None:
        """Replace modules / schedulers by their final (quantized) form. Default: nothing."""

    # bookkeeping --------------------------------------------------------------------------------
    @property
    def mode(self) -> str:
        """How the numbers were made: ``"none"`` (no quantization), ``"simulate"`` or ``"kernel"``."""
        return "none"

    @property
    def calibration_prompts_n(self) -> int:
        """How many calibration prompts this configuration needs (0: it does not calibrate). The
        harness takes the first N of the model's calibration set (held out from its evaluation
        sets) unless ``--calib-prompts`` names others, and refuses overlap with the evaluation
        prompts for every method."""
        return self.CALIBRATION_PROMPTS

    def calibration_cost(self, n_prompts: int) -> dict[str, Any] | None:
        """What calibration will cost before it starts, e.g. ``{"images": 1250, "what": "..."}``
        (None: nothing to calibrate, e.g. a stored checkpoint will be used)."""
        n = self.calibration_prompts_n
        return {"images": n_prompts, "what": "calibration images"} if n else None

    def check_layers(self, denoiser: Any) -> None:
        """Check layer names / patterns of the options against the denoiser's modules before
        anything loads (``denoiser`` is built on the meta device: names and types, no weights).
        Raise ConfigError. Default: nothing to check."""

    def metric_needs(self) -> list[tuple[str, dict[str, Any]]]:
        """Metrics this method itself will run (e.g. a calibration scorer), as ``(name, metric
        options)``: the harness preflights them with the run's metrics. Default: none."""
        return []

    def describe(self) -> dict[str, Any]:
        """Everything that changes this method's images; stored with the run, keys the image cache."""
        return {"method": self.name, "bits": None, "mode": self.mode, "options": self.options}

    def code_modules(self) -> list[str]:
        """The modules whose code computes this method's output: the modules of its class and of
        its qbench base classes (:func:`qbench.identity.code_digest` adds what they import). A
        method that runs another (a base method) adds that one's."""
        return sorted({c.__module__ for c in type(self).__mro__ if c.__module__ not in ("builtins", "abc")})

    def option_files(self) -> dict[str, str]:
        """``{option: content sha256}`` of the options that name a local file or folder
        (declared ``Opt(..., path=True)``): part of every identity this method's output enters."""
        from qbench.identity import option_files

        return option_files(self.options, self.OPTIONS)

    def identity_describe(self) -> dict[str, Any]:
        """What a stored run of this method is keyed by (``qbench.phases.run_identity``):
        :meth:`describe` plus the content of the files its options name. A calibrating method
        whose calibrated values are not known yet returns what determines them instead."""
        return {**self.describe(), "files": self.option_files()}

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
    """Base class of image metrics.

    ``OPTIONS`` declares the metric's ``-M key=value`` options (:class:`qbench.options.Opt`);
    the harness refuses options no metric of the run declares. :meth:`preflight` runs before
    anything is loaded or generated and raises a one-line :class:`~qbench.errors.QBenchError`
    when the metric cannot run (inapplicable prompts, a missing weights file: which, and how to
    get it).
    """

    name: ClassVar[str] = "base"
    description: ClassVar[str] = ""
    higher_is_better: ClassVar[bool] = True
    #: needs the full-precision model's images of the same prompts and seeds
    needs_fp_reference: ClassVar[bool] = False
    OPTIONS: ClassVar[tuple[Any, ...]] = ()

    def __init__(self, ctx: MetricContext):
        self.ctx = ctx

    @classmethod
    def preflight(cls, ctx: MetricContext, prompts: "list[Prompt]") -> None:
        """Cheap checks before the run loads anything (no network is built). Default: none."""

    # sharded runs (qbench.dist): each rank updates with its contiguous block of images; the main
    # rank folds every rank's state, in rank order (= image order), into its own, then computes.
    # A metric without these is computed on the main rank alone from all images (same numbers).
    def begin_shard(self) -> None:
        """Called once before a sharded run's updates (e.g. to start recording features)."""

    def shard_state(self) -> Any:
        """This rank's accumulated state (picklable)."""
        raise NotImplementedError

    def merge_shards(self, states: list[Any]) -> None:
        """Replace this metric's state by the fold of ``states`` (every rank's, in rank order)."""
        raise NotImplementedError

    def update(self, images: "list[Image]", prompts: "list[Prompt]", references: "list[Image] | None" = None) -> None:
        raise NotImplementedError

    def compute(self) -> MetricValue | dict[str, MetricValue]:
        """One value, or several named values (e.g. ``toy-acc/shape``)."""
        raise NotImplementedError

    def reset(self) -> None:
        raise NotImplementedError
