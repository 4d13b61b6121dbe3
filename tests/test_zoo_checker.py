"""Validation of the rule-based checker behind ``toy-acc`` (issue 6 §3)."""
from __future__ import annotations

import numpy as np
import pytest

from qbench.api import MetricContext, Prompt
from qbench.errors import QBenchError
from qbench.toyworld.checker import CHANCE, read_scene, score
from qbench.toyworld.render import ATTRIBUTES, Scene, all_scenes, random_scene, render


def test_checker_reads_every_rendered_scene_exactly():
    rng = np.random.default_rng(0)
    for s in all_scenes():
        for _ in range(2):
            j = s.with_jitter(rng)
            r = score(render(j), j)
            assert r["all"] == 1, (j, read_scene(render(j)))


def test_checker_is_at_chance_on_shuffled_captions():
    rng = np.random.default_rng(1)
    sc = [random_scene(rng) for _ in range(1500)]
    perm = rng.permutation(len(sc))
    acc = {a: np.mean([score(render(sc[i]), sc[perm[i]])[a] for i in range(len(sc))]) for a in ATTRIBUTES}
    for a in ATTRIBUTES:  # 1500 samples: binomial sd <= 0.013
        assert abs(acc[a] - CHANCE[a]) < 0.05, (a, acc[a], CHANCE[a])


def test_checker_on_an_empty_image_reads_no_object():
    from PIL import Image

    r = read_scene(Image.new("RGB", (32, 32), (245, 245, 245)))
    assert r["background"] == "white" and r["shape"] is None and r["colour"] is None


def test_toy_acc_metric():
    from qbench.metrics.toy_acc import ToyAcc

    rng = np.random.default_rng(2)
    sc = [random_scene(rng) for _ in range(20)]
    prompts = [Prompt(f"p{i}", "x", i, {"scene": s.to_dict()}) for i, s in enumerate(sc)]
    m = ToyAcc(MetricContext())
    m.update([render(s) for s in sc], prompts)
    out = m.compute()
    assert out["toy-acc"].value == 1.0 and out["toy-acc"].n == 20 and out["toy-acc/shape"].stderr == 0.0
    m.reset()
    wrong = [render(s.changed("shape", rng)) for s in sc]
    m.update(wrong, prompts)
    out = m.compute()
    assert out["toy-acc/shape"].value == 0.0 and out["toy-acc/colour"].value == 1.0 and out["toy-acc"].value == 0.0
    assert "toy world" in out["toy-acc"].details["world"]
    with pytest.raises(QBenchError):
        m.update([render(sc[0])], [Prompt("coco", "a cat", 0)])


def test_checker_reads_two_object_scenes_and_is_at_chance_when_shuffled():
    from qbench.toyworld.render import PAIR_ATTRIBUTES, PairScene, all_pair_scenes

    rng = np.random.default_rng(4)
    pairs = all_pair_scenes()
    for s in pairs:
        j = s.with_jitter(rng)
        assert score(render(j), j)["all"] == 1, j
    sample = [pairs[int(i)].with_jitter(rng) for i in rng.integers(len(pairs), size=1500)]
    perm = rng.permutation(len(sample))
    acc = {a: np.mean([score(render(sample[i]), sample[perm[i]])[a] for i in range(len(sample))]) for a in PAIR_ATTRIBUTES}
    for a in PAIR_ATTRIBUTES:
        assert abs(acc[a] - CHANCE[a]) < 0.05, (a, acc[a])
    # swapped sides read as wrong: the left object must be drawn on the left
    s = PairScene("white", "red", "circle", "blue", "square")
    swapped = PairScene("white", "blue", "square", "red", "circle")
    r = score(render(swapped), s)
    assert r["left_colour"] == r["right_colour"] == r["left_shape"] == r["right_shape"] == r["all"] == 0
    # a single object where two were asked for: the missing side is wrong
    only_left = Scene("white", "red", "small", "circle", "left")
    r = score(render(only_left), s)
    assert r["left_colour"] == 1 and r["right_colour"] == 0 and r["all"] == 0


def test_toy_acc_on_a_mixed_prompt_set():
    from qbench.metrics.toy_acc import ToyAcc
    from qbench.toyworld.render import PairScene

    rng = np.random.default_rng(5)
    singles = [random_scene(rng) for _ in range(6)]
    pairs = [PairScene("gray", "red", "circle", "green", "triangle"), PairScene("black", "blue", "square", "blue", "square")]
    sc = singles + pairs
    prompts = [Prompt(f"p{i}", "x", i, {"scene": s.to_dict()}) for i, s in enumerate(sc)]
    m = ToyAcc(MetricContext())
    m.update([render(s) for s in sc[:-1]] + [render(singles[0])], prompts)
    out = m.compute()
    assert out["toy-acc"].n == 8 and out["toy-acc"].value == 7 / 8
    assert out["toy-acc/position"].n == 6 and out["toy-acc/left_colour"].n == 2 and out["toy-acc/left_colour"].value == 0.5
