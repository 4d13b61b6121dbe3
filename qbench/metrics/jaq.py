"""JAQ, the reference-free joint alignment-quality score Q-Sched calibrates with.

Per image ``i`` (higher is better)::

    JAQ_i = log(max(A_i / 100, eps)) + k * Q_i

* ``A_i``: alignment term, default CLIP score ``100 * max(cos, 0)`` (:mod:`clip_score`), so
  ``log(A/100) = log(max(cos, 0))`` <= 0; ``eps`` (``jaq_eps``, default 1e-6) keeps images whose
  cosine is <= 0 finite (log eps = -13.8); how many were floored is recorded (``n_floored``).
* ``Q_i``: quality term in ~[0, 1], default CLIP-IQA (:mod:`clipiqa`); alternatives
  ``brisque`` / ``piqe`` mapped to ``1 - score/100`` (:func:`quality.lower_better_to_quality`).
* ``k`` (``jaq_k``): default 2, as in the Q-Sched code.

The run's JAQ is the mean of ``JAQ_i`` over images, with a bootstrap standard error. Q-Sched's
public code also has a ``mean(AQ-Map) + k * mean(HPSv2.1)`` variant (extra models, not here).

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

AlignmentFn = Callable[[Sequence[Any], Sequence[str]], np.ndarray]
QualityFn = Callable[[Sequence[Any]], np.ndarray]


def jaq_scores(clip_scores, quality_scores, k: float = DEFAULT_K, eps: float = DEFAULT_EPS) -> np.ndarray:
    """Pure function: per-image ``log(max(clip/100, eps)) + k * quality``."""
    c = np.asarray(clip_scores, dtype=np.float64)
    q = np.asarray(quality_scores, dtype=np.float64)
    if c.shape != q.shape:
        raise ValueError(f"clip and quality scores differ in shape: {c.shape} vs {q.shape}")
    if eps <= 0:
        raise ValueError("eps must be > 0")
    return np.log(np.maximum(c / 100.0, eps)) + float(k) * q


# -- pluggable terms: name -> builder(ctx) -> (function, details) ----------------------------------
def _clip_alignment(ctx: MetricContext) -> tuple[AlignmentFn, dict[str, Any]]:
    from qbench.metrics.clip_score import FORMULA, CLIPScorer

    scorer = CLIPScorer.from_context(ctx)
    return scorer.score, {"term": "clip", "formula": FORMULA, **scorer.describe()}


def _clipiqa_quality(ctx: MetricContext) -> tuple[QualityFn, dict[str, Any]]:
    from qbench.metrics.clipiqa import FORMULA, CLIPIQAScorer

    scorer = CLIPIQAScorer(ctx)
    return scorer.score, {"term": "clipiqa", "formula": FORMULA, **scorer.describe()}


def _brisque_quality(ctx: MetricContext) -> tuple[QualityFn, dict[str, Any]]:
    from qbench.metrics.quality import brisque_scores, lower_better_to_quality

    return (lambda images: lower_better_to_quality(brisque_scores(images))), {
        "term": "brisque", "formula": "Q = 1 - BRISQUE/100 (brisque package SVM; lower BRISQUE is better)",
        "versions": common.versions("brisque"),
    }


def _piqe_quality(ctx: MetricContext) -> tuple[QualityFn, dict[str, Any]]:
    from qbench.metrics.quality import lower_better_to_quality, piqe_scores, preflight_piqe

    preflight_piqe()  # pyiqa is the optional extra qbench[pyiqa]
    return (lambda images: lower_better_to_quality(piqe_scores(images))), {
        "term": "piqe", "formula": "Q = 1 - PIQE/100 (pyiqa piqe; lower PIQE is better)", "versions": common.versions("pyiqa"),
    }


ALIGNMENT_TERMS: dict[str, Callable[[MetricContext], tuple[AlignmentFn, dict[str, Any]]]] = {"clip": _clip_alignment}
QUALITY_TERMS: dict[str, Callable[[MetricContext], tuple[QualityFn, dict[str, Any]]]] = {
    "clipiqa": _clipiqa_quality,
    "brisque": _brisque_quality,
    "piqe": _piqe_quality,
}


def _pick(table: dict, name: str, what: str):
    if name not in table:
        raise ConfigError(f"unknown JAQ {what} term {name!r}; expected one of {', '.join(table)}")
    return table[name]


class JAQ:
    """Reusable JAQ scorer. Terms are names (``ALIGNMENT_TERMS`` / ``QUALITY_TERMS``) or callables."""

    def __init__(self, ctx: MetricContext | None = None, alignment: str | AlignmentFn | None = None,
                 quality: str | QualityFn | None = None, k: float | None = None, eps: float | None = None):
        ctx = ctx or MetricContext()
        self.k = float(k) if k is not None else common.opt_float(ctx, "jaq_k", DEFAULT_K)
        self.eps = float(eps) if eps is not None else common.opt_float(ctx, "jaq_eps", DEFAULT_EPS)
        if self.eps <= 0:
            raise ConfigError(f"jaq_eps must be > 0, got {self.eps}")
        alignment = alignment if alignment is not None else str(common.opt(ctx, "jaq_alignment", "clip"))
        quality = quality if quality is not None else str(common.opt(ctx, "jaq_quality", "clipiqa"))
        if callable(alignment):
            self._align, self.alignment_info = alignment, {"term": getattr(alignment, "__name__", "custom callable")}
        else:
            self._align, self.alignment_info = _pick(ALIGNMENT_TERMS, alignment, "alignment")(ctx)
        if callable(quality):
            self._quality, self.quality_info = quality, {"term": getattr(quality, "__name__", "custom callable")}
        else:
            self._quality, self.quality_info = _pick(QUALITY_TERMS, quality, "quality")(ctx)

    @classmethod
    def from_options(cls, options: dict[str, Any] | None = None, device: str = "cpu", model_family: str | None = None,
                     cache_dir: str = "reports/cache", **kwargs: Any) -> JAQ:
        """Build from metric options (the keys of ``RunConfig.metric_options``) without a harness."""
        ctx = MetricContext(device=device, options=dict(options or {}), model_family=model_family, cache_dir=cache_dir)
        return cls(ctx, **kwargs)

    def components(self, images: Sequence[Any], texts: Sequence[str]) -> dict[str, np.ndarray]:
        """Per-image ``alignment``, ``quality`` and ``jaq`` arrays."""
        if len(images) != len(texts):
            raise ConfigError(f"JAQ: {len(images)} images but {len(texts)} texts")
        a = np.asarray(self._align(images, texts), dtype=np.float64)
        q = np.asarray(self._quality(images), dtype=np.float64)
        return {"alignment": a, "quality": q, "jaq": jaq_scores(a, q, self.k, self.eps)}

    def score(self, images: Sequence[Any], texts: Sequence[str]) -> np.ndarray:
        return self.components(images, texts)["jaq"]

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"formula": FORMULA, "k": self.k, "eps": self.eps,
                             "alignment": self.alignment_info, "quality": self.quality_info}
        for part in (self.alignment_info, self.quality_info):
            if part.get("meaningful") is False:
                d["meaningful"] = False
                d["weights"] = "; ".join(x for x in (d.get("weights"), part.get("weights")) if x)
        return d


def preflight_jaq(ctx: MetricContext) -> None:
    """The checks of :class:`JAQ` (its terms' weights included) without building a network."""
    if common.opt_float(ctx, "jaq_eps", DEFAULT_EPS) <= 0:
        raise ConfigError("jaq_eps must be > 0")
    common.opt_float(ctx, "jaq_k", DEFAULT_K)
    _pick(ALIGNMENT_TERMS, str(common.opt(ctx, "jaq_alignment", "clip")), "alignment")
    quality = str(common.opt(ctx, "jaq_quality", "clipiqa"))
    _pick(QUALITY_TERMS, quality, "quality")
    from qbench.errors import gather
    from qbench.metrics.clip_models import preflight_clip
    from qbench.metrics.clipiqa import preflight_clipiqa

    from qbench.metrics.quality import preflight_piqe

    gather(lambda: preflight_clip(ctx), *([lambda: preflight_clipiqa(ctx)] if quality == "clipiqa" else []),
           *([preflight_piqe] if quality == "piqe" else []))


def _jaq_options() -> tuple:
    from qbench.metrics.clipiqa import _clipiqa_options
    from qbench.options import Opt

    return (
        Opt("jaq_k", "float", None, f"weight of the quality term (default {DEFAULT_K})"),
        Opt("jaq_quality", "str", None, "quality term", choices=tuple(QUALITY_TERMS)),
        Opt("jaq_alignment", "str", None, "alignment term", choices=tuple(ALIGNMENT_TERMS)),
        Opt("jaq_eps", "float", None, f"floor of CLIPScore/100 inside the log (default {DEFAULT_EPS})", minimum=1e-300),
    ) + _clipiqa_options()


class JAQMetric(PerImageMetric):
    name: ClassVar[str] = "jaq"
    description: ClassVar[str] = "JAQ = log(CLIPScore/100) + k*CLIP-IQA per image (k=2), mean; reference-free, higher is better"
    higher_is_better: ClassVar[bool] = True
    formula: ClassVar[str] = FORMULA
    OPTIONS = _jaq_options()

    @classmethod
    def preflight(cls, ctx: MetricContext, prompts) -> None:
        preflight_jaq(ctx)

    def __init__(self, ctx: MetricContext):
        super().__init__(ctx)
        self.jaq = JAQ(ctx)
        self._align: list[np.ndarray] = []
        self._qual: list[np.ndarray] = []

    def score_batch(self, images, prompts, references=None) -> np.ndarray:
        c = self.jaq.components(images, [p.text for p in prompts])
        self._align.append(c["alignment"])
        self._qual.append(c["quality"])
        return c["jaq"]

    def describe(self) -> dict[str, Any]:
        d = self.jaq.describe()
        if self._align:
            a, q = np.concatenate(self._align), np.concatenate(self._qual)
            d.update(mean_alignment=float(a.mean()), mean_quality=float(q.mean()), n_floored=int((a / 100.0 < self.jaq.eps).sum()))
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
