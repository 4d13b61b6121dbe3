"""Q-Sched: quantization-aware scheduling (Frumkin & Marculescu, arXiv 2509.01624), the method.

    qbench calibrate --method qsched --model M --bits W4A8 [-O search=grid|own] [--calib-prompts SPEC]
    qbench run --method qsched --model M [--bits W4A8] [-O qsched_ckpt=FILE]
``run`` uses ``<out_dir>/qsched/<model>_<bits>_<base>_<param>_<steps>steps_<key>.json`` (``key``:
its calibration's identity, :func:`calibration_identity`) if it exists, else calibrates first and
writes it (through the calibration context's artefact store, root ``<out_dir>/qsched``);
``calibrate`` always calibrates (and also writes a ``.<search>.json`` copy). Method options
(``-O key=value``): ``base`` (naive), ``base_options`` ({}), ``parameterisation``
(ramp | start_end | per_step), ``search`` (own | grid), ``grid_lo``/``grid_hi``/``grid_n``
(0.8/1.2/50), ``calib_batch_size`` (5), ``max_images`` (own search budget; default = the 2-scalar
grid's images / 20 minus the identity baseline's images), ``search_options`` (own_search
keywords), ``qsched_ckpt``, ``recalibrate``,
``scorer_options`` (JAQ metric options), ``progress``. Default calibration prompts:
``coco2017-calib:25`` (the tail of coco2017, held out from ``coco2017:N``), ``toy-calib:25`` for
the toy world; calibration prompts that overlap the run's evaluation prompts are refused.

Three files, by audience:

* ``qsched_scheduler.py`` — what a plain diffusers user needs: the coefficients and their
  parameterisations, the scheduler wrapper (the formulas per scheduler), ``apply_qsched``,
  ``load_qsched_scheduler`` and checkpoint files;
* this file — the :class:`QSched` method (options, checkpoint lookup, prepare -> calibrate ->
  convert); it re-exports the other two, so ``from qbench.methods.qsched import ...`` keeps
  working, and pipelines saved with ``["qbench.methods.qsched", "QSched<Base>"]`` in their
  ``model_index.json`` still load (the lazy module ``__getattr__`` below);
* ``qsched_search.py`` — the coefficient search on the calibration context (JAQ scorer, resumable
  score cache, progress, generation) and ``qbench calibrate``.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from qbench.methods import qsched_scheduler as _sched
from qbench.methods.qsched_scheduler import (  # noqa: F401 (re-exported: the public API before the split)
    _CLASSES, CKPT_FORMAT, CONFIG_KEY, PARAMETERISATIONS, QSchedCoefficients, QSchedSchedulerMixin, apply_qsched,
    checkpoint_coefficients, identity_params, linspace, load_checkpoint, load_qsched_scheduler, make_checkpoint, n_params,
    qsched_scheduler_class, resolve_coefficients, save_checkpoint, unwrap_scheduler, validate_checkpoint, wrap_scheduler,
)
from qbench.methods.qsched_search import (  # noqa: F401 (re-exported)
    calibration_identity, eval_overlap, own_budget, run_calibration, trajectory_by_stage,
)

from qbench.api import Capabilities, Method
from qbench.errors import ConfigError, QBenchError

if TYPE_CHECKING:  # pragma: no cover
    from qbench.api import Prompt
    from qbench.calibctx import CalibrationContext
    from qbench.calibration import SearchResult
    from qbench.models.base import LoadedModel

DEFAULT_BITS = "W4A8"  # the paper's main setting; used when --bits is not given
GRID_MAX_POINTS = 100_000  # refuse grids beyond this (start_end at 50 points per axis = 6.25 M)


def __getattr__(name: str) -> Any:
    """``QSched<Base>Scheduler`` and ``SchedulerMixin`` from ``qsched_scheduler``: diffusers'
    loader resolves ``["qbench.methods.qsched", "QSched<Base>"]`` of a pipeline saved before the
    split here (see ``qsched_scheduler.__getattr__``)."""
    return _sched.__getattr__(name)


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
        Opt("qsched_ckpt", "str", None, "a Q-Sched checkpoint JSON to use instead of the stored one", path=True),
        Opt("recalibrate", "bool", False, "calibrate even if a stored checkpoint exists"),
        Opt("scorer_options", "map", {}, "options of the JAQ scorer (metric options)"),
        Opt("progress", "bool", True, "show the calibration progress bar"),
    )


class QSched(Method):
    name = "qsched"
    description = "Q-Sched: JAQ-calibrated scheduler coefficients over a base quantizer (default naive)"
    uses_bits = True
    OPTIONS = _qsched_options()
    CAPABILITIES = Capabilities(calibrate_command=True)

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
                raise ConfigError(f"a {self.opts['parameterisation']} grid has {self.opts['grid_n']}^{n} = {self.opts['grid_n'] ** n:,} points; use -O search=own or a smaller grid_n")
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
        self._calib_identity: Any = None

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
    def capabilities(self) -> Capabilities:
        """The base method's export, latency and calibration-image answers; its own calibrate step."""
        b = self.base.capabilities
        return Capabilities(exportable=b.exportable, export_hint=b.export_hint, latency_kind=b.latency_kind,
                            fp_calibration_images=b.fp_calibration_images, calibrate_command=True)

    def bit_map(self, model: Any) -> dict[str, dict[str, Any]]:
        """The base method's per-layer bits (the scheduler changes no layer)."""
        return self.base.bit_map(model)

    @property
    def calibration_prompts_n(self) -> int:
        """25 (public code; a tiny twin's smoke size: default_calibration_n), or the base's if more."""
        return max(self.default_calibration_n(self.CALIBRATION_PROMPTS), self.base.calibration_prompts_n)

    def calibration_cost(self, n_prompts: int) -> dict[str, Any] | None:
        """None when a checkpoint will be used; else the images the search generates (at most)."""
        if self._peek_checkpoint() is not None:
            return None
        from qbench.calibration import lattice
        from qbench.models.loader import get_spec

        steps = self.cfg.steps or get_spec(self.cfg.model).steps
        n = n_params(self.opts["parameterisation"], steps)
        axis = lattice(self.opts["grid_lo"], self.opts["grid_hi"], self.opts["grid_n"])
        grid_images, default_budget = own_budget(len(axis), n, n_prompts)
        if self.opts["search"] == "grid":
            images = grid_images + n_prompts
        else:
            images = (self.opts["max_images"] if self.opts["max_images"] is not None else default_budget) + n_prompts
        return {"images": images, "what": f"Q-Sched {self.opts['search']} search over {n} coefficients (at most; cached scores are reused)"}

    def check_layers(self, denoiser: Any) -> None:
        """The base method's layer checks (e.g. a MixDQ allocation file's layer names)."""
        self.base.check_layers(denoiser)

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

    def settings(self) -> dict[str, Any]:
        """:meth:`describe` without the coefficients (what a calibration is made under)."""
        opts = {k: v for k, v in self.opts.items() if k not in ("progress", "qsched_ckpt", "recalibrate")}
        return {"method": self.name, "bits": self.cfg.bits, "mode": self.mode, "base": self.base.describe(), "options": opts}

    def describe(self) -> dict[str, Any]:
        coeffs = None
        ckpt = self.ckpt or self._peek_checkpoint()
        if ckpt is not None:
            c = validate_checkpoint(ckpt)
            coeffs = {**c.to_dict(), "sha": c.sha, "c_eps": ckpt["c_eps"], "c_x": ckpt["c_x"]}
        return {**self.settings(), "coefficients": coeffs}  # coefficients: None until a checkpoint is known

    def report(self) -> dict[str, Any]:
        out: dict[str, Any] = {"base": self.base.report(), "checkpoint": self.ckpt_path, "checkpoint_origin": self.ckpt_origin, "calib_eval_overlap": self.eval_overlap}
        if self.ckpt_path and os.path.isfile(self.ckpt_path):  # a given file is used as given, labelled by its content
            from qbench.identity import file_digest

            out["checkpoint_sha256"] = file_digest(self.ckpt_path)
        if self.ckpt is not None and self.ckpt_origin != "option":
            out["checkpoint_identity"] = (self.ckpt.get("identity") or {}).get("key")
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
    def code_modules(self) -> list[str]:
        """Q-Sched's modules plus its base method's."""
        return sorted(set(super().code_modules()) | set(self.base.code_modules()))

    def calibration_identity(self):
        """The :class:`~qbench.identity.Identity` of the checkpoint this configuration calibrates
        (:func:`qbench.methods.qsched_search.calibration_identity`): a stored checkpoint is used
        only under its key (its file name carries it)."""
        from qbench.identity import digest

        base_state = digest(self.base.describe())  # a base that calibrates changes its description when it does
        if self._calib_identity is None or self._calib_identity[0] != base_state:
            self._calib_identity = base_state, calibration_identity(self)
        return self._calib_identity[1]

    def stored_checkpoint_path(self, model_name: str | None = None, steps: int | None = None) -> str:
        """``<out_dir>/qsched/<model>_<bits>_<base>_<parameterisation>_<steps>steps_<key>.json``,
        ``key`` the first 12 characters of :meth:`calibration_identity`'s key: a calibration under
        other inputs (prompts, grid, scorer, base state, code) has another file, never this one."""
        model_name = model_name or self.cfg.model
        steps = steps or self._steps or self.cfg.steps
        if steps is None:
            from qbench.catalog import MODELS

            steps = MODELS.get(model_name).steps
        stem = f"{model_name}_{self.cfg.bits}_{self.opts['base']}_{self.opts['parameterisation']}_{steps}steps_{self.calibration_identity().key[:12]}"
        return os.path.join(self.cfg.out_dir, self.name, stem.replace("/", "-") + ".json")  # = ctx.artefacts.path(...)

    def _stored_checkpoint(self) -> dict[str, Any] | None:
        """The stored checkpoint of :meth:`calibration_identity`, if one exists and records that key
        (none while the model's weights cannot be located: nothing was calibrated on them here)."""
        from qbench.errors import MissingWeightsError

        try:
            path = self.stored_checkpoint_path()
        except MissingWeightsError:
            return None
        if not os.path.exists(path):
            return None
        ckpt = load_checkpoint(path)
        return ckpt if (ckpt.get("identity") or {}).get("key") == self.calibration_identity().key else None

    def _peek_checkpoint(self) -> dict[str, Any] | None:
        if self.opts["qsched_ckpt"]:
            return load_checkpoint(self.opts["qsched_ckpt"])
        if self.opts["recalibrate"]:
            return None
        return self._stored_checkpoint()

    def identity_describe(self) -> dict[str, Any]:
        """Settings plus what determines the coefficients: the given checkpoint's content, else the
        calibration's identity key (the coefficients follow from it), so a stored run is found
        again whether or not its checkpoint has been written yet."""
        if self.opts["qsched_ckpt"]:
            return {**self.settings(), "files": self.option_files()}
        return {**self.settings(), "base_files": self.base.option_files(), "calibration": self.calibration_identity().key}

    def _check_ckpt_fits(self, ckpt: dict[str, Any], source: str) -> None:
        if ckpt.get("model") != self._model_name:
            raise QBenchError(f"Q-Sched checkpoint {source} was calibrated for model {ckpt.get('model')!r}, not {self._model_name!r}")
        if ckpt["steps"] != self._steps:
            raise QBenchError(f"Q-Sched checkpoint {source} was calibrated for {ckpt['steps']} steps, this run uses {self._steps}")
        cal_ids = list(ckpt.get("calibration", {}).get("prompt_ids") or [])
        self.eval_overlap = eval_overlap(self.cfg, cal_ids, [""] * len(cal_ids)) if cal_ids else None
        if self.eval_overlap:
            self._say(f"qsched: warning: {self.eval_overlap} of the checkpoint's calibration prompts are among the evaluation prompts")

    def _say(self, msg: str) -> None:
        from qbench.calibctx import say_stderr

        (self._ctx.say if self._ctx is not None else say_stderr)(msg)

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

    def calibrate(self, model: LoadedModel, prompts: list[Prompt], ctx: CalibrationContext | None = None) -> None:
        """Calibrate the base method, then find the coefficients: ``-O qsched_ckpt``, else the
        stored checkpoint (same base-method settings), else a search (:mod:`qsched_search`)
        whose checkpoint is written to :meth:`stored_checkpoint_path`. Without ``ctx`` (tests,
        scripts) a standalone :class:`~qbench.calibctx.CalibrationContext` is made."""
        if self._steps is None:
            self.prepare(model)
        self._calib_prompts = list(prompts)
        if ctx is None:
            from qbench.calibctx import CalibrationContext

            ctx = CalibrationContext.standalone(model, self.cfg, self._calib_prompts, self.name, progress=bool(self.opts["progress"]), calib_spec=self.calib_spec)
        self._ctx = ctx
        with ctx:
            self._convert_base(model)
            self._find_coefficients(model, prompts, ctx)

    def _find_coefficients(self, model: LoadedModel, prompts: list[Prompt], ctx: CalibrationContext) -> None:
        if self.opts["qsched_ckpt"]:
            path = self.opts["qsched_ckpt"]
            ckpt = load_checkpoint(path)
            self._check_ckpt_fits(ckpt, path)
            self.ckpt, self.ckpt_path, self.ckpt_origin = ckpt, path, "option"
            return
        path = self.stored_checkpoint_path()
        stored = None if self.opts["recalibrate"] else self._stored_checkpoint()
        if stored is not None:
            self._check_ckpt_fits(stored, path)
            self.ckpt, self.ckpt_path, self.ckpt_origin = stored, path, "stored"
            ctx.say(f"qsched: using stored checkpoint {path} (identity {self.calibration_identity().key})")
            return
        if not self.opts["recalibrate"]:
            ctx.say(f"qsched: no checkpoint calibrated under these inputs (identity {self.calibration_identity().key}: model, base, "
                    f"prompts, search, scorer, code); calibrating first -> {path}")
        if not prompts:
            raise QBenchError("qsched: no checkpoint and no calibration prompts")
        self.eval_overlap = 0  # the harness refuses calibration prompts that overlap the evaluation prompts
        self.ckpt = self.calibrate_coefficients(model, prompts, ctx)
        self.ckpt["identity"] = self.calibration_identity().record()
        validate_checkpoint(self.ckpt, source=path)
        name = os.path.basename(path)  # the store's root is <out_dir>/qsched: the stored path
        self.ckpt_path = ctx.artefacts.save_json(name, self.ckpt)
        ctx.artefacts.save_json(name[: -len(".json")] + f".{self.ckpt['calibration']['search']}.json", self.ckpt)
        self.ckpt_origin = "calibrated"
        ctx.say(f"qsched: wrote checkpoint {self.ckpt_path}")

    def calibrate_coefficients(self, model: LoadedModel, prompts: list[Prompt], ctx: CalibrationContext | None = None) -> dict[str, Any]:
        """Search the coefficients maximising mean JAQ over ``prompts``; returns a checkpoint dict
        (:func:`qbench.methods.qsched_search.calibrate_coefficients`)."""
        from qbench.methods.qsched_search import calibrate_coefficients

        if ctx is None and self._ctx is None:
            from qbench.calibctx import CalibrationContext

            self._ctx = CalibrationContext.standalone(model, self.cfg, list(prompts), self.name)
        return calibrate_coefficients(self, model, prompts, ctx or self._ctx)

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


__all__ = [
    "PARAMETERISATIONS", "QSched", "QSchedCoefficients", "QSchedSchedulerMixin", "apply_qsched", "load_checkpoint",
    "load_qsched_scheduler", "make_checkpoint", "qsched_scheduler_class", "resolve_coefficients", "run_calibration",
    "save_checkpoint", "unwrap_scheduler", "wrap_scheduler",
]
