"""Mixed-precision bit allocation as in MixDQ: pure functions, no model.

Sources: Zhao et al., "MixDQ: Memory-Efficient Few-Step Text-to-Image Diffusion Models with
Metric-Decoupled Mixed Precision Quantization", ECCV 2024 (arXiv 2405.17873), and its public code
(github.com/thu-nics/MixDQ, ``mixed_precision_scripts/optimize/integer_programming.py`` and
``get_sensitivity/sdxl_turbo/quant_quality.py``).

* :func:`sqnr` — signal-to-quantization-noise ratio of a prediction ``p`` against the
  full-precision target ``t``: ``10 * log10(sum(t^2) / sum((p - t)^2))`` in dB (MixDQ's
  ``LossFunction``), computed in float64.
* :func:`budget_split` — MixDQ's ``get_mean_bit``: with ``r = P_content / P_quality`` (parameter
  counts of the two layer groups) and a ratio ``k = b_c / b_q``, the group means
  ``b_q = B (1 + r) / (k r + 1)`` and ``b_c = k b_q`` keep the overall parameter-weighted mean at
  ``B``: ``(b_c P_c + b_q P_q) / (P_c + P_q) = B``.
* :func:`solve_allocation` — the integer program: binary ``c[i, b]`` (layer ``i`` at width ``b``),
  ``sum_b c[i, b] = 1``, maximise ``sum s[i, b] c[i, b]`` subject to
  ``(B - tol) P <= sum_i sum_b b p_i c[i, b] <= (B + tol) P`` (``p_i`` the layer's parameters,
  ``P = sum p_i``, ``tol`` = 0.02 in the public code), solved exactly with
  ``scipy.optimize.milp`` (HiGHS) instead of the public code's OR-tools SCIP.
* :func:`sweep_points` — the (B, k) grid the public code sweeps (weights:
  ``k in linspace(0.46, 1.36, 10)``, ``B in linspace(target - 0.3, target, 10)``), keeping the
  points whose group means lie inside each group's range.
* MixDQ's group rule (``integer_programming.py``, ``get_mixed_precision_config_weight`` and its
  ``__main__`` loop): the quality (output-SQNR) layers get weight widths {4, 8} only
  (:data:`MIXDQ_QUALITY_WIDTHS`), the content (SSIM) layers {2, 4, 8}; a split is kept only when
  ``4 <= b_q <= 8`` and ``2 <= b_c <= 8``. So the least overall mean the rule reaches is
  ``(4 P_q + 2 P_c) / (P_q + P_c)`` (:func:`least_mean`).
* :func:`sqnr_of_energies` — one SQNR over a whole batch from per-sample signal and error
  energies (MixDQ's ``LossFunction`` is called once on the whole batch of captured UNet outputs).
"""
from __future__ import annotations

import ctypes
import math
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

#: MixDQ's public sweep of k = b_c / b_q for weights (integer_programming.py)
MIXDQ_K_SWEEP = tuple(float(x) for x in np.linspace(0.46, 1.36, 10))
#: MixDQ's public sweep of the overall budget below the target: linspace(target - 0.3, target, 10)
MIXDQ_B_BELOW, MIXDQ_B_POINTS = 0.3, 10
#: MixDQ's weight widths of the quality (output-SQNR) and content (SSIM) groups (integer_programming.py)
MIXDQ_QUALITY_WIDTHS, MIXDQ_CONTENT_WIDTHS = (4, 8), (2, 4, 8)


def sqnr(pred, target, cap: float | None = None) -> float:
    """``10*log10(sum(t^2)/sum((p-t)^2))`` in dB over all elements of ``pred`` / ``target``
    (tensors or arrays of one shape), in float64. Identical inputs give ``+inf`` (or ``cap``).
    Raises ``ValueError`` on a shape mismatch or an all-zero target."""
    p = _as_f64(pred)
    t = _as_f64(target)
    if p.shape != t.shape:
        raise ValueError(f"sqnr: shapes differ: {p.shape} vs {t.shape}")
    sig = float(np.sum(t * t))
    err = float(np.sum((p - t) ** 2))
    if sig == 0.0:
        raise ValueError("sqnr: the target is all zeros")
    if err == 0.0:
        return math.inf if cap is None else float(cap)
    v = 10.0 * math.log10(sig / err)
    return v if cap is None else min(v, float(cap))


def sqnr_of_energies(signal: Sequence[float], error: Sequence[float], cap: float | None = None) -> float:
    """One SQNR in dB over a batch: ``10*log10(sum(signal) / sum(error))`` where ``signal[i]`` =
    ``sum(t_i^2)`` and ``error[i]`` = ``sum((p_i - t_i)^2)`` of sample ``i`` (equal to :func:`sqnr`
    of the concatenated batch). No error gives ``+inf`` (or ``cap``); raises ``ValueError`` on
    lengths that differ or no signal."""
    if len(signal) != len(error):
        raise ValueError(f"sqnr_of_energies: {len(signal)} signal vs {len(error)} error energies")
    sig, err = float(np.sum(np.asarray(signal, np.float64))), float(np.sum(np.asarray(error, np.float64)))
    if sig <= 0.0:
        raise ValueError("sqnr_of_energies: the target is all zeros")
    if err == 0.0:
        return math.inf if cap is None else float(cap)
    v = 10.0 * math.log10(sig / err)
    return v if cap is None else min(v, float(cap))


def _as_f64(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().to("cpu").double().numpy()
    return np.asarray(x, dtype=np.float64)


def budget_split(budget: float, ratio: float, k: float) -> tuple[float, float]:
    """``(b_q, b_c)`` for overall mean ``budget`` B, ``ratio`` r = P_content / P_quality and
    ``k`` = b_c / b_q (MixDQ's ``get_mean_bit``): ``b_q = B(1+r)/(k r+1)``, ``b_c = k b_q``."""
    if ratio < 0 or k <= 0 or budget <= 0:
        raise ValueError(f"budget_split needs budget > 0, ratio >= 0, k > 0 (got {budget}, {ratio}, {k})")
    b_q = budget * (1.0 + ratio) / (k * ratio + 1.0)
    return b_q, k * b_q


@dataclass(frozen=True)
class SweepPoint:
    budget: float  # overall mean B
    k: float  # b_c / b_q
    b_q: float  # mean of the quality group
    b_c: float  # mean of the content group


def sweep_points(budgets: Sequence[float], ks: Sequence[float], ratio: float,
                 range_q: tuple[float, float], range_c: tuple[float, float]) -> list[SweepPoint]:
    """Every (B, k) with ``b_q`` in ``range_q`` and ``b_c`` in ``range_c`` (the public code keeps
    ``4 <= b_q <= 8`` and ``2 <= b_c <= 8``)."""
    out = []
    for b in budgets:
        for k in ks:
            b_q, b_c = budget_split(b, ratio, k)
            if range_q[0] - 1e-9 <= b_q <= range_q[1] + 1e-9 and range_c[0] - 1e-9 <= b_c <= range_c[1] + 1e-9:
                out.append(SweepPoint(float(b), float(k), b_q, b_c))
    return out


def budget_grid(target: float, below: float = MIXDQ_B_BELOW, n: int = MIXDQ_B_POINTS) -> list[float]:
    """``linspace(target - below, target, n)`` (the public code's overall-budget sweep)."""
    return [float(x) for x in np.linspace(target - below, target, n)] if n > 1 else [float(target)]


def mean_bits(bits: Mapping[str, int], params: Mapping[str, int]) -> float:
    """Parameter-weighted mean of ``bits`` over its layers: ``sum b_i p_i / sum p_i``."""
    total = sum(params[n] for n in bits)
    if not total:
        raise ValueError("mean_bits of no parameters")
    return sum(bits[n] * params[n] for n in bits) / total


def act_means(a_bits: Mapping[str, int | None], sizes: Mapping[str, int]) -> tuple[float, float]:
    """Activation-size-weighted mean activation bits ``(over the quantized layers, over every layer)``;
    ``None`` = kept at 16 bits. The first is MixDQ's budget (its ILP's layer set excludes the
    16-bit layers: thu-nics/MixDQ ``integer_programming.py``, ``get_mixed_precision_config_act``),
    the second what the whole denoiser moves. Every layer at 16 -> ``(16.0, 16.0)``."""
    quantized = {n: b for n, b in a_bits.items() if b is not None}
    every = {n: (16 if b is None else b) for n, b in a_bits.items()}
    return (mean_bits(quantized, sizes) if quantized else 16.0), mean_bits(every, sizes)


@contextmanager
def _c_stdout_to_stderr() -> Iterator[None]:
    """Send what C code writes to file descriptor 1 to descriptor 2 meanwhile, so that a
    command's stdout (e.g. ``qbench calibrate``'s JSON) holds only what qbench prints. libc's
    buffer is flushed before the descriptor is restored."""
    try:
        sys.stdout.flush()
        saved = os.dup(1)
    except (OSError, ValueError, AttributeError):  # no real descriptor 1 (embedded interpreters)
        yield
        return
    libc = ctypes.CDLL(None)
    try:
        os.dup2(2, 1)
        yield
    finally:
        libc.fflush(None)
        os.dup2(saved, 1)
        os.close(saved)


def solve_allocation(scores: Mapping[str, Mapping[int, float]], params: Mapping[str, int], budget: float,
                     tol: float = 0.02, candidates: Sequence[int] | None = None) -> dict[str, int] | None:
    """The maximum-score allocation ``{layer: bits}`` with parameter-weighted mean bits within
    ``budget +- tol``, or None when no allocation fits.

    ``scores[layer][b]``: the layer's sensitivity score at width ``b`` (higher = less damage: SSIM,
    SQNR); a width missing for a layer is not allowed for it. ``candidates`` (default: every width
    in ``scores``) restricts the widths. Exact: HiGHS branch and bound with a zero gap."""
    from scipy.optimize import Bounds, LinearConstraint, milp

    names = sorted(scores)
    if not names:
        return {}
    widths = sorted({int(b) for s in scores.values() for b in s} if candidates is None else {int(b) for b in candidates})
    n, m = len(names), len(widths)
    total = float(sum(params[x] for x in names))
    if total <= 0:
        raise ValueError("solve_allocation: layers without parameters")
    c = np.zeros(n * m)
    ub = np.ones(n * m)
    for i, name in enumerate(names):
        for j, b in enumerate(widths):
            s = scores[name].get(b)
            if s is None or not math.isfinite(float(s)):
                ub[i * m + j] = 0.0  # width not measured (or not allowed) for this layer
            else:
                c[i * m + j] = -float(s)  # milp minimises
    one = np.zeros((n, n * m))
    for i in range(n):
        one[i, i * m:(i + 1) * m] = 1.0
    frac = np.array([params[x] / total for x in names])
    load = np.concatenate([frac[i] * np.asarray(widths, dtype=np.float64) for i in range(n)])[None, :]
    cons = [LinearConstraint(one, 1.0, 1.0), LinearConstraint(load, budget - tol, budget + tol)]
    with _c_stdout_to_stderr():  # HiGHS printf()s debug lines despite disp=False (scipy 1.16)
        res = milp(c, constraints=cons, integrality=np.ones(n * m), bounds=Bounds(np.zeros(n * m), ub),
                   options={"mip_rel_gap": 0.0, "disp": False})
    if res.status != 0 or res.x is None:
        return None
    x = np.round(res.x).reshape(n, m)
    return {name: widths[int(np.argmax(x[i]))] for i, name in enumerate(names)}


def brute_force_allocation(scores: Mapping[str, Mapping[int, float]], params: Mapping[str, int], budget: float,
                           tol: float = 0.02) -> tuple[dict[str, int] | None, float]:
    """Reference for tests: enumerate every allocation (tiny instances only) -> (best, its score)."""
    import itertools

    names = sorted(scores)
    best, best_s = None, -math.inf
    for combo in itertools.product(*[sorted(scores[x]) for x in names]):
        alloc = dict(zip(names, combo))
        if abs(mean_bits(alloc, params) - budget) > tol + 1e-12:
            continue
        s = sum(scores[x][b] for x, b in alloc.items())
        if s > best_s:
            best, best_s = alloc, s
    return best, best_s


def allocation_score(alloc: Mapping[str, int], scores: Mapping[str, Mapping[int, float]]) -> float:
    return float(sum(scores[x][b] for x, b in alloc.items()))


def group_allocations(scores: Mapping[str, Mapping[int, float]], params: Mapping[str, int], content: set[str],
                      points: Sequence[SweepPoint], tol: float = 0.02,
                      candidates: Sequence[int] | None = None,
                      quality_candidates: Sequence[int] | None = None) -> list[tuple[SweepPoint, dict[str, int]]]:
    """For each sweep point, the content group solved at ``b_c`` with widths ``candidates`` and the
    quality group at ``b_q`` with ``quality_candidates`` (default ``candidates``; MixDQ: {4, 8}),
    each within ``+- tol``, so the union is within ``B +- tol`` -> the feasible
    ``(point, allocation)`` pairs, in the order of ``points``."""
    sc = {n: s for n, s in scores.items() if n in content}
    sq = {n: s for n, s in scores.items() if n not in content}
    out = []
    for pt in points:
        ac = solve_allocation(sc, params, pt.b_c, tol, candidates) if sc else {}
        aq = solve_allocation(sq, params, pt.b_q, tol, candidates if quality_candidates is None else quality_candidates) if sq else {}
        if ac is not None and aq is not None:
            out.append((pt, {**ac, **aq}))
    return out


def split_points(budget_points: Sequence[float], ks: Sequence[float], params: Mapping[str, int], content: set[str],
                 cand_range: tuple[float, float], quality_range: tuple[float, float] | None = None) -> list[SweepPoint]:
    """The sweep points of ``budget_points`` x ``ks`` for these groups: ``b_c`` in ``cand_range``,
    ``b_q`` in ``quality_range`` (default ``cand_range``; MixDQ: [4, 8]). One point per budget with
    ``k = 1`` when a group is empty (nothing to split), inside the range of the group there is."""
    pc = sum(p for n, p in params.items() if n in content)
    pq = sum(p for n, p in params.items() if n not in content)
    rq = cand_range if quality_range is None else quality_range
    if pc == 0 or pq == 0:
        lo, hi = rq if pc == 0 else cand_range
        return [SweepPoint(float(b), 1.0, float(b), float(b)) for b in budget_points if lo - 1e-9 <= b <= hi + 1e-9]
    return sweep_points(budget_points, ks, pc / pq, rq, cand_range)


def least_mean(params: Mapping[str, int], content: set[str], quality_min: float, content_min: float) -> float:
    """The least parameter-weighted mean bits when every quality layer has at least
    ``quality_min`` and every content layer at least ``content_min`` bits:
    ``(quality_min P_q + content_min P_c) / (P_q + P_c)``."""
    pc = sum(p for n, p in params.items() if n in content)
    pq = sum(p for n, p in params.items() if n not in content)
    if pc + pq <= 0:
        raise ValueError("least_mean of no parameters")
    return (quality_min * pq + content_min * pc) / (pc + pq)


def most_sensitive(scores_at: Mapping[str, float], content: set[str], n: int) -> list[str]:
    """The ``n`` layers with the lowest score, taken alternately from the quality and the content
    group (quality first; their scores are in different units, SQNR dB vs SSIM), each group in
    increasing score order (MixDQ kept 4 SQNR-ranked and 5 SSIM-ranked activation layers in FP16)."""
    q = sorted((n_ for n_ in scores_at if n_ not in content), key=lambda x: (scores_at[x], x))
    c = sorted((n_ for n_ in scores_at if n_ in content), key=lambda x: (scores_at[x], x))
    out: list[str] = []
    while len(out) < n and (q or c):
        for lst in (q, c):
            if lst and len(out) < n:
                out.append(lst.pop(0))
    return out


def rest_budget(budget: float, params: Mapping[str, int], protected: Sequence[str], protected_bits: int = 16) -> float:
    """Mean the unprotected layers must have so that all layers (protected ones at
    ``protected_bits``) average ``budget``: ``(B P - 16 P_fp) / (P - P_fp)``."""
    total = sum(params.values())
    p_fp = sum(params[n] for n in protected)
    if p_fp >= total:
        raise ValueError("every layer is protected")
    return (budget * total - protected_bits * p_fp) / (total - p_fp)


def act_target(budget: float, sizes: Mapping[str, int], protected: Sequence[str], rule: str) -> float:
    """Mean activation bits the unprotected layers are allocated to. ``rule="mixdq"``: ``budget``
    itself, the 16-bit (protected) layers lie outside the budget, as in MixDQ's public code
    (``integer_programming.py``: ``get_mixed_precision_config_act`` drops ``act_sensitivity_1``
    from the ILP's layers and from its ``intensity``); ``rule="loose"``: the protected layers count
    in the mean at 16 bits, so the rest get :func:`rest_budget` (below ``budget``).

    Raises ValueError for another rule or when every layer is protected."""
    if rule == "mixdq":
        if protected and len(set(protected)) >= len(sizes):
            raise ValueError("every layer is protected")
        return float(budget)
    if rule == "loose":
        return rest_budget(budget, sizes, protected)
    raise ValueError(f"unknown allocation rule {rule!r}")
