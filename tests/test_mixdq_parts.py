"""MixDQ's parts on plain tensors (fast): SQNR, the budget split, the ILP against brute force,
the BOS-aware layer in both modes, the per-prompt SQNR of replayed denoiser calls."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from qbench.quant import allocate as al
from qbench.quant.bos import BOSAwareLinear, token0_analysis, token_keep_mask
from qbench.quant.linear import QuantLinear
from qbench.quant.spec import QuantConfig


def test_sqnr_is_mixdqs_formula():
    rng = np.random.default_rng(0)
    t = rng.normal(size=(3, 4, 5))
    p = t + 0.1 * rng.normal(size=t.shape)
    want = 10 * math.log10(np.sum(t ** 2) / np.sum((p - t) ** 2))
    assert al.sqnr(p, t) == pytest.approx(want, rel=1e-12)
    assert al.sqnr(torch.tensor(p, dtype=torch.float32), torch.tensor(t, dtype=torch.float32)) == pytest.approx(want, rel=1e-5)
    assert al.sqnr(t, t) == math.inf and al.sqnr(t, t, cap=200.0) == 200.0
    assert al.sqnr(2 * t, t) == pytest.approx(0.0, abs=1e-12)  # error as large as the signal: 0 dB
    with pytest.raises(ValueError):
        al.sqnr(p[:1], t)
    with pytest.raises(ValueError):
        al.sqnr(p, np.zeros_like(t))


@pytest.mark.parametrize("r,k", [(0.5, 1.0), (1.3, 0.46), (2.0, 1.36), (0.1, 0.9)])
def test_budget_split_keeps_the_overall_mean(r, k):
    b_q, b_c = al.budget_split(5.0, r, k)
    assert b_c == pytest.approx(k * b_q)
    assert b_q == pytest.approx(5.0 * (1 + r) / (k * r + 1))
    # parameter-weighted mean of the groups: P_c = r, P_q = 1
    assert (b_c * r + b_q * 1.0) / (r + 1.0) == pytest.approx(5.0)
    with pytest.raises(ValueError):
        al.budget_split(5.0, r, 0.0)


def test_sweep_points_keep_group_means_inside_the_candidate_range():
    pts = al.sweep_points(al.budget_grid(3.0), al.MIXDQ_K_SWEEP, 1.0, (2, 8), (2, 8))
    assert pts and all(2 <= p.b_q <= 8 and 2 <= p.b_c <= 8 for p in pts)
    assert len(al.MIXDQ_K_SWEEP) == 10 and al.MIXDQ_K_SWEEP[0] == pytest.approx(0.46) and al.MIXDQ_K_SWEEP[-1] == pytest.approx(1.36)
    assert al.budget_grid(5.0)[0] == pytest.approx(4.7) and al.budget_grid(5.0)[-1] == 5.0 and len(al.budget_grid(5.0)) == 10
    # a group-free split: one point per budget
    assert [p.k for p in al.split_points([4.0], [0.5, 2.0], {"a": 10, "b": 20}, set(), (2, 8))] == [1.0]


def _instance(seed, n=5):
    rng = np.random.default_rng(seed)
    names = [f"l{i}" for i in range(n)]
    params = {x: int(rng.integers(10, 200)) for x in names}
    scores = {}
    for x in names:  # more bits = less damage, with layer-specific sensitivity
        s = rng.uniform(0.5, 5.0)
        scores[x] = {2: -s * 4 + rng.normal(0, 0.1), 4: -s + rng.normal(0, 0.1), 8: -0.1 * s}
    return scores, params


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("budget", [3.0, 4.0, 5.5])
def test_ilp_matches_brute_force_and_respects_the_budget(seed, budget):
    scores, params = _instance(seed)
    best, best_s = al.brute_force_allocation(scores, params, budget, tol=0.3)
    got = al.solve_allocation(scores, params, budget, tol=0.3)
    if best is None:
        assert got is None
        return
    assert got is not None
    assert abs(al.mean_bits(got, params) - budget) <= 0.3 + 1e-9
    assert al.allocation_score(got, scores) == pytest.approx(best_s, abs=1e-9)


def test_ilp_budget_within_002_and_infeasible_is_none():
    rng = np.random.default_rng(1)
    names = [f"l{i}" for i in range(40)]
    params = {x: int(rng.integers(100, 5000)) for x in names}
    scores = {x: {2: -3.0 * (i + 1), 4: -1.0 * (i + 1), 8: 0.0} for i, x in enumerate(names)}
    for budget in (3.0, 4.0, 5.0):
        got = al.solve_allocation(scores, params, budget, tol=0.02)
        assert got is not None and abs(al.mean_bits(got, params) - budget) <= 0.02 + 1e-12
    assert al.solve_allocation({"a": {2: 0.0, 8: 1.0}}, {"a": 10}, 5.0, tol=0.02) is None  # one layer: 2 or 8, never 5
    # a width missing for a layer is not allowed for it
    got = al.solve_allocation({"a": {2: 0.0, 8: 1.0}, "b": {2: 0.0}}, {"a": 10, "b": 10}, 5.0, tol=0.01)
    assert got == {"a": 8, "b": 2}


def test_most_sensitive_alternates_groups_and_rest_budget():
    scores = {"q1": 10.0, "q2": 5.0, "c1": 0.9, "c2": 0.5, "q3": 20.0}
    assert al.most_sensitive(scores, {"c1", "c2"}, 3) == ["q2", "c2", "q1"]
    params = {"a": 10, "b": 30}
    rest = al.rest_budget(8.0, params, ["a"])
    assert (16 * 10 + rest * 30) / 40 == pytest.approx(8.0)


# -- the BOS-aware layer ----------------------------------------------------------------------------
def _layer(k=64, n=32, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Linear(k, n)


@pytest.mark.parametrize("mode", ["simulate", "kernel"])
@pytest.mark.parametrize("bits", ["W4A8", "W8A8"])
def test_bos_layer_fp_on_token0_quantized_elsewhere(mode, bits):
    lin = _layer()
    spec = QuantConfig(bits=bits, mode=mode).resolve_spec(*((4, 8) if bits == "W4A8" else (8, 8)))
    bos = 5.0 * torch.randn(64)  # an outlier-heavy BOS embedding
    x = torch.randn(3, 7, 64)
    x[:, 0] = bos
    layer = BOSAwareLinear.from_float(lin, spec, "bos", bos)
    plain = QuantLinear.from_float(lin, spec)
    y = layer(x)
    with torch.no_grad():
        fp0 = F.linear(bos, lin.weight, lin.bias)
    assert torch.allclose(y[:, 0], fp0.expand(3, -1), atol=1e-6)  # token 0: full precision
    assert torch.equal(y[:, 1:], plain(x)[:, 1:])  # tokens 1:: the quantized path (per-token activations)
    assert not torch.allclose(y[:, 1:], F.linear(x[:, 1:], lin.weight, lin.bias), atol=1e-4)
    assert layer.bos_hits == 3 and layer.bos_misses == 0
    assert not hasattr(layer, "fp_weight")  # only the cached vectors, no float weight
    assert layer.packed_nbytes == plain.packed_nbytes + (64 + 32) * 4


@pytest.mark.parametrize("mode", ["simulate", "kernel"])
def test_bos_output_is_cached_not_recomputed(mode):
    lin = _layer()
    spec = QuantConfig(bits="W4A8", mode=mode).resolve_spec(4, 8)
    bos = torch.randn(64)
    layer = BOSAwareLinear.from_float(lin, spec, "bos", bos)
    sentinel = torch.arange(32, dtype=torch.float32)
    layer.bos_output.copy_(sentinel)  # a recomputation from the weights would not give this
    x = torch.randn(2, 5, 64)
    x[:, 0] = bos
    assert torch.equal(layer(x)[:, 0], sentinel.expand(2, -1))
    # a row whose token 0 is not BOS (e.g. a zero negative-prompt embedding) keeps the quantized output
    x[1, 0] = 0.0
    y = layer(x)
    assert torch.equal(y[0, 0], sentinel) and not torch.equal(y[1, 0], sentinel)
    assert layer.bos_misses == 1


@pytest.mark.parametrize("mode", ["simulate", "kernel"])
def test_first_and_outlier_token_rules(mode):
    lin = _layer()
    spec = QuantConfig(bits="W4A8", mode=mode).resolve_spec(4, 8)
    x = torch.randn(2, 6, 64)
    x[0, 3] *= 50  # the outlier token of row 0
    with torch.no_grad():
        fp = F.linear(x, lin.weight, lin.bias)
    first = BOSAwareLinear.from_float(lin, spec, "first")
    y = first(x)
    assert torch.allclose(y[:, 0], fp[:, 0], atol=1e-5) and not torch.allclose(y[:, 1], fp[:, 1], atol=1e-4)
    out = BOSAwareLinear.from_float(lin, spec, "outlier")
    y = out(x)
    assert torch.allclose(y[0, 3], fp[0, 3], atol=1e-4) and not torch.allclose(y[0, 0], fp[0, 0], atol=1e-4)
    keep = token_keep_mask(x, "outlier")
    assert keep.sum() == 2 and bool(keep[0, 3])


def test_token0_analysis_and_size_report_counts_bos_vectors_at_16_bits():
    x = torch.randn(4, 5, 8)
    x[:, 0] = torch.ones(8) * 10
    a = token0_analysis(x)
    assert a["prompt_independent"] and a["max_rel_diff"] == 0.0 and a["outlier_ratio"] > 1
    x[2, 0, 0] = 0.0
    assert not token0_analysis(x)["prompt_independent"]

    from qbench.quant.api import size_report

    lin = _layer()
    spec = QuantConfig(bits="W4A8", mode="kernel").resolve_spec(4, 8)
    m1 = torch.nn.Sequential(QuantLinear.from_float(lin, spec))
    m2 = torch.nn.Sequential(BOSAwareLinear.from_float(lin, spec, "bos", torch.randn(64)))
    assert size_report(m2)["deploy_bytes"] - size_report(m1)["deploy_bytes"] == 2 * (64 + 32)
    assert size_report(m2)["bytes_16bit"] == size_report(m1)["bytes_16bit"]


def test_per_prompt_sqnr_of_replayed_calls():
    from qbench.quant.sensitivity import CapturedCall, per_prompt_sqnr

    torch.manual_seed(0)
    t1, t2 = torch.randn(4, 3), torch.randn(4, 3)  # two steps, rows [p0, p1, p0, p1] (guidance doubles)
    calls = [CapturedCall((), {}, t1, [0, 1, 0, 1]), CapturedCall((), {}, t2, [0, 1, 0, 1])]
    p1, p2 = t1 + 0.1 * torch.randn(4, 3), t2 + 0.2 * torch.randn(4, 3)
    s = per_prompt_sqnr([p1, p2], calls, 2)
    for i in range(2):
        rows = [0 + i, 2 + i]
        want = al.sqnr(torch.cat([p1[rows].flatten(), p2[rows].flatten()]), torch.cat([t1[rows].flatten(), t2[rows].flatten()]))
        assert s[i] == pytest.approx(want)


def test_c_level_prints_of_the_ilp_solver_stay_off_stdout():
    """HiGHS printf()s debug lines despite ``disp=False``; they went into ``qbench calibrate``'s
    JSON on stdout. What C code writes while the solver runs goes to stderr."""
    import subprocess
    import sys

    code = ("import ctypes; from qbench.quant.allocate import _c_stdout_to_stderr, solve_allocation\n"
            "print('before', flush=True)\n"
            "with _c_stdout_to_stderr():\n"
            "    ctypes.CDLL(None).printf(b'from C\\n')\n"
            "print(solve_allocation({'a': {2: 0.1, 8: 0.9}, 'b': {2: 0.5, 8: 0.6}}, {'a': 1, 'b': 1}, 5.0, tol=0.02))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == ["before", "{'a': 8, 'b': 2}"]
    assert "from C" in out.stderr
