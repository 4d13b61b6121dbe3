"""Train / calibration / test splits of the toy world, by scene.

A scene's split is a fixed function of its attributes (a sha256 bucket), so the held-out TEST
scenes are attribute *combinations* that no model saw in training: ``toy:N`` measures
compositional generalisation, not memorisation. About 70% of the 324 scenes are TRAIN, 10% CALIB
(Q-Sched / MixDQ calibration prompts) and 20% TEST. Two-object scenes (``kind="pair"``, 972
combinations) are split the same way, by their own hash.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from qbench.toyworld.render import (
    N_PAIR_WORDINGS,
    N_WORDINGS,
    PairScene,
    Scene,
    all_pair_scenes,
    all_scenes,
    caption,
    scene_hash,
)

SPLITS = ("train", "calib", "test")
KINDS = ("single", "pair")


def split_of(scene: Scene | PairScene) -> str:
    b = scene_hash(scene) % 10
    return "test" if b < 2 else "calib" if b == 2 else "train"


@lru_cache(maxsize=None)
def scenes(split: str, kind: str = "single") -> tuple[Scene | PairScene, ...]:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {SPLITS}")
    if kind not in KINDS:
        raise ValueError(f"unknown scene kind {kind!r}; choose from {KINDS}")
    pool = all_scenes() if kind == "single" else all_pair_scenes()
    return tuple(s for s in pool if split_of(s) == split)


@lru_cache(maxsize=None)
def prompt_list(split: str, kind: str = "single") -> tuple[tuple[Scene | PairScene, int, str], ...]:
    """Every (scene, wording, caption) of a split in a fixed interleaved order: round r holds each
    scene once (scenes shuffled with seed 0), so the first N prompts cover min(N, #scenes) scenes."""
    sc = list(scenes(split, kind))
    order = np.random.default_rng(0).permutation(len(sc))
    nw = N_WORDINGS if kind == "single" else N_PAIR_WORDINGS
    out = []
    for r in range(nw):
        for k, i in enumerate(order):
            w = (r + 7 * k) % nw
            out.append((sc[i], w, caption(sc[i], w)))
    return tuple(out)
