"""`qbench zoo quant-sweep`: naive quantization of a shipped toy model at several bit widths.

A small sweep (16 held-out prompts) runs the real path (shipped toy-flux, naive fake
quantization, toy CLIP JAQ, fd-toyclip, checker); the full 592-prompt numbers are in
reports/toy-quant.md. The pure helpers (paired differences, monotonicity, training phases) are
checked on hand-made inputs.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from qbench.errors import ConfigError
from qbench.zoo.quant_sweep import monotone, paired, to_markdown
from qbench.zoo.ship import training_phases


def test_paired_difference_and_its_standard_error():
    base = np.array([1.0, 2.0, 3.0, 4.0])
    d = paired(base + np.array([0.1, -0.1, 0.3, 0.1]), base)
    assert d["mean"] == pytest.approx(0.1)
    assert d["se"] == pytest.approx(np.std([0.1, -0.1, 0.3, 0.1], ddof=1) / 2)


def test_monotone_flags_a_step_that_does_not_hurt():
    s = {"fp": {"m": 1.0}, "W8A8": {"m": 0.99}, "W4A8": {"m": 0.95}, "W4A4": {"m": 0.96}, "W2A8": {"m": 0.5}}
    c = monotone(s, "m", higher_is_better=True)
    assert not c["all_worse"]
    assert [(st["to"], st["worse"]) for st in c["steps"]] == [("W4A8", True), ("W4A4", False), ("W2A8", True)]
    per = {k: np.full(4, v["m"]) + np.array([0, 0.01, 0, -0.01]) * (k == "W4A8") for k, v in s.items()}
    c = monotone(s, "m", higher_is_better=True, per_image=per)
    assert c["steps"][0]["z"] < -2  # W8A8 -> W4A8: -0.04 with a tiny spread
    lower = monotone({"a": 0} | {k: {"fd": -v["m"]} for k, v in s.items()}, "fd", higher_is_better=False)
    assert [st["worse"] for st in lower["steps"]] == [True, False, True]


def test_training_phases_from_the_log():
    rows = [
        {"event": "start", "step": 0, "lr": 6e-4, "batch": 32},
        {"step": 20, "loss": 1.0},
        {"event": "resume", "step": 300, "lr": 6e-4, "batch": 32},  # same settings: same phase
        {"event": "resume", "step": 500, "lr": 1e-4, "batch": 32},  # stopped before its first step
        {"event": "resume", "step": 500, "lr": 2e-4, "batch": 32, "train_text_encoder": True},
        {"event": "checkpoint", "step": 900},
    ]
    assert training_phases(rows, 900) == [
        {"from_step": 0, "lr": 6e-4, "batch": 32, "pairs": 0.0, "train_text_encoder": False, "to_step": 500},
        {"from_step": 500, "lr": 2e-4, "batch": 32, "pairs": 0.0, "train_text_encoder": True, "to_step": 900},
    ]
    assert training_phases([{"event": "resume", "step": 10}], 20) == []  # old logs without settings


def test_sweep_on_the_shipped_toy_flux(tmp_path, capsys):
    from qbench.zoo.cli import main

    out = tmp_path / "sweep.json"
    md = tmp_path / "sweep.md"
    assert main(["quant-sweep", "--model", "toy-flux", "--n", "16", "--bits", "W8A8,W2A8",
                 "--json", str(out), "--markdown", str(md)]) == 0
    res = json.loads(out.read_text())
    s = res["summary"]
    assert list(s) == ["fp", "W8A8", "W2A8"]
    assert res["world"].startswith("toy world") and "simulate" in res["quantization"]
    # fidelity to FP: W8A8 nearly identical, W2A8 far off; the set drifts from ground truth at W2A8
    assert s["W8A8"]["psnr"] > 50 > s["W2A8"]["psnr"] > 15
    assert s["W8A8"]["ssim"] > s["W2A8"]["ssim"]
    assert s["W2A8"]["fd_toyclip"] > s["fp"]["fd_toyclip"]
    assert s["W8A8"]["layers_quantized"] == s["W2A8"]["layers_quantized"] > 0
    assert abs(s["W8A8"]["jaq_vs_fp"]["mean"]) < 0.01
    assert md.read_text() == to_markdown(res) and "| W2A8 |" in capsys.readouterr().out


def test_sweep_refuses_a_bad_bit_spec_before_generating():
    from qbench.zoo.quant_sweep import sweep

    with pytest.raises(ConfigError):
        sweep("toy-flux", n=4, bits=("W4A8", "W9Z"))
    with pytest.raises(ConfigError, match="toy models"):
        sweep("tiny-flux", n=4, bits=("W8A8",))
