"""Validation of the rule-based checker behind ``toy-acc`` (issue 6 §3)."""
from __future__ import annotations

import numpy as np
import pytest

from qbench.api import MetricContext, Prompt
from qbench.errors import QBenchError
from qbench.zoo.checker import CHANCE, read_scene, score
from qbench.zoo.render import ATTRIBUTES, all_scenes, random_scene, render


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
