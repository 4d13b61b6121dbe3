"""Ratings from pairwise votes: Bradley-Terry strengths with bootstrap confidence intervals.

Pure functions on lists of ``(a, b, winner)`` votes (``winner`` in ``"a"``, ``"b"``, ``"tie"``).

* **Bradley-Terry** (Bradley & Terry 1952): ``P(i beats j) = p_i / (p_i + p_j)``. The maximum-
  likelihood strengths are found with the MM algorithm of Hunter (2004), "MM algorithms for
  generalized Bradley-Terry models", Ann. Statist. 32(1), eq. (3):
  ``p_i <- W_i / sum_{j != i} n_ij / (p_i + p_j)``, ``W_i`` = wins of ``i``, ``n_ij`` = comparisons of
  ``i`` and ``j``; a tie counts as half a win to each side (Rao & Kupper's simplest treatment).
  Strengths are normalised to geometric mean 1 and reported on the Elo scale,
  ``rating = 1000 + 400 log10 p`` (so 400 points = 10:1 odds).
* The MLE exists only when the comparison graph is strongly connected in the win direction (Ford
  1957; Hunter 2004 assumption 1). To keep every configuration finite (one that won or lost every
  vote), each pair of compared configurations gets ``prior`` virtual ties (default 0.5: a
  half-win each way; the usual regulariser, e.g. Chatbot Arena's). With ``prior=0`` a configuration
  without a win or without a loss raises :class:`ValueError`.
* **Bootstrap CIs**: the votes are resampled with replacement ``n_boot`` times (fixed ``seed``:
  the same votes give the same interval), the ratings refitted, and the 2.5 / 97.5 percentiles
  reported (a 95 % percentile interval, Efron & Tibshirani 1993, ch. 13).

Hand-written (a few lines of numpy) because no maintained library fits Bradley-Terry with ties
and a bootstrap; ``choix`` (MM/ILSR) is unmaintained since 2022.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

ELO_BASE, ELO_SCALE = 1000.0, 400.0

Vote = tuple[str, str, str]


def win_matrix(votes: Sequence[Vote], items: Sequence[str]) -> np.ndarray:
    """``W[i, j]`` = wins of ``items[i]`` over ``items[j]`` (a tie: 0.5 each); float64 ``(n, n)``."""
    index = {k: i for i, k in enumerate(items)}
    w = np.zeros((len(items), len(items)))
    for a, b, winner in votes:
        if a == b:
            continue
        i, j = index[a], index[b]
        if winner == "a":
            w[i, j] += 1
        elif winner == "b":
            w[j, i] += 1
        elif winner == "tie":
            w[i, j] += 0.5
            w[j, i] += 0.5
        else:
            raise ValueError(f"winner must be a, b or tie (got {winner!r})")
    return w


def bradley_terry(w: np.ndarray, prior: float = 0.5, tol: float = 1e-10, max_iter: int = 10000) -> np.ndarray:
    """Bradley-Terry strengths (geometric mean 1 over the items compared; NaN for an item in no
    comparison; float64 ``(n,)``) from the win matrix ``w`` (:func:`win_matrix`) by Hunter's MM
    iteration; ``prior`` virtual ties per compared pair.

    Raises ValueError (``prior=0``) when some item has no win or no loss (the MLE is infinite)."""
    w = np.asarray(w, dtype=float)
    n = w.shape[0]
    if n == 0:
        return np.zeros(0)
    if prior <= 0 and n > 1:
        played = (w + w.T).sum(axis=1) > 0
        if np.any(w.sum(axis=1)[played] <= 0) or np.any(w.sum(axis=0)[played] <= 0):
            raise ValueError("an item without a win or without a loss: the Bradley-Terry MLE is infinite (use prior > 0)")
    return _mm(w[None], prior, tol, max_iter)[0]


def _mm(w: np.ndarray, prior: float, tol: float, max_iter: int) -> np.ndarray:
    """Hunter's MM iteration on a batch of win matrices ``(B, n, n)`` at once -> ``(B, n)``."""
    compared = (w + np.swapaxes(w, 1, 2)) > 0
    w = w + (prior / 2.0) * compared  # prior virtual ties = prior/2 wins each way
    games = w + np.swapaxes(w, 1, 2)
    wins = w.sum(axis=2)
    played = games.sum(axis=2) > 0  # an item in no comparison gets NaN (a bootstrap sample that left it out)
    p = np.ones(wins.shape)
    for _ in range(max_iter):
        denom = (games / (p[:, :, None] + p[:, None, :])).sum(axis=2)
        new = np.where(played, np.maximum(wins, 1e-300) / np.where(played, denom, 1.0), 1.0)
        logs = np.where(played, np.log(new), 0.0)
        new = new / np.exp(logs.sum(axis=1, keepdims=True) / np.maximum(played.sum(axis=1, keepdims=True), 1))
        done = np.max(np.abs(np.log(new) - np.log(p))) < tol
        p = new
        if done:
            break
    return np.where(played, p, np.nan)


def elo_scale(p: np.ndarray) -> np.ndarray:
    """Bradley-Terry strengths on the Elo scale: ``1000 + 400 log10 p``."""
    return ELO_BASE + ELO_SCALE * np.log10(p)


def ratings(votes: Sequence[Vote], items: Sequence[str] | None = None, *, prior: float = 0.5, n_boot: int = 1000,
            seed: int = 0, level: float = 0.95) -> dict[str, dict[str, Any]]:
    """Per item: ``rating`` (Elo scale), ``lo``/``hi`` (bootstrap percentile interval at ``level``),
    ``votes`` (votes it took part in), ``wins``/``losses``/``ties``. ``items`` default: every item
    named in a vote, sorted. Items in no vote get ``rating`` None."""
    items = sorted({x for a, b, _ in votes for x in (a, b)}) if items is None else list(items)
    out: dict[str, dict[str, Any]] = {k: {"rating": None, "lo": None, "hi": None, "votes": 0, "wins": 0, "losses": 0, "ties": 0}
                                      for k in items}
    for a, b, winner in votes:
        for me, other_won, won in ((a, "b", "a"), (b, "a", "b")):
            out[me]["votes"] += 1
            out[me]["wins" if winner == won else "losses" if winner == other_won else "ties"] += 1
    voted = [k for k in items if out[k]["votes"]]
    if not voted:
        return out
    point = elo_scale(bradley_terry(win_matrix(votes, voted), prior))
    boot = bootstrap(votes, voted, prior=prior, n_boot=n_boot, seed=seed)
    alpha = (1.0 - level) / 2.0
    for i, k in enumerate(voted):
        out[k]["rating"] = float(point[i])
        if boot.size:
            out[k]["lo"], out[k]["hi"] = (float(x) for x in np.nanquantile(boot[:, i], [alpha, 1.0 - alpha]))
    return out


def bootstrap(votes: Sequence[Vote], items: Sequence[str], *, prior: float = 0.5, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """``(n_boot, len(items))`` Elo-scale ratings, each refitted on the votes resampled with
    replacement (numpy ``default_rng(seed)``; all resamples fitted at once as a batch); NaN where a
    resample left an item out; empty when ``n_boot`` is 0 or there are no votes."""
    if not n_boot or not votes:
        return np.zeros((0, len(items)))
    rng = np.random.default_rng(seed)
    index = {k: i for i, k in enumerate(items)}
    # resampling N votes with replacement = multinomial counts over the distinct (a, b, outcome)
    # votes, weighted by how often each was cast: the same distribution, without touching every vote
    kinds: dict[tuple[int, int, float], int] = {}
    for a, b, winner in votes:
        key = (index[a], index[b], {"a": 1.0, "b": 0.0, "tie": 0.5}[winner])
        kinds[key] = kinds.get(key, 0) + 1
    ia = np.array([k[0] for k in kinds])
    ib = np.array([k[1] for k in kinds])
    score = np.array([k[2] for k in kinds])
    counts = np.array(list(kinds.values()), dtype=float)
    n = len(items)
    k = rng.multinomial(len(votes), counts / counts.sum(), size=n_boot)  # (n_boot, kinds)
    w = np.zeros((n_boot, n, n))
    for j in range(len(counts)):
        w[:, ia[j], ib[j]] += k[:, j] * score[j]
        w[:, ib[j], ia[j]] += k[:, j] * (1.0 - score[j])
    return elo_scale(_mm(w, prior, 1e-10, 10000))


def win_probability(r_a: float, r_b: float) -> float:
    """P(a beats b) under Bradley-Terry from two Elo-scale ratings: ``1 / (1 + 10^((r_b - r_a)/400))``."""
    return 1.0 / (1.0 + math.pow(10.0, (r_b - r_a) / ELO_SCALE))

