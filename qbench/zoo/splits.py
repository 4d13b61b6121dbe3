"""Train / calibration / test splits of the toy world, by scene.

A scene's split is a fixed function of its attributes (a sha256 bucket), so the held-out TEST
scenes are attribute *combinations* that no model saw in training: ``toy:N`` measures
compositional generalisation, not memorisation. About 70% of the 324 scenes are TRAIN, 10% CALIB
(Q-Sched / MixDQ calibration prompts) and 20% TEST.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from qbench.zoo.render import N_WORDINGS, Scene, all_scenes, caption, scene_hash

SPLITS = ("train", "calib", "test")


def split_of(scene: Scene) -> str:
    b = scene_hash(scene) % 10
    return "test" if b < 2 else "calib" if b == 2 else "train"


@lru_cache(maxsize=None)
def scenes(split: str) -> tuple[Scene, ...]:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {SPLITS}")
    return tuple(s for s in all_scenes() if split_of(s) == split)


@lru_cache(maxsize=None)
def prompt_list(split: str) -> tuple[tuple[Scene, int, str], ...]:
    """Every (scene, wording, caption) of a split in a fixed interleaved order: round r holds each
    scene once (scenes shuffled with seed 0), so the first N prompts cover min(N, #scenes) scenes."""
    sc = list(scenes(split))
    order = np.random.default_rng(0).permutation(len(sc))
    out = []
    for r in range(N_WORDINGS):
        for k, i in enumerate(order):
            w = (r + 7 * k) % N_WORDINGS
            out.append((sc[i], w, caption(sc[i], w)))
    return tuple(out)
