"""Pure statistics used by the metrics (no torch, no state)."""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

DEFAULT_BOOTSTRAP = 1000
DEFAULT_SEED = 0


def bootstrap_stderr(values: Sequence[float] | np.ndarray, n_boot: int = DEFAULT_BOOTSTRAP, seed: int = DEFAULT_SEED) -> float | None:
    """Bootstrap standard error of the mean: std (ddof=1) of ``n_boot`` resampled means.

    None for fewer than two values (no spread to estimate). Deterministic for a given ``seed``.
    Non-finite values propagate (the result is then non-finite too), they are never dropped.
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size < 2:
        return None
    if n_boot < 2:
        raise ValueError("n_boot must be >= 2")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(n_boot, x.size))
    means = x[idx].mean(axis=1)
    return float(means.std(ddof=1))


def mean_and_stderr(values: Sequence[float] | np.ndarray, n_boot: int = DEFAULT_BOOTSTRAP, seed: int = DEFAULT_SEED) -> tuple[float, float | None]:
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0:
        return math.nan, None
    if x.size < 2:  # one value has no spread to estimate: no standard error (shown as n/a)
        return float(x.mean()), None
    return float(x.mean()), bootstrap_stderr(x, n_boot=n_boot, seed=seed)


def paired_difference(base: dict[str, float], other: dict[str, float]) -> dict[str, float] | None:
    """Mean and standard error of ``other[k] - base[k]`` over the keys both have (prompt ids).

    Pairing the same prompt (and seed) in two runs cancels the prompt-to-prompt spread, so much
    smaller differences are resolved than by comparing the two means. None without common keys;
    ``se`` is None for a single pair.
    """
    keys = [k for k in other if k in base]
    if not keys:
        return None
    return paired_arrays([other[k] for k in keys], [base[k] for k in keys])


def paired_arrays(values: Sequence[float] | np.ndarray, base: Sequence[float] | np.ndarray) -> dict[str, float]:
    """Mean, standard error (None for one pair: nothing to estimate it from, shown as n/a and never
    "resolved") and count of ``values - base``, element by element."""
    d = np.asarray(values, dtype=np.float64) - np.asarray(base, dtype=np.float64)
    se = float(d.std(ddof=1) / math.sqrt(d.size)) if d.size > 1 else None
    return {"mean": float(d.mean()), "se": se, "n": int(d.size)}
