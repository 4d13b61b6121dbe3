"""The shipped toy models load through the model registry and draw what the captions say.

Fast (a few seconds of generation on CPU): 16 held-out prompts per model. Thresholds sit well
below the measured accuracy on 148 held-out prompts (qbench/zoo/README.md) and well above
chance, so a broken model, loader, scheduler or text encoder fails them.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from qbench.toyworld.checker import CHANCE

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
    from qbench.toyworld.render import degrade
    from qbench.zoo.evaluate import ground_truth

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


def test_zoo_status_skips_a_truncated_log_line(capsys, monkeypatch, tmp_path):
    from qbench.zoo.cli import main
    from qbench.zoo.ship import training_record

    monkeypatch.setenv("QBENCH_ZOO_WORK", str(tmp_path))
    assert main(["status"]) == 0 and "vae   not trained" in capsys.readouterr().out
    assert not any(tmp_path.iterdir())  # status only reads: it creates no work dirs
    (tmp_path / "vae").mkdir()
    rows = [{"event": "start", "step": 0, "elapsed": 0.0, "lr": 1e-3, "batch": 32},
            {"step": 25, "loss": 0.5, "elapsed": 10.0}, {"step": 50, "loss": 0.4, "elapsed": 20.0}]
    text = "".join(json.dumps(r) + "\n" for r in rows)
    (tmp_path / "vae" / "log.jsonl").write_text(text + '{"step": 75, "lo')  # a write cut by a kill
    assert main(["status"]) == 0
    out, err = capsys.readouterr()
    assert "vae   step 50, 20.0 s, resumes 0" in out and "shipped:" in out
    assert err.count("\n") == 1 and "qbench zoo: warning: skipped 1 line(s)" in err and "line 4" in err
    rec = training_record("vae")
    assert rec["skipped_log_lines"] == [4] and rec["steps"] == 50
    (tmp_path / "vae" / "log.jsonl").write_text(text)
    assert "skipped_log_lines" not in training_record("vae")


def test_trainers_check_arguments_before_loading_anything(monkeypatch, tmp_path):
    from qbench.errors import ConfigError, MissingWeightsError
    from qbench.zoo import train_clip, train_denoiser, train_vae

    monkeypatch.setenv("QBENCH_ZOO_WORK", str(tmp_path))
    for call, needle in [
        (lambda: train_denoiser.train("flux", pairs=1.5), "pairs"),
        (lambda: train_denoiser.train("flux", train_text_encoder=True), "train_text_encoder"),
        (lambda: train_denoiser.train("dit"), "unknown denoiser kind"),
        (lambda: train_denoiser.train("unet", batch_size=0), "batch"),
        (lambda: train_vae.train(minutes=-1), "minutes"),
        (lambda: train_clip.train(lr=float("nan")), "lr"),
        (lambda: train_clip.train(steps=2.5), "steps"),
    ]:
        with pytest.raises(ConfigError, match=needle):
            call()
    # valid arguments but no trained VAE/CLIP: one clear error, not an HF traceback
    with pytest.raises(MissingWeightsError, match=r"qbench zoo train vae"):
        train_denoiser.train("unet", steps=1)
    assert not any(tmp_path.iterdir())  # nothing was created


def test_fd_toyclip_separates_ground_truth_from_wrong_images(prompts):
    from qbench.api import MetricContext
    from qbench.metrics.fd_toyclip import FDToyClip
    from qbench.toyworld.render import Scene, render
    from qbench.zoo.evaluate import ground_truth

    rng = np.random.default_rng(0)

    def fd(images):
        m = FDToyClip(MetricContext(model_family="toy-lcm"))
        m.update(images, prompts)
        return m.compute()

    right = fd(ground_truth(prompts))
    wrong = fd([render(Scene.from_dict(p.meta["scene"]).changed("colour", rng)) for p in prompts])
    assert right.higher_is_better is False and right.n == N
    assert right.value < 0.5 * wrong.value, (right.value, wrong.value)
