"""The shipped toy models load through the model registry and draw what the captions say.

Fast (a few seconds of generation on CPU): 16 held-out prompts per model. Thresholds sit well
below the measured accuracy on 148 held-out prompts (qbench/zoo/README.md) and well above
chance, so a broken model, loader, scheduler or text encoder fails them.
"""
from __future__ import annotations

import numpy as np
import pytest

from qbench.zoo.checker import CHANCE

N = 16


@pytest.fixture(scope="module")
def prompts():
    from qbench.prompts import load_prompts

    return load_prompts(f"toy:{N}")


def test_manifest_matches_shipped_files():
    from qbench.zoo.ship import verify

    assert verify() == []


@pytest.mark.parametrize("name", ["toy-lcm", "toy-flux"])
def test_toy_model_draws_the_caption(name, prompts):
    from qbench.api import MetricContext
    from qbench.metrics.toy_acc import ToyAcc
    from qbench.models.loader import load_model

    lm = load_model(name, device="cpu")
    assert lm.source.startswith("shipped:")
    images = lm.generate([p.text for p in prompts], [p.index for p in prompts])
    assert images[0].size == (32, 32)
    again = lm.generate([prompts[0].text], [prompts[0].index])[0]
    # seeded per prompt: the same image alone or in a batch (up to float rounding of batched matmuls)
    assert np.abs(np.asarray(again, np.int16) - np.asarray(images[0], np.int16)).max() <= 2
    m = ToyAcc(MetricContext(model_family=lm.spec.family))
    m.update(images, prompts)
    acc = {k: v.value for k, v in m.compute().items()}
    assert acc["toy-acc/background"] >= 0.9, acc
    assert acc["toy-acc/colour"] >= 0.6, acc
    assert acc["toy-acc/size"] > CHANCE["size"], acc
    # the same prompts with every caption swapped for another scene's: accuracy must fall
    m.reset()
    m.update(images, prompts[1:] + prompts[:1])
    shuffled = {k: v.value for k, v in m.compute().items()}
    assert shuffled["toy-acc/colour"] < acc["toy-acc/colour"] - 0.3, (acc, shuffled)


def test_toy_clip_scores_alignment_and_quality(prompts):
    from qbench.api import MetricContext
    from qbench.metrics.clip_score import CLIPScore
    from qbench.metrics.clipiqa import CLIPIQAScorer
    from qbench.zoo.evaluate import ground_truth
    from qbench.zoo.render import degrade

    ctx = MetricContext(model_family="toy-lcm")
    gt = ground_truth(prompts)

    def clip(images, ps):
        m = CLIPScore(ctx)
        m.update(images, ps)
        return m.compute()

    match, shuffled = clip(gt, prompts), clip(gt, prompts[1:] + prompts[:1])
    assert "toy-clip" in str(match.details.get("clip_model")), match.details
    assert match.value > shuffled.value + 5, (match.value, shuffled.value)
    scorer = CLIPIQAScorer(ctx)
    rng = np.random.default_rng(0)
    clean = scorer.score(gt)
    noisy = scorer.score([degrade(im, "noise", rng, 1.0) for im in gt])
    assert np.mean(clean > noisy) >= 0.8, (clean, noisy)


def test_zoo_cli_status_and_verify(capsys):
    from qbench.zoo.cli import main

    assert main(["verify"]) == 0
    assert "all files match" in capsys.readouterr().out
    assert main(["status"]) == 0
    assert "shipped:" in capsys.readouterr().out


def test_fd_toyclip_separates_ground_truth_from_wrong_images(prompts):
    from qbench.api import MetricContext
    from qbench.metrics.fd_toyclip import FDToyClip
    from qbench.zoo.evaluate import ground_truth
    from qbench.zoo.render import Scene, render

    rng = np.random.default_rng(0)

    def fd(images):
        m = FDToyClip(MetricContext(model_family="toy-lcm"))
        m.update(images, prompts)
        return m.compute()

    right = fd(ground_truth(prompts))
    wrong = fd([render(Scene.from_dict(p.meta["scene"]).changed("colour", rng)) for p in prompts])
    assert right.higher_is_better is False and right.n == N
    assert right.value < 0.5 * wrong.value, (right.value, wrong.value)
