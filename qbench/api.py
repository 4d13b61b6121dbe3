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

#: imported for :meth:`Method.bit_map` only (counting a converted model's bits, never changing an
#: image): not part of the code digest of what imports this module (:mod:`qbench.identity`)
NOT_NUMERIC_IMPORTS = ("qbench.quant.api",)


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


@dataclass(frozen=True)
class Capabilities:
    """What a method declares about itself, read by the harness, ``qbench export`` and the CLI
    instead of probing attributes. A method class sets ``CAPABILITIES``; an instance answers
    through :attr:`Method.capabilities` (a method over a base method, e.g. Q-Sched, derives its
    answers from the base instance's).

    * ``exportable``: its quantized layers are qbench's (:mod:`qbench.quant.linear`), which
      ``qbench export`` writes; False: export refuses it in one line, naming ``export_hint``
      (what to use instead).
    * ``runs_from_config``: it runs from a :class:`~qbench.config.RunConfig` alone (CLI, sweeps,
      regression cells); False: only with a pipeline handed to ``qbench.harness.run(cfg, pipe=)``.
    * ``latency_kind``: how its latency is made, when its mode does not say it (None: derived from
      ``mode``: full precision, simulate or kernel; see :func:`qbench.harness._latency_kind`).
    * ``fp_calibration_images``: the harness generates full-precision images of the calibration
      prompts before ``prepare`` (``ctx.fp_images()``), e.g. for fidelity-based sensitivity.
    * ``calibrate_command``: ``qbench calibrate`` runs its :meth:`Method.run_calibration` (a
      calibration on its own, writing a checkpoint or allocation) and prints the summary it returns.
    * ``reloads_components``: its ``convert`` re-loads the components it quantizes from the
      model's weights (:attr:`LoadedModel.where <qbench.models.base.LoadedModel.where>`) through
      their library's loader, which quantizes at load time (diffusers' quantization backends), and
      swaps them into the pipeline; the preflight refuses a model whose loaded denoiser is not
      what its folder holds (a LoRA fused after loading).

    The per-layer bits of a run come from :meth:`Method.bit_map` (default: qbench's quantized
    layers); a method whose layers are not qbench's overrides it.
    """

    exportable: bool = True
    export_hint: str = ""
    runs_from_config: bool = True
    latency_kind: str | None = None
    fp_calibration_images: bool = False
    calibrate_command: bool = False
    reloads_components: bool = False


class Method:
    """Base class of quantization methods. ``fp`` is this class unchanged.

    ``OPTIONS`` declares the method's ``-O key=value`` options (:class:`qbench.options.Opt`);
    the constructor refuses unknown or ill-typed ones, and ``--bits`` / ``--mode`` for a method
    that does not quantize, with one :class:`~qbench.errors.ConfigError` line. ``self.options``
    holds the options given (coerced), without defaults.

    Options compose along the class hierarchy: a subclass's ``OPTIONS`` lists only its own, and
    the class ends up with its bases' options followed by its own (a name declared twice is a
    ``TypeError`` when the class is defined). Each class reads its own with
    :meth:`own_options`, so a base (e.g. ``naive``, which builds its quantizer config from its
    options) never receives a subclass's (e.g. a smoothing ``alpha``).
    """

    name: ClassVar[str] = "base"
    description: ClassVar[str] = ""
    #: whether ``--bits`` / ``--mode`` apply (the method quantizes)
    uses_bits: ClassVar[bool] = False
    OPTIONS: ClassVar[tuple[Any, ...]] = ()
    #: the options this class itself declares (``OPTIONS`` holds its bases' too)
    OWN_OPTIONS: ClassVar[tuple[Any, ...]] = ()
    #: calibration prompts taken from the model's calibration set when ``--calib-prompts`` is not
    #: given (0: the method does not calibrate); see :attr:`calibration_prompts_n`
    CALIBRATION_PROMPTS: ClassVar[int] = 0
    #: libraries (distribution names) whose versions change this method's output beyond the
    #: generation libraries (torch, diffusers, ...), e.g. ``("torchao",)``: part of its identity
    LIBRARIES: ClassVar[tuple[str, ...]] = ()
    #: what the method declares about itself (:class:`Capabilities`)
    CAPABILITIES: ClassVar[Capabilities] = Capabilities()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = tuple(cls.__dict__.get("OPTIONS", ()))
        inherited: list[Any] = []
        owner: dict[str, str] = {}
        for base in reversed(cls.__mro__[1:]):  # the farthest base first
            for opt in base.__dict__.get("OWN_OPTIONS", ()) if issubclass(base, Method) else ():
                if opt.name not in owner:
                    owner[opt.name] = base.__name__
                    inherited.append(opt)
        for opt in own:
            if opt.name in owner:
                raise TypeError(f"{cls.__name__} declares option {opt.name!r}, which {owner[opt.name]} declares already")
        cls.OWN_OPTIONS = own
        cls.OPTIONS = tuple(inherited) + own

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
        #: why that spec is smaller than the method's published size (a tiny twin's smoke size), or None
        self.calib_note: str | None = None
        #: the published size :meth:`default_calibration_n` capped (None: not capped)
        self.calib_capped_from: int | None = None

    def own_options(self, owner: type | None = None) -> dict[str, Any]:
        """The options given (coerced, without defaults) that ``owner`` (a class in this method's
        hierarchy; default: the method's own class) declares itself in its ``OPTIONS``."""
        decl = (owner or type(self)).__dict__.get("OWN_OPTIONS", ())
        names = {o.name for o in decl}
        return {k: v for k, v in self.options.items() if k in names}

    @property
    def capabilities(self) -> Capabilities:
        """This configuration's :class:`Capabilities` (default: the class's ``CAPABILITIES``)."""
        return self.CAPABILITIES

    @classmethod
    def run_calibration(cls, cfg: "RunConfig", *, show_progress: bool = True) -> dict[str, Any]:
        """``qbench calibrate``: the method's calibration alone, its artefact written; returns a
        JSON-able summary. Only methods declaring ``calibrate_command`` implement it."""
        from qbench.errors import QBenchError

        raise QBenchError(f"method {cls.name!r} has no separate calibration step")

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
        return self.default_calibration_n(self.CALIBRATION_PROMPTS)

    @property
    def calib_label(self) -> str:
        """The resolved calibration spec with its note, for what a command prints."""
        return f"{self.calib_spec} ({self.calib_note})" if self.calib_note else str(self.calib_spec)

    def default_calibration_n(self, published: int) -> int:
        """``published`` (the method's own calibration set size), capped by the model's
        :attr:`~qbench.models.base.ModelSpec.calib_size` (the random-weight tiny twins: 2, a smoke
        test of the code path). Every method's default calibration size goes through here."""
        from qbench.catalog import MODELS
        from qbench.errors import QBenchError

        try:
            cap = MODELS.get(self.cfg.model).calib_size if published else None
        except QBenchError:  # no such model: the run's own check says so in one line
            cap = None
        if cap and cap < published:
            self.calib_capped_from = published  # what the plan line names (qbench.preflight)
        return min(published, cap) if cap else published

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

    def bit_map(self, model: "LoadedModel") -> dict[str, dict[str, Any]]:
        """Per-layer bits of the converted denoiser, ``{layer name: {"w", "a", "params"}}`` (16:
        floating point), for the run's effective bits. Default: qbench's quantized layers and the
        float layers of :attr:`quant_layer_types` (:func:`qbench.quant.api.bit_map`)."""
        from qbench.quant.api import bit_map

        return bit_map(model.denoiser, self.quant_layer_types)

    @property
    def quant_layer_types(self) -> tuple[str, ...]:
        """The layer types this configuration quantizes (``linear``, ``conv2d``); float layers of
        these types count at 16 bits in :meth:`bit_map`."""
        return ("linear",)

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
