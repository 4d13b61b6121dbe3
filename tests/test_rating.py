"""qbench.rating: Bradley-Terry (Hunter's MM) against hand-computed cases, ties, the prior, the
bootstrap interval."""
import math

import numpy as np
import pytest

from qbench.rating import (
    bootstrap,
    bradley_terry,
    elo_scale,
    ratings,
    win_matrix,
    win_probability,
)


def test_two_items_two_to_one():
    # A beats B twice, B beats A once: the MLE has p_A / p_B = 2 (the observed odds)
    w = win_matrix([("A", "B", "a"), ("A", "B", "a"), ("A", "B", "b")], ["A", "B"])
    p = bradley_terry(w, prior=0)
    assert p[0] / p[1] == pytest.approx(2.0, rel=1e-8)
    assert p[0] * p[1] == pytest.approx(1.0)  # geometric mean 1
    r = elo_scale(p)
    assert r[0] - r[1] == pytest.approx(400 * math.log10(2), rel=1e-8)  # 120.41 points


def test_a_tie_is_half_a_win():
    # A wins once and ties once: 1.5 wins to 0.5, odds 3
    p = bradley_terry(win_matrix([("A", "B", "a"), ("B", "A", "tie")], ["A", "B"]), prior=0)
    assert p[0] / p[1] == pytest.approx(3.0, rel=1e-8)


def test_cycle_is_a_draw_and_three_items_hand_case():
    cyc = [("A", "B", "a"), ("B", "C", "a"), ("C", "A", "a")]
    p = bradley_terry(win_matrix(cyc, ["A", "B", "C"]), prior=0)
    assert np.allclose(p, 1.0)
    # A beats B 2-1, B beats C 2-1, A vs C 1-1. The MM fixed point satisfies the likelihood
    # equations W_i = sum_j n_ij p_i / (p_i + p_j) (Hunter 2004, eq. 2): check them directly
    votes = [("A", "B", "a")] * 2 + [("A", "B", "b")] + [("B", "C", "a")] * 2 + [("B", "C", "b")] + [("A", "C", "a"), ("A", "C", "b")]
    w = win_matrix(votes, ["A", "B", "C"])
    p = bradley_terry(w, prior=0)
    n = w + w.T
    expected = (n * p[:, None] / (p[:, None] + p[None, :])).sum(axis=1)
    assert np.allclose(expected, w.sum(axis=1), atol=1e-8)
    assert p[0] > p[1] > p[2]  # A strongest, C weakest


def test_prior_keeps_an_unbeaten_item_finite():
    votes = [("A", "B", "a")]
    with pytest.raises(ValueError, match="infinite"):
        bradley_terry(win_matrix(votes, ["A", "B"]), prior=0)
    p = bradley_terry(win_matrix(votes, ["A", "B"]), prior=0.5)
    # 1 win + 0.25 virtual against 0.25: odds 5
    assert p[0] / p[1] == pytest.approx(5.0, rel=1e-8)


def test_ratings_counts_ci_and_fixed_seed():
    votes = [("A", "B", "a")] * 30 + [("A", "B", "b")] * 10 + [("B", "C", "a")] * 20 + [("B", "C", "tie")] * 20
    r = ratings(votes, n_boot=300, seed=1)
    assert r["A"]["votes"] == 40 and r["A"]["wins"] == 30 and r["A"]["losses"] == 10
    assert r["C"]["ties"] == 20 and r["C"]["wins"] == 0
    assert r["A"]["rating"] > r["B"]["rating"] > r["C"]["rating"]
    for k in "ABC":
        assert r[k]["lo"] <= r[k]["rating"] <= r[k]["hi"]
    assert ratings(votes, n_boot=300, seed=1) == r  # same votes, same seed: same interval
    more = ratings(votes * 4, n_boot=300, seed=1)
    assert (more["A"]["hi"] - more["A"]["lo"]) < (r["A"]["hi"] - r["A"]["lo"])  # 4x the votes: narrower
    assert win_probability(1120.41, 1000.0) == pytest.approx(2 / 3, rel=1e-4)


def test_item_without_votes_and_bootstrap_leaving_an_item_out():
    r = ratings([("A", "B", "a")], items=["A", "B", "Z"], n_boot=50)
    assert r["Z"]["rating"] is None and r["Z"]["votes"] == 0
    b = bootstrap([("A", "B", "a"), ("C", "D", "b")], ["A", "B", "C", "D"], n_boot=200, seed=0)
    assert np.isnan(b).any() and np.isfinite(np.nanmean(b, axis=0)).all()
    with pytest.raises(ValueError):
        win_matrix([("A", "B", "x")], ["A", "B"])
