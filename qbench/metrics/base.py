"""Thin stateful base for metrics that score each image and report the mean."""
from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from qbench.api import Metric, MetricContext, MetricValue, Prompt
from qbench.metrics.stats import mean_and_stderr


class PerImageMetric(Metric):
    """Accumulates one score per image; ``compute`` = mean and bootstrap standard error.

    Subclasses implement :meth:`score_batch` (returns one float per image) and :meth:`describe`
    (the ``details`` dict: network, weights, protocol, versions).
    """

    name: ClassVar[str] = "per-image"
    #: a short text for ``details["formula"]``
    formula: ClassVar[str] = ""

    def __init__(self, ctx: MetricContext):
        super().__init__(ctx)
        self._scores: list[np.ndarray] = []
        self._ids: list[str] = []
        self._size: list[int] | None = None

    def score_batch(self, images: list[Any], prompts: list[Prompt], references: list[Any] | None) -> np.ndarray:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {}

    def update(self, images, prompts, references=None) -> None:
        if not images:
            return
        if self._size is None:
            from qbench.metrics.common import to_uint8_array

            h, w = to_uint8_array(images[0]).shape[:2]
            self._size = [int(w), int(h)]
        scores = np.asarray(self.score_batch(list(images), list(prompts), references), dtype=np.float64).ravel()
        if scores.shape[0] != len(images):
            raise RuntimeError(f"{self.name}: {scores.shape[0]} scores for {len(images)} images")
        self._scores.append(scores)
        self._ids.extend(p.id for p in prompts)

    def shard_state(self) -> dict[str, Any]:
        return {"scores": list(self._scores), "ids": list(self._ids), "size": self._size}

    def merge_shards(self, states: list[dict[str, Any]]) -> None:
        self._scores = [s for st in states for s in st["scores"]]
        self._ids = [i for st in states for i in st["ids"]]
        self._size = next((st["size"] for st in states if st["size"]), None)

    @property
    def scores(self) -> np.ndarray:
        return np.concatenate(self._scores) if self._scores else np.zeros(0)

    def compute(self) -> MetricValue:
        s = self.scores
        value, stderr = mean_and_stderr(s)
        details = {"formula": self.formula, "aggregate": "mean over images; stderr = bootstrap (1000 resamples, seed 0)",
                   "image_size": self._size}
        details.update(self.describe())
        per_image = dict(zip(self._ids, (float(v) for v in s))) if len(self._ids) == s.size else None
        return MetricValue(value, stderr, int(s.size), self.higher_is_better, details, per_image=per_image)

    def reset(self) -> None:
        self._scores = []
        self._ids = []
        self._size = None
