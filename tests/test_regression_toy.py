"""Regression benchmark through the real harness: every cell of ``qbench.regress.CELLS`` (fp, naive
W8A8 / W4A8, Q-Sched W4A8 with its committed checkpoint, ...) on both shipped toy models runs
through ``qbench.harness.run`` (the path of ``qbench run``) on ``toy:32`` and must not be worse
than ``reports/baselines/toy.json`` by more than the tolerances stored there, which were derived
from measured run-to-run and machine-to-machine noise (``reports/scripts/make_baseline.py
--noise``; the numbers are in the file and in reports/README.md). ``qbench regress`` runs the
same check with a table of what moved. Speed and memory: ``make bench`` (not CI).
"""
from __future__ import annotations

import pytest

from qbench import regress


@pytest.fixture(scope="module")
def baseline():
    return regress.load_baseline()


@pytest.mark.parametrize("model", regress.MODELS)
def test_toy_model_has_not_regressed(model, baseline, tmp_path):
    selected = regress.cells((model,))
    missing = [c["id"] for c in selected if c["id"] not in baseline["cells"]]
    assert not missing, f"cells without a baseline: {missing}; run `python reports/scripts/make_baseline.py --add`"
    current = regress.measure(selected, str(tmp_path), say=lambda msg: None)
    rows = regress.check_quality({**baseline, "cells": {c["id"]: baseline["cells"][c["id"]] for c in selected}}, current)
    assert len(rows) == sum(len(baseline["cells"][c["id"]]["metrics"]) - (2 if c["method"] == "fp" else 0) for c in selected)
    assert regress.failures(rows) == []


def test_every_registered_method_has_a_regression_cell():
    from qbench.catalog import METHODS

    covered = {m for m, _, _ in regress.CELLS}
    # a method that only scores a pipeline handed to harness.run (capability runs_from_config
    # False) is tested where that pipeline is built (tests/test_external_pipe.py)
    assert sorted(e.name for e in METHODS if e.name not in covered and e.load().CAPABILITIES.runs_from_config) == []


def test_tolerances_cover_the_measured_noise(baseline):
    """Each tolerance is at least the noise measured for its metric (and the derivation is stored)."""
    noise = baseline["noise"]["per_metric"]
    assert set(baseline["tolerance"]) == set(regress.METRICS)
    for metric, tol in baseline["tolerance"].items():
        measured = noise.get(metric, {"max_abs": 0.0, "max_rel": 0.0})["max_rel" if tol["kind"] == "rel" else "max_abs"]
        assert tol["value"] >= measured and tol["rule"], metric
    assert len(baseline["noise"]["variants"]) >= 3


def test_check_quality_flags_worse_beyond_tolerance_only():
    base = {"tolerance": {"psnr": {"kind": "abs", "value": 0.5}, "fd-toyclip": {"kind": "rel", "value": 0.15}},
            "cells": {"m/naive W4A8": {"method": "naive", "metrics": {"psnr": 45.0, "fd-toyclip": 2.0}},
                      "m/fp": {"method": "fp", "metrics": {"psnr": 100.0, "fd-toyclip": 2.0}}}}
    status = lambda cur: {(r["cell"], r["metric"]): r["status"] for r in regress.check_quality(base, cur)}
    ok = status({"m/naive W4A8": {"psnr": 44.6, "fd-toyclip": 2.29}, "m/fp": {"psnr": 1.0, "fd-toyclip": 2.0}})
    assert ok == {("m/naive W4A8", "psnr"): "ok", ("m/naive W4A8", "fd-toyclip"): "ok", ("m/fp", "fd-toyclip"): "ok"}  # fp psnr: itself
    bad = status({"m/naive W4A8": {"psnr": 44.4, "fd-toyclip": 2.31}, "m/fp": {"psnr": 100.0, "fd-toyclip": 1.6}})
    assert bad == {("m/naive W4A8", "psnr"): "WORSE", ("m/naive W4A8", "fd-toyclip"): "WORSE", ("m/fp", "fd-toyclip"): "better"}
    rows = regress.check_quality(base, {"m/fp": {"psnr": 100.0, "fd-toyclip": 2.0}})
    assert [r["status"] for r in rows if r["cell"] == "m/naive W4A8"] == ["missing", "missing"]
    assert len(regress.failures(rows)) == 2


def test_check_speed_uses_the_recorded_noise():
    def bench(name, med, peak, mn=None):
        return {"name": name, "fullname": f"tests/bench/x.py::{name}", "stats": {"median": med, "min": med if mn is None else mn},
                "extra_info": {"peak_generate_mib": peak}}

    base = {"benchmarks": [bench("a", 0.100, 5.0), bench("b", 0.100, 5.0)]}
    cur = {"benchmarks": [bench("a", 0.119, 5.9), bench("b", 0.121, 7.1, mn=0.100), bench("c", 0.1, 1.0)]}
    rows = regress.check_speed(base, cur, {"latency_fail_pct": 20, "memory_fail_mib": 2})  # median by default
    assert [(r["cell"], r["metric"], r["status"]) for r in rows] == [
        ("a", "median ms", "ok"), ("a", "peak MiB", "ok"), ("b", "median ms", "WORSE"), ("b", "peak MiB", "WORSE"), ("c", "median ms", "new")]
    rows = regress.check_speed(base, cur, {"latency_fail_pct": 20, "memory_fail_mib": 2, "stat": "min"})
    assert [(r["cell"], r["metric"], r["status"]) for r in rows if r["metric"].endswith("ms")] == [
        ("a", "min ms", "ok"), ("b", "min ms", "ok"), ("c", "min ms", "new")]


def test_int_mm_dependent_cells_are_not_checked_where_int_mm_is_inexact(monkeypatch):
    """torchao's int8dq runs torch._int_mm, whose int16 pair sums saturate on a CPU without a
    VNNI/AMX int8 dot: its cells are ``n/a (CPU)`` there (the baseline was recorded on an exact CPU),
    checked as usual where int_mm is exact; other cells are always checked."""
    base = {"tolerance": {"jaq": {"kind": "abs", "value": 0.002}},
            "cells": {"toy-flux/torchao W8A8": {"method": "torchao", "metrics": {"jaq": 1.83}},
                      "toy-flux/naive W8A8": {"method": "naive", "metrics": {"jaq": 1.83}}}}
    cur = {"toy-flux/torchao W8A8": {"jaq": 1.77}, "toy-flux/naive W8A8": {"jaq": 1.77}}
    monkeypatch.setattr(regress, "int_mm_exact", lambda: (False, "inexact: int16 pair sums saturate"))
    rows = {r["cell"]: r["status"] for r in regress.check_quality(base, cur)}
    assert rows == {"toy-flux/torchao W8A8": "n/a (CPU)", "toy-flux/naive W8A8": "WORSE"}
    monkeypatch.setattr(regress, "int_mm_exact", lambda: (True, "exact"))
    assert {r["status"] for r in regress.check_quality(base, cur)} == {"WORSE"}


def test_a_cell_may_carry_its_own_measured_tolerance():
    """A cell's own tolerance (measured for it, with its rule) wins over the metric's; every cell
    that has one states how it was measured."""
    base = {"tolerance": {"ssim": {"kind": "abs", "value": 0.0002}},
            "cells": {"a": {"method": "mixdq", "metrics": {"ssim": 0.9927}, "tolerance": {"ssim": {"kind": "abs", "value": 0.0009}}},
                      "b": {"method": "naive", "metrics": {"ssim": 0.9927}}}}
    rows = {r["cell"]: r["status"] for r in regress.check_quality(base, {"a": {"ssim": 0.9924}, "b": {"ssim": 0.9924}})}
    assert rows == {"a": "ok", "b": "WORSE"}
    for cid, cell in regress.load_baseline()["cells"].items():
        for metric, tol in (cell.get("tolerance") or {}).items():
            assert tol["value"] > 0 and tol["rule"], (cid, metric)
