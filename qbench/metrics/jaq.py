"""JAQ, the reference-free joint alignment-quality score Q-Sched calibrates with, in its two variants.

**First variant** (default; Q-Sched ``src/qsched_optimize.py`` ranking criterion ``new``). Per
image ``i`` (higher is better)::

    JAQ_i = log(max(A_i / 100, eps)) + k * Q_i

* ``A_i``: alignment term, default CLIP score ``100 * max(cos, 0)`` (:mod:`clip_score`), so
  ``log(A/100) = log(max(cos, 0))`` <= 0; ``eps`` (``jaq_eps``, default 1e-6) keeps images whose
  cosine is <= 0 finite (log eps = -13.8); how many were floored is recorded (``n_floored``).
* ``Q_i``: quality term in ~[0, 1], default CLIP-IQA (:mod:`clipiqa`); alternatives
  ``brisque`` / ``piqe`` mapped to ``1 - score/100`` (:func:`quality.lower_better_to_quality`).
* ``k`` (``jaq_k``): default 2, as in the Q-Sched code.

``jaq_form`` says how the run's value is aggregated: ``per-image`` (default, qbench's): the mean
of ``JAQ_i``; ``set`` (the public code's): ``log(max(mean_i A_i / 100, eps)) + k * mean_i Q_i``,
the log of the set's mean CLIP score (Q-Sched logs torchmetrics' set-level ``CLIPScore``, i.e.
without the ``/100``: a constant ``log 100 = 4.61`` above qbench's value, the same ranking). The two
differ in how one bad image counts: a blank image among good ones costs ~-0.55 per-image but
~-0.04 set-level (see the README). The set form has no per-image values (nothing to pair).

**Second variant** (``jaq_quality=hpsv2``; the ``kclip2`` criterion that Q-Sched's shipped
``scripts/qsched.sh`` selects)::

    JAQ = mean_i AQ_i + k * mean_i HPS_i / 100

with ``AQ_i`` the AQ-Map alignment score in (0, 1) (:mod:`aqmap`) and ``HPS_i / 100`` the cosine
``hpsv2.score(..., hps_version="v2.1")`` returns (:mod:`hpsv2`); no log, so both forms coincide.
``jaq_quality=hpsv2`` makes ``aqmap`` the default alignment term; the metric ``jaq-hps`` is this
variant by name.

Outside the harness (calibration loops) build once and call many times::

    jaq = JAQ.from_options({"clip_model": ..., "clip_pretrained": ..., "clipiqa_backbone": ...})
    per_image = jaq.score(images, texts)        # np.ndarray, one JAQ per image
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np

from qbench.api import MetricContext
from qbench.errors import ConfigError
from qbench.metrics import common
from qbench.metrics.base import PerImageMetric

DEFAULT_K = 2.0
DEFAULT_EPS = 1e-6
FORMULA = "JAQ_i = log(max(A_i/100, eps)) + k * Q_i; A = CLIP score (100*max(cos,0)), Q = quality term; mean over images"
FORMULA_SET = "JAQ = log(max(mean(A)/100, eps)) + k * mean(Q); A = CLIP score, Q = quality term (Q-Sched's set-level form)"
FORMULA_HPS = "JAQ = mean(AQ-Map) + k * mean(HPSv2.1/100) (Q-Sched kclip2, scripts/qsched.sh); = mean of AQ_i + k*HPS_i/100"
FORMS = ("per-image", "set")
#: alignment terms that enter through log(max(A/100, eps)); the others enter as they are
LOG_TERMS = frozenset({"clip"})

AlignmentFn = Callable[[Sequence[Any], Sequence[str]], np.ndarray]
QualityFn = Callable[[Sequence[Any], Sequence[str]], np.ndarray]  # (images, prompts): HPS reads the prompt


def jaq_scores(clip_scores, quality_scores, k: float = DEFAULT_K, eps: float = DEFAULT_EPS) -> np.ndarray:
    """Pure function: per-image ``log(max(clip/100, eps)) + k * quality``."""
    c = np.asarray(clip_scores, dtype=np.float64)
    q = np.asarray(quality_scores, dtype=np.float64)
    if c.shape != q.shape:
        raise ValueError(f"clip and quality scores differ in shape: {c.shape} vs {q.shape}")
    if eps <= 0:
        raise ValueError("eps must be > 0")
    return np.log(np.maximum(c / 100.0, eps)) + float(k) * q


def jaq_set(alignment, quality, k: float = DEFAULT_K, eps: float = DEFAULT_EPS, log: bool = True) -> float:
    """Pure function: the set-level form ``g(mean(A)) + k * mean(Q)``, ``g(a) = log(max(a/100, eps))``
    (``log=False``: ``g(a) = a``)."""
    a = np.asarray(alignment, dtype=np.float64)
    q = np.asarray(quality, dtype=np.float64)
    if a.shape != q.shape or a.size == 0:
        raise ValueError(f"alignment and quality scores must be non-empty and of one shape: {a.shape} vs {q.shape}")
    m = a.mean()
    return float((np.log(max(m / 100.0, eps)) if log else m) + float(k) * q.mean())


def jaq_set_stderr(alignment, quality, k: float, eps: float, log: bool, n_boot: int = 1000, seed: int = 0) -> float | None:
    """Bootstrap standard error of :func:`jaq_set` (images resampled together; seed 0, 1000 resamples)."""
    a = np.asarray(alignment, dtype=np.float64)
    q = np.asarray(quality, dtype=np.float64)
    if a.size < 2:
        return None
    idx = np.random.default_rng(seed).integers(0, a.size, size=(n_boot, a.size))
    ma = a[idx].mean(1)
    g = np.log(np.maximum(ma / 100.0, eps)) if log else ma
    return float((g + float(k) * q[idx].mean(1)).std(ddof=1))


def jaq_terms(alignment, quality, k: float = DEFAULT_K, eps: float = DEFAULT_EPS, log: bool = True) -> np.ndarray:
    """Per-image ``g(A_i) + k * Q_i`` (``g`` as in :func:`jaq_set`)."""
    if log:
        return jaq_scores(alignment, quality, k, eps)
    return np.asarray(alignment, dtype=np.float64) + float(k) * np.asarray(quality, dtype=np.float64)


# -- pluggable terms: name -> builder(ctx) -> (function, details) ----------------------------------
def _clip_alignment(ctx: MetricContext) -> tuple[AlignmentFn, dict[str, Any]]:
    from qbench.metrics.clip_score import FORMULA, CLIPScorer

    scorer = CLIPScorer.from_context(ctx)
    return scorer.score, {"term": "clip", "formula": FORMULA, **scorer.describe()}


def _clipiqa_quality(ctx: MetricContext) -> tuple[QualityFn, dict[str, Any]]:
    from qbench.metrics.clipiqa import FORMULA, CLIPIQAScorer

    scorer = CLIPIQAScorer(ctx)
    return (lambda images, texts: scorer.score(images)), {"term": "clipiqa", "formula": FORMULA, **scorer.describe()}


def _brisque_quality(ctx: MetricContext) -> tuple[QualityFn, dict[str, Any]]:
    from qbench.metrics.quality import brisque_scores, lower_better_to_quality

    return (lambda images, texts: lower_better_to_quality(brisque_scores(images))), {
        "term": "brisque", "formula": "Q = 1 - BRISQUE/100 (brisque package SVM; lower BRISQUE is better)",
        "versions": common.versions("brisque"),
    }


def _piqe_quality(ctx: MetricContext) -> tuple[QualityFn, dict[str, Any]]:
    from qbench.metrics.quality import lower_better_to_quality, piqe_scores, preflight_piqe

    preflight_piqe()  # pyiqa is the optional extra qbench[pyiqa]
    return (lambda images, texts: lower_better_to_quality(piqe_scores(images))), {
        "term": "piqe", "formula": "Q = 1 - PIQE/100 (pyiqa piqe; lower PIQE is better)", "versions": common.versions("pyiqa"),
    }


def _aqmap_alignment(ctx: MetricContext) -> tuple[AlignmentFn, dict[str, Any]]:
    from qbench.metrics.aqmap import AQMapScorer

    scorer = AQMapScorer(ctx)
    return scorer.score, {"term": "aqmap", "formula": "AQ-Map (CLIP Surgery ViT-B/16, noun parts), in (0, 1)", **scorer.describe()}


def _hps_quality(ctx: MetricContext) -> tuple[QualityFn, dict[str, Any]]:
    from qbench.metrics.hpsv2 import HPSScorer

    scorer = HPSScorer(ctx)
    return (lambda images, texts: scorer.score(images, texts) / 100.0), {
        "term": "hpsv2", "formula": "Q = HPS/100 = cos (the unit hpsv2.score returns)", **scorer.describe()}


ALIGNMENT_TERMS: dict[str, Callable[[MetricContext], tuple[AlignmentFn, dict[str, Any]]]] = {"clip": _clip_alignment, "aqmap": _aqmap_alignment}
QUALITY_TERMS: dict[str, Callable[[MetricContext], tuple[QualityFn, dict[str, Any]]]] = {
    "clipiqa": _clipiqa_quality,
    "brisque": _brisque_quality,
    "piqe": _piqe_quality,
    "hpsv2": _hps_quality,
}


def _pick(table: dict, name: str, what: str):
    if name not in table:
        raise ConfigError(f"unknown JAQ {what} term {name!r}; expected one of {', '.join(table)}")
    return table[name]


def _defaults(ctx: MetricContext, alignment: Any = None, quality: Any = None) -> tuple[Any, Any]:
    """The terms asked for: options, else ``clipiqa`` quality and, with it, ``clip`` alignment;
    ``jaq_quality=hpsv2`` (the second variant) makes ``aqmap`` the default alignment."""
    quality = quality if quality is not None else str(common.opt(ctx, "jaq_quality", "clipiqa"))
    default_align = "aqmap" if quality == "hpsv2" else "clip"
    alignment = alignment if alignment is not None else str(common.opt(ctx, "jaq_alignment", default_align))
    return alignment, quality


class JAQ:
    """Reusable JAQ scorer. Terms are names (``ALIGNMENT_TERMS`` / ``QUALITY_TERMS``) or callables:
    ``alignment(images, texts)``, ``quality(images)``; a callable alignment enters through the log."""

    def __init__(self, ctx: MetricContext | None = None, alignment: str | AlignmentFn | None = None,
                 quality: str | Callable | None = None, k: float | None = None, eps: float | None = None):
        ctx = ctx or MetricContext()
        self.k = float(k) if k is not None else common.opt_float(ctx, "jaq_k", DEFAULT_K)
        self.eps = float(eps) if eps is not None else common.opt_float(ctx, "jaq_eps", DEFAULT_EPS)
        if self.eps <= 0:
            raise ConfigError(f"jaq_eps must be > 0, got {self.eps}")
        self.form = str(common.opt(ctx, "jaq_form", "per-image"))
        if self.form not in FORMS:
            raise ConfigError(f"jaq_form={self.form!r}; expected one of {', '.join(FORMS)}")
        alignment, quality = _defaults(ctx, alignment, quality)
        self.log = callable(alignment) or alignment in LOG_TERMS
        if callable(alignment):
            self._align, self.alignment_info = alignment, {"term": getattr(alignment, "__name__", "custom callable")}
        else:
            self._align, self.alignment_info = _pick(ALIGNMENT_TERMS, alignment, "alignment")(ctx)
        if callable(quality):
            fn = quality
            self._quality, self.quality_info = (lambda images, texts: fn(images)), {"term": getattr(quality, "__name__", "custom callable")}
        else:
            self._quality, self.quality_info = _pick(QUALITY_TERMS, quality, "quality")(ctx)

    @classmethod
    def from_options(cls, options: dict[str, Any] | None = None, device: str = "cpu", model_family: str | None = None,
                     cache_dir: str = "reports/cache", **kwargs: Any) -> JAQ:
        """Build from metric options (the keys of ``RunConfig.metric_options``) without a harness."""
        ctx = MetricContext(device=device, options=dict(options or {}), model_family=model_family, cache_dir=cache_dir)
        return cls(ctx, **kwargs)

    @property
    def formula(self) -> str:
        if not self.log:
            return FORMULA_HPS if self.quality_info.get("term") == "hpsv2" else "JAQ_i = A_i + k * Q_i (alignment term without log), mean over images"
        return FORMULA_SET if self.form == "set" else FORMULA

    def components(self, images: Sequence[Any], texts: Sequence[str]) -> dict[str, np.ndarray]:
        """Per-image ``alignment``, ``quality`` and ``jaq`` (``g(A_i) + k * Q_i``) arrays."""
        if len(images) != len(texts):
            raise ConfigError(f"JAQ: {len(images)} images but {len(texts)} texts")
        a = np.asarray(self._align(images, texts), dtype=np.float64)
        q = np.asarray(self._quality(images, texts), dtype=np.float64)
        return {"alignment": a, "quality": q, "jaq": jaq_terms(a, q, self.k, self.eps, self.log)}

    def score(self, images: Sequence[Any], texts: Sequence[str]) -> np.ndarray:
        return self.components(images, texts)["jaq"]

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"formula": self.formula, "k": self.k, "eps": self.eps, "form": self.form,
                             "alignment": self.alignment_info, "quality": self.quality_info}
        for part in (self.alignment_info, self.quality_info):
            if part.get("meaningful") is False:
                d["meaningful"] = False
                d["weights"] = "; ".join(x for x in (d.get("weights"), part.get("weights")) if x)
        return d


def preflight_jaq(ctx: MetricContext, alignment: str | None = None, quality: str | None = None) -> None:
    """The checks of :class:`JAQ` (its terms' weights included) without building a network."""
    if common.opt_float(ctx, "jaq_eps", DEFAULT_EPS) <= 0:
        raise ConfigError("jaq_eps must be > 0")
    common.opt_float(ctx, "jaq_k", DEFAULT_K)
    if str(common.opt(ctx, "jaq_form", "per-image")) not in FORMS:
        raise ConfigError(f"jaq_form={common.opt(ctx, 'jaq_form')!r}; expected one of {', '.join(FORMS)}")
    alignment, quality = _defaults(ctx, alignment, quality)
    _pick(ALIGNMENT_TERMS, alignment, "alignment")
    _pick(QUALITY_TERMS, quality, "quality")
    from qbench.errors import gather
    from qbench.metrics.aqmap import preflight_aqmap
    from qbench.metrics.clip_models import preflight_clip
    from qbench.metrics.clipiqa import preflight_clipiqa
    from qbench.metrics.hpsv2 import preflight_hps

    from qbench.metrics.quality import preflight_piqe

    checks = {"clip": lambda: preflight_clip(ctx), "aqmap": lambda: preflight_aqmap(ctx),
              "clipiqa": lambda: preflight_clipiqa(ctx), "hpsv2": lambda: preflight_hps(ctx), "piqe": preflight_piqe}
    gather(*(checks[t] for t in (alignment, quality) if t in checks))


def _jaq_options() -> tuple:
    from qbench.metrics.aqmap import aqmap_options
    from qbench.metrics.clipiqa import _clipiqa_options
    from qbench.metrics.hpsv2 import HPS_OPTIONS
    from qbench.options import Opt

    return (
        Opt("jaq_k", "float", None, f"weight of the quality term (default {DEFAULT_K})"),
        Opt("jaq_quality", "str", None, "quality term (hpsv2: the second variant, mean(AQ-Map) + k*mean(HPSv2.1))", choices=tuple(QUALITY_TERMS)),
        Opt("jaq_alignment", "str", None, "alignment term (default clip; aqmap with jaq_quality=hpsv2)", choices=tuple(ALIGNMENT_TERMS)),
        Opt("jaq_eps", "float", None, f"floor of CLIPScore/100 inside the log (default {DEFAULT_EPS})", minimum=1e-300),
        Opt("jaq_form", "str", None, "per-image: mean of per-image JAQ (default); set: log of the set-mean CLIP score + k*mean quality", choices=FORMS),
    ) + _clipiqa_options() + HPS_OPTIONS + aqmap_options()


class JAQMetric(PerImageMetric):
    name: ClassVar[str] = "jaq"
    description: ClassVar[str] = "JAQ = log(CLIPScore/100) + k*CLIP-IQA per image (k=2), mean; reference-free, higher is better"
    higher_is_better: ClassVar[bool] = True
    formula: ClassVar[str] = FORMULA
    OPTIONS = _jaq_options()
    #: default terms of this metric (None: from the options, see :func:`_defaults`)
    TERMS: ClassVar[tuple[str | None, str | None]] = (None, None)

    @classmethod
    def preflight(cls, ctx: MetricContext, prompts) -> None:
        preflight_jaq(ctx, *cls._terms(ctx))

    def __init__(self, ctx: MetricContext):
        super().__init__(ctx)
        self.jaq = JAQ(ctx, *self._terms(ctx))
        self._align: list[np.ndarray] = []
        self._qual: list[np.ndarray] = []

    @classmethod
    def _terms(cls, ctx: MetricContext) -> tuple[str | None, str | None]:
        align, qual = cls.TERMS
        return (common.opt(ctx, "jaq_alignment", align), common.opt(ctx, "jaq_quality", qual))

    def score_batch(self, images, prompts, references=None) -> np.ndarray:
        c = self.jaq.components(images, [p.text for p in prompts])
        self._align.append(c["alignment"])
        self._qual.append(c["quality"])
        return c["jaq"]

    def compute(self):
        v = super().compute()
        if self.jaq.form != "set" or not self._align or not self.jaq.log:
            return v
        from qbench.api import MetricValue

        a, q = np.concatenate(self._align), np.concatenate(self._qual)
        value = jaq_set(a, q, self.jaq.k, self.jaq.eps, self.jaq.log)
        details = {**v.details, "aggregate": "set level: g(mean A) + k mean Q; stderr = bootstrap over images (1000 resamples, seed 0)",
                   "per_image_note": "the set form has no per-image values; per-image JAQ_i mean = " + f"{v.value:.6g}"}
        return MetricValue(value, jaq_set_stderr(a, q, self.jaq.k, self.jaq.eps, self.jaq.log), v.n, self.higher_is_better, details, per_image=None)

    def describe(self) -> dict[str, Any]:
        d = self.jaq.describe()
        if self._align:
            a, q = np.concatenate(self._align), np.concatenate(self._qual)
            d.update(mean_alignment=float(a.mean()), mean_quality=float(q.mean()))
            if self.jaq.log:
                d["n_floored"] = int((a / 100.0 < self.jaq.eps).sum())
        return d

    def reset(self) -> None:
        super().reset()
        self._align, self._qual = [], []

    def shard_state(self) -> dict[str, Any]:
        return {**super().shard_state(), "align": list(self._align), "qual": list(self._qual)}

    def merge_shards(self, states: list[dict[str, Any]]) -> None:
        super().merge_shards(states)
        self._align = [a for st in states for a in st["align"]]
        self._qual = [q for st in states for q in st["qual"]]


class JAQHPSMetric(JAQMetric):
    """Q-Sched's second JAQ variant by name: ``mean(AQ-Map) + k * mean(HPSv2.1 / 100)``."""

    name: ClassVar[str] = "jaq-hps"
    description: ClassVar[str] = "JAQ second variant (Q-Sched kclip2): mean(AQ-Map) + k*mean(HPSv2.1/100), k=2; higher is better"
    formula: ClassVar[str] = FORMULA_HPS
    TERMS: ClassVar[tuple[str | None, str | None]] = ("aqmap", "hpsv2")
