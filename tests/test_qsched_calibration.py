"""Coefficient search (qbench/calibration.py) on synthetic objectives: no model, no torch."""
from __future__ import annotations

import json

import numpy as np
import pytest

from qbench.calibctx import ScoreCache
from qbench.calibration import (
    CachedObjective,
    grid_search,
    lattice,
    own_search,
    point_key,
    run_search,
)
from qbench.errors import ConfigError, QBenchError

AXIS = lattice(0.8, 1.2, 50)  # the public code's grid
N_PROMPTS = 25
PIDS = [f"p{i}" for i in range(N_PROMPTS)]
OFFSETS = np.random.default_rng(0).normal(size=N_PROMPTS)


def synthetic(a: float, b: float, calls: list | None = None):
    """A smooth per-prompt objective with its maximum at (a, b); prompts shift and tilt it."""

    def compute(point, idx):
        if calls is not None:
            calls.append((point_key(point), tuple(idx)))
        x, y = point
        return [0.1 * OFFSETS[i] - (x - a) ** 2 - 3 * (y - b) ** 2 + 0.01 * OFFSETS[i] * (x - 1) for i in idx]

    return compute


@pytest.mark.parametrize("opt", [(0.93, 1.07), (0.8, 1.2), (1.0, 1.0), (1.13, 0.85), (1.2, 0.8)])
def test_own_search_matches_grid_with_20x_fewer_images(opt):
    grid = grid_search(CachedObjective(synthetic(*opt), PIDS), [AXIS, AXIS])
    assert grid.images == 50 * 50 * N_PROMPTS
    own = own_search(CachedObjective(synthetic(*opt), PIDS), [AXIS, AXIS], max_images=grid.images // 20)
    assert own.best_score >= grid.best_score
    assert own.best_point == grid.best_point
    assert own.images * 20 <= grid.images
    assert not own.stopped_by_budget
    # the trajectory records every evaluation, in order, with the running best
    assert len(own.trajectory) == own.evaluations
    assert [t["images"] for t in own.trajectory] == sorted(t["images"] for t in own.trajectory)
    assert own.trajectory[-1]["best_score"] == own.best_score


@pytest.mark.parametrize("p1,p2,h2,w", [((0.9, 0.9), (1.1, 1.15), 0.05, 0.01), ((1.0, 1.0), (0.82, 1.18), 0.03, 0.002)])
def test_own_search_bimodal_finds_the_higher_peak(p1, p2, h2, w):
    """Two peaks (smooth max): the higher one is found, not the one nearest the coarse leader."""

    def compute(point, idx):
        a = -((point[0] - p1[0]) ** 2 + (point[1] - p1[1]) ** 2) / w
        b = h2 - ((point[0] - p2[0]) ** 2 + (point[1] - p2[1]) ** 2) / w
        return [0.1 * OFFSETS[i] + np.logaddexp(50 * a, 50 * b) / 50 for i in idx]

    grid = grid_search(CachedObjective(compute, PIDS), [AXIS, AXIS])
    own = own_search(CachedObjective(compute, PIDS), [AXIS, AXIS], max_images=grid.images // 20)
    assert own.best_point == grid.best_point and own.best_score >= grid.best_score
    assert own.images * 20 <= grid.images


def test_polish_spends_the_budget_next_to_the_optimum_on_a_rugged_landscape():
    """Independent per-point noise (a 'rugged' landscape like a real JAQ surface on few prompts):
    with polish the own search uses exactly its budget, and everything after the pattern search is
    a polish step at or next to the best point; polish=0 stops at the pattern search's optimum."""
    rng = np.random.default_rng(3)
    bumps = {point_key((x, y)): 2e-4 * rng.standard_normal() for x in AXIS for y in AXIS}

    def compute(point, idx):
        x, y = point
        return [0.1 * OFFSETS[i] - 0.01 * ((x - 0.85) ** 2 + (y - 0.9) ** 2) + bumps[point_key(point)] for i in idx]

    budget = 50 * 50 * N_PROMPTS // 20
    own = own_search(CachedObjective(compute, PIDS), [AXIS, AXIS], max_images=budget)
    bare = own_search(CachedObjective(compute, PIDS), [AXIS, AXIS], max_images=budget, polish=0)
    assert not own.stopped_by_budget and not bare.stopped_by_budget
    assert budget - N_PROMPTS < own.images <= budget and bare.images < own.images
    assert own.best_score >= bare.best_score
    stages = [t["stage"] for t in own.trajectory]
    first = stages.index(next(s for s in stages if s.startswith("polish")))
    assert all(s.startswith("polish") for s in stages[first:])
    grid = grid_search(CachedObjective(compute, PIDS), [AXIS, AXIS])
    ranks = sorted((grid.trajectory[i]["score"] for i in range(len(grid.trajectory))), reverse=True)
    assert own.best_score >= ranks[4]  # among the grid's five best of 2,500 points


def test_extend_follows_an_optimum_outside_the_box():
    own = own_search(CachedObjective(synthetic(0.74, 1.0), PIDS), [AXIS, AXIS], extend=12)
    assert own.best_point[0] == pytest.approx(0.8 - 7 * 0.4 / 49, abs=1e-9)  # ~0.743, the lattice point nearest 0.74
    assert own.best_point[1] == pytest.approx(AXIS[24], abs=1e-9) or own.best_point[1] == pytest.approx(AXIS[25], abs=1e-9)
    outside = [t for t in own.trajectory if t.get("outside_box")]
    assert outside and all(t["point"][0] < 0.8 for t in outside)
    inside = own_search(CachedObjective(synthetic(0.74, 1.0), PIDS), [AXIS, AXIS])
    assert inside.best_point[0] == pytest.approx(0.8) and not any(t.get("outside_box") for t in inside.trajectory)
    assert own.best_score > inside.best_score
    with pytest.raises(ConfigError):
        own_search(CachedObjective(synthetic(0.9, 1.0), PIDS), [AXIS, AXIS], extend=-1)
    with pytest.raises(ConfigError):
        own_search(CachedObjective(synthetic(0.9, 1.0), PIDS), [AXIS, AXIS], polish=-2)


def test_own_search_budget_is_respected():
    own = own_search(CachedObjective(synthetic(0.93, 1.07), PIDS), [AXIS, AXIS], max_images=300)
    assert own.images <= 300 and own.stopped_by_budget
    assert own.trajectory[-1]["stage"] == "budget-final" and own.trajectory[-1]["n_prompts"] == N_PROMPTS
    with pytest.raises(QBenchError):  # not even one point on all prompts fits
        own_search(CachedObjective(synthetic(0.93, 1.07), PIDS), [AXIS, AXIS], max_images=20)


def test_own_search_four_scalars_finds_separable_optimum():
    axis = lattice(0.8, 1.2, 21)
    opt = (0.9, 1.1, 1.04, 0.96)

    def compute(point, idx):
        return [0.05 * OFFSETS[i] - sum((p - o) ** 2 for p, o in zip(point, opt)) for i in idx]

    obj = CachedObjective(compute, PIDS[:10])
    own = own_search(obj, [axis] * 4)
    assert own.best_point == pytest.approx(opt, abs=1e-9)
    assert own.images * 20 <= 21**4 * 10


def test_resume_after_interruption_recomputes_nothing(tmp_path):
    cache = str(tmp_path / "cache.jsonl")
    ctx = {"model": "synthetic", "seed": 42}
    full_calls: list = []
    ref = own_search(CachedObjective(synthetic(0.93, 1.07, full_calls), PIDS, cache=ScoreCache(str(tmp_path / "ref.jsonl"), ctx)), [AXIS, AXIS])

    calls: list = []
    inner = synthetic(0.93, 1.07, calls)

    class Killed(Exception):
        pass

    def dying(point, idx):
        if len(calls) == 40:
            raise Killed
        return inner(point, idx)

    with pytest.raises(Killed):
        own_search(CachedObjective(dying, PIDS, cache=ScoreCache(cache, ctx)), [AXIS, AXIS])
    assert len(calls) == 40
    # simulate a kill in the middle of writing a line
    with open(cache, "a") as f:
        f.write('{"k": "0.9,')
    obj = CachedObjective(inner, PIDS, cache=ScoreCache(cache, ctx))
    assert obj.images_cached == sum(len(i) for _, i in calls)
    n_before = len(calls)
    res = own_search(obj, [AXIS, AXIS])
    assert res.best_point == ref.best_point and res.best_score == ref.best_score
    done = [(k, p) for k, idx in calls for p in idx]
    assert len(done) == len(set(done)), "a (point, prompt) pair was computed twice"
    assert len(calls) > n_before
    assert res.images_generated + obj.images_cached == sum(len(i) for _, i in full_calls)
    # a third run is served entirely from the cache
    calls.clear()
    again = own_search(CachedObjective(inner, PIDS, cache=ScoreCache(cache, ctx)), [AXIS, AXIS])
    assert calls == [] and again.best_point == ref.best_point


def test_cache_is_keyed_by_context(tmp_path):
    cache = str(tmp_path / "c.jsonl")
    CachedObjective(synthetic(1, 1), PIDS, cache=ScoreCache(cache, {"bits": "W4A8"})).mean((1.0, 1.0))
    with pytest.raises(QBenchError):
        CachedObjective(synthetic(1, 1), PIDS, cache=ScoreCache(cache, {"bits": "W8A8"}))
    with open(cache) as f:
        header = json.loads(f.readline())
    assert header == {"context": {"bits": "W4A8"}}


def test_grid_and_own_share_the_cache():
    calls: list = []
    obj = CachedObjective(synthetic(0.93, 1.07, calls), PIDS[:5], batch_size=5)
    g = grid_search(obj, [AXIS[::7], AXIS[::7]])
    n = len(calls)
    o = own_search(obj, [AXIS[::7], AXIS[::7]])
    assert len(calls) == n  # every point the own search needs is already on the grid
    assert o.images_generated == 0 and o.images > 0
    assert o.best_score >= g.best_score


def test_batching_and_bad_input():
    calls: list = []
    obj = CachedObjective(synthetic(1, 1, calls), PIDS, batch_size=5)
    obj.mean((1.0, 1.0), 12)
    assert [len(i) for _, i in calls] == [5, 5, 2]
    obj.mean((1.0, 1.0))
    assert [len(i) for _, i in calls] == [5, 5, 2, 5, 5, 3]
    with pytest.raises(ConfigError):
        run_search("bayes", obj, [AXIS, AXIS])
    with pytest.raises(ConfigError):
        CachedObjective(synthetic(1, 1), [])
    with pytest.raises(ConfigError):
        lattice(1.2, 0.8, 5)
    with pytest.raises(QBenchError):
        CachedObjective(lambda p, idx: [float("nan")] * len(idx), PIDS).mean((1.0, 1.0))
