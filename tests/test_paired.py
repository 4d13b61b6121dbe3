"""Paired comparisons: per-prompt scores of two runs with the same prompts and seeds."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from qbench.metrics.stats import paired_difference
from qbench.comparison import pair


def test_paired_difference_cancels_prompt_spread():
    rng = np.random.default_rng(0)
    base = {f"p{i}": float(v) for i, v in enumerate(rng.normal(0, 1.0, 200))}  # large prompt-to-prompt spread
    other = {k: v - 0.01 + float(rng.normal(0, 0.002)) for k, v in base.items()}  # a small, consistent drop
    d = paired_difference(base, other)
    assert d["n"] == 200 and d["mean"] == pytest.approx(-0.01, abs=0.001) and d["se"] < 0.0005
    # the unpaired standard error of the difference of means would not resolve it
    assert math.sqrt(2) * np.std(list(base.values())) / math.sqrt(200) > 0.05
    assert paired_difference(base, {"zzz": 1.0}) is None
    one = paired_difference({"a": 1.0}, {"a": 3.0, "b": 0.0})  # only common prompts count
    assert one["mean"] == 2.0 and one["n"] == 1 and one["se"] is None  # n < 2: no standard error (n/a)


def _row(method, run_id, metrics):
    return {"method": method, "run_id": run_id, "metrics": metrics}


def test_pair_differences_to_the_baseline_skip_metrics_already_relative_to_fp():
    ref = {"details": {"reference": "full-precision model, same prompts and seeds"}}
    rows = [_row("fp", "f", {"jaq": {}, "psnr": ref}), _row("naive", "a", {"jaq": {}, "psnr": ref}), _row("naive", "b", {"jaq": {}}), _row("naive", "c", {"clip": {}})]
    scores = {
        "f": {"jaq": {"p0": 1.0, "p1": 2.0}, "psnr": {"p0": 100.0, "p1": 100.0}},
        "a": {"jaq": {"p0": 0.5, "p1": 1.0}, "psnr": {"p0": 40.0, "p1": 42.0}},
        "b": {},
        "c": {"clip": {"p0": 1.0}},
    }
    pair(rows, rows[0], scores.__getitem__)
    assert rows[1]["paired"]["jaq"]["mean"] == pytest.approx(-0.75)
    assert "psnr" not in rows[1]["paired"]  # already relative to fp
    assert "paired" not in rows[2] and "kept no per-prompt scores" in rows[2]["paired_note"]
    assert rows[3]["paired_note"] == "not paired: the baseline has no per-prompt clip"
    assert "paired" not in rows[0] and "paired_note" not in rows[0]
    pair(rows[1:3], rows[2], scores.__getitem__)  # a baseline without scores: nothing to pair with
    assert "the baseline kept no per-prompt scores" in rows[1]["paired_note"]


def test_compare_prints_paired_differences_on_the_toy_model(capsys, tmp_path):
    from qbench.cli import main

    out_dir = str(tmp_path / "r")
    common = ["--model", "toy-flux", "--prompts", "toy:8", "--out-dir", out_dir, "--metrics", "jaq,toy-acc,psnr",
              "--latency-repeats", "1", "--latency-warmup", "0", "--no-progress"]
    assert main(["run", *common]) == 0
    assert main(["run", *common, "--method", "naive", "--bits", "W2A8"]) == 0
    capsys.readouterr()
    assert main(["compare", "--model", "toy-flux", "--out-dir", out_dir, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["toy-flux"]
    naive = next(r for r in rows if r["method"] == "naive")
    assert set(naive["paired"]) == {"jaq", "toy-acc"} and naive["paired"]["jaq"]["n"] == 8
    assert naive["paired"]["jaq"]["mean"] == pytest.approx(naive["metrics"]["jaq"]["value"] - rows[0]["metrics"]["jaq"]["value"], abs=1e-9)
    assert main(["compare", "--model", "toy-flux", "--out-dir", out_dir]) == 0
    out = capsys.readouterr().out
    from qbench.compare_table import fmt_se

    d = naive["paired"]["jaq"]
    assert "Δ paired" in out and "jaq ↑" in out and fmt_se(d["mean"], d["se"], signed=True) in out
