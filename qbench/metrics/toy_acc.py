"""``toy-acc``: exact compositional accuracy on the toy world (GenEval-style).

Every toy prompt carries its scene; the rule-based checker (``qbench.toyworld.checker``) reads
background, colour, size, shape and position back from each generated image. ``compute()``
returns the all-correct rate as ``toy-acc`` and each attribute's accuracy as
``toy-acc/<attribute>``, with binomial standard errors sqrt(p(1-p)/n). Chance levels: background
1/3, colour 1/6, size 1/2, shape 1/3, position 1/3. Two-object prompts (``toy-pair:N``) are scored
on background, left_colour, left_shape, right_colour, right_shape; a mixed set reports each
attribute over the images whose prompt has it. Validated in ``tests/test_zoo_checker.py``
(100% on rendered ground truth, chance on shuffled captions). Toy-world numbers only.
"""
from __future__ import annotations

import math
from typing import Any

from qbench.api import Metric, MetricContext, MetricValue
from qbench.errors import QBenchError

WORLD = "toy world (synthetic 32x32 scenes; numbers do not transfer to real images)"


class ToyAcc(Metric):
    name = "toy-acc"
    description = "toy world: per-attribute and all-correct accuracy of a rule-based checker vs the prompt's scene"
    higher_is_better = True

    def __init__(self, ctx: MetricContext):
        super().__init__(ctx)
        self.reset()

    @classmethod
    def preflight(cls, ctx: MetricContext, prompts) -> None:
        bad = [p.id for p in prompts if not (p.meta or {}).get("scene")]
        if bad:
            raise QBenchError(f"toy-acc needs toy-world prompts with scenes ({len(bad)} of {len(prompts)} have none, e.g. {bad[0]!r}); use --prompts toy:N or toy-pair:N")

    def reset(self) -> None:
        self._scores: list[dict[str, int]] = []
        self._ids: list[str] = []

    def shard_state(self) -> dict[str, Any]:
        return {"scores": list(self._scores), "ids": list(self._ids)}

    def merge_shards(self, states: list[dict[str, Any]]) -> None:
        self._scores = [s for st in states for s in st["scores"]]
        self._ids = [i for st in states for i in st["ids"]]

    def update(self, images, prompts, references=None) -> None:
        from qbench.toyworld.checker import score

        if len(images) != len(prompts):
            raise QBenchError(f"toy-acc: {len(images)} images for {len(prompts)} prompts")
        for im, p in zip(images, prompts):
            scene = (p.meta or {}).get("scene")
            if scene is None:
                raise QBenchError(
                    f"toy-acc needs toy-world prompts (prompt {p.id!r} has no scene); use --prompts toy:N"
                )
            self._scores.append(score(im, scene))
            self._ids.append(p.id)

    def compute(self) -> dict[str, MetricValue]:
        from qbench.toyworld.checker import CHANCE
        from qbench.toyworld.render import ATTRIBUTES, PAIR_ATTRIBUTES

        if not self._scores:
            raise QBenchError("toy-acc: no images were scored")
        out: dict[str, MetricValue] = {}
        for key in ("all",) + ATTRIBUTES + tuple(a for a in PAIR_ATTRIBUTES if a not in ATTRIBUTES):
            vals = [s[key] for s in self._scores if key in s]
            if not vals:
                continue
            n = len(vals)
            p = sum(vals) / n
            details: dict[str, Any] = {"world": WORLD, "checker": "qbench.toyworld.checker (rule-based)",
                                       "chance": CHANCE.get(key, math.prod(CHANCE.values()))}
            name = "toy-acc" if key == "all" else f"toy-acc/{key}"
            out[name] = MetricValue(p, math.sqrt(p * (1 - p) / n), n, True, details)
        out["toy-acc"].per_image = {i: float(s["all"]) for i, s in zip(self._ids, self._scores)}
        return out
