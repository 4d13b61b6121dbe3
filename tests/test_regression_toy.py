"""Regression benchmark: the shipped toy models under fp and naive W8A8 / W4A8 must not get worse
than the committed baseline (reports/baselines/toy.json, written by reports/scripts/make_baseline.py).

Guards the quantizers, schedulers, loaders, metrics and shipped weights together; the tolerances
(qbench.zoo.quant_sweep.TOLERANCE) absorb float rounding across CPUs, not regressions.
"""
from __future__ import annotations

import json
import os

import pytest

from qbench.zoo.quant_sweep import baseline_numbers, regressions

BASELINE = os.path.join(os.path.dirname(__file__), "..", "reports", "baselines", "toy.json")


@pytest.mark.parametrize("model", ["toy-flux", "toy-lcm"])
def test_toy_model_has_not_regressed(model):
    with open(BASELINE) as f:
        base = json.load(f)[model]
    cur = baseline_numbers(model, bits=tuple(base["bits"]))
    assert cur["prompts"] == base["prompts"]
    assert regressions(base, cur) == []


def test_regressions_flags_only_worse_numbers():
    base = {"summary": {"fp": {"psnr": 100, "ssim": 1, "toy_acc": 0.8, "jaq": 1.8, "fd_toyclip": 3.0},
                        "W4A8": {"psnr": 45, "ssim": 0.99, "toy_acc": 0.8, "jaq": 1.8, "fd_toyclip": 3.0}}}
    better = {"summary": {"fp": dict(base["summary"]["fp"], toy_acc=0.9),
                          "W4A8": dict(base["summary"]["W4A8"], psnr=50, fd_toyclip=2.0)}}
    assert regressions(base, better) == []
    worse = {"summary": {"fp": dict(base["summary"]["fp"], toy_acc=0.6),
                         "W4A8": dict(base["summary"]["W4A8"], psnr=40, fd_toyclip=5.0)}}
    assert regressions(base, worse) == ["fp toy_acc: 0.6000 vs baseline 0.8000", "W4A8 psnr: 40.0000 vs baseline 45.0000",
                                        "W4A8 fd_toyclip: 5.0000 vs baseline 3.0000"]
    assert regressions(base, {"summary": {"fp": base["summary"]["fp"]}}) == ["W4A8: missing"]
