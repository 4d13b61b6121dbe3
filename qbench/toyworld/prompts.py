"""Toy-world prompt sets (registered in ``qbench/catalog.py``): ``toy`` (held-out TEST scenes),
``toy-calib`` (CALIB scenes, for Q-Sched / MixDQ calibration) and ``toy-train`` (TRAIN scenes);
``toy-pair`` / ``toy-pair-calib`` / ``toy-pair-train``: the same splits of two-object scenes.

Each prompt's ``meta`` carries its scene (``meta["scene"]``, a dict), its split and wording, so
``toy-acc`` and ``fd-toyclip`` can score images against the exact ground truth.
"""
from __future__ import annotations

from functools import lru_cache

from qbench.api import Prompt
from qbench.toyworld.splits import prompt_list


@lru_cache(maxsize=None)
def _prompts(split: str, kind: str = "single") -> tuple[Prompt, ...]:
    out = []
    prefix = "toy" if kind == "single" else "toy-pair"
    for i, (scene, wording, text) in enumerate(prompt_list(split, kind)):
        meta = {"scene": scene.to_dict(), "split": split, "wording": wording, "world": "toy"}
        out.append(Prompt(id=f"{prefix}-{split}/{i}", text=text, index=i, meta=meta))
    return tuple(out)


def toy_test() -> tuple[Prompt, ...]:
    return _prompts("test")


def toy_calib() -> tuple[Prompt, ...]:
    return _prompts("calib")


def toy_train() -> tuple[Prompt, ...]:
    return _prompts("train")


def toy_pair_test() -> tuple[Prompt, ...]:
    return _prompts("test", "pair")


def toy_pair_calib() -> tuple[Prompt, ...]:
    return _prompts("calib", "pair")


def toy_pair_train() -> tuple[Prompt, ...]:
    return _prompts("train", "pair")
