"""Coefficient search over an abstract, per-prompt objective (used by Q-Sched).

Everything here is independent of torch and diffusers: a *point* is a tuple of floats (e.g.
``(c_eps0, c_x0)``), and the objective is a function ``compute(point, prompt_indices) ->
per-prompt scores`` (higher is better; for Q-Sched: JAQ of the image generated for each prompt).
The quantity searched is the mean score over the calibration prompts.

* :class:`CachedObjective` - evaluates (point, prompt) pairs in batches, stores every computed
  score in a :class:`qbench.calibctx.ScoreCache` as soon as its batch is done (with a file: a
  killed search restarts where it stopped and nothing is recomputed), and counts generated images.
* :func:`grid_search` - the public Q-Sched code's search: every point of a lattice, every prompt.
* :func:`own_search` - qbench's search on the *same* lattice, with far fewer images:
  1. coarse lattice (``coarse`` values per axis, or axis lines through the start point when the
     product would exceed ``max_coarse_points``);
  2. successive halving over prompt prefixes (``rungs``: e.g. 5 -> 10 -> all prompts; keep the
     best ``keep`` fraction at each rung; prefix scores are reused, never recomputed);
  3. lattice pattern search at all prompts from each of the ``starts`` best survivors: evaluate
     the neighbours at step ``s`` (axis moves, plus diagonals for 2 dimensions), move to the best
     improvement, halve ``s`` when none, stop at a local optimum with ``s = 1`` (or on joining an
     earlier start's path) or when ``max_images`` is spent;
  4. polish: the lattice points around the best point that are not yet known at all prompts,
     nearest first (Chebyshev, then Manhattan distance), re-centred on every new best, out to
     radius ``polish`` — by default as far as ``max_images`` reaches (radius 2 without a budget
     or beyond two dimensions): whatever budget stages 1-3 leave is spent next to the optimum.
  With ``extend = k`` the lattice continues ``k`` steps beyond both ends of every axis (same
  spacing) for stages 3-4, so an optimum on the edge of the public box can be followed outside it;
  such points are marked ``outside_box`` in the trajectory. ``extend = 0`` (the default) stays on
  the grid's own lattice.
  Every evaluation goes into ``trajectory`` (stage, point, prompts, mean score, images so far).

Ties are broken by evaluation order (the first point reaching the best mean wins), so both
searches are deterministic.
"""
from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qbench.calibctx import ScoreCache
from qbench.errors import ConfigError, QBenchError

Point = tuple[float, ...]
ComputeFn = Callable[[Point, list[int]], Sequence[float]]

SEARCHES = ("grid", "own")
KEY_DECIMALS = 10


def point_key(point: Sequence[float]) -> str:
    """Cache key of a point: its values rounded to 1e-10, comma separated."""
    return ",".join(repr(round(float(v), KEY_DECIMALS)) for v in point)


def lattice(lo: float, hi: float, n: int) -> list[float]:
    """The public code's axis: ``numpy.linspace(lo, hi, n)`` as Python floats."""
    if n < 1:
        raise ConfigError(f"grid size must be >= 1, got {n}")
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
        raise ConfigError(f"grid range must be finite with lo <= hi, got [{lo}, {hi}]")
    return [float(v) for v in np.linspace(lo, hi, n)]


# -- the cached objective ----------------------------------------------------------------------
class CachedObjective:
    """Per-prompt scores of points, kept in a :class:`qbench.calibctx.ScoreCache` (in memory, or
    an append-only JSONL file that a killed search resumes from: see ``ScoreCache``).

    ``prompt_ids`` are stable ids; only they (not their position) key the cache, as
    ``(point_key(point), prompt_id)``. The cache's context (model, bits, base method, steps,
    seed, scorer, ...: anything else that changes a score) is the caller's business: a file made
    under another context is refused when the ``ScoreCache`` opens it.
    """

    def __init__(
        self,
        compute: ComputeFn,
        prompt_ids: Sequence[str],
        *,
        batch_size: int = 5,
        cache: ScoreCache | None = None,
        on_images: Callable[[int], None] | None = None,
        map_batches: Callable[[Callable[[Any], Any], list[Any]], list[Any]] | None = None,
    ):
        if batch_size < 1:
            raise ConfigError(f"calibration batch size must be >= 1, got {batch_size}")
        if not prompt_ids:
            raise ConfigError("calibration needs at least one prompt")
        if len(set(prompt_ids)) != len(prompt_ids):
            raise ConfigError("calibration prompt ids must be unique")
        self.compute = compute
        self.prompt_ids = list(prompt_ids)
        self.batch_size = int(batch_size)
        self.cache = cache if cache is not None else ScoreCache(None)
        self.on_images = on_images
        #: ``map_batches(fn, batches) -> [fn(b) ...]``: the calibration context's, which splits the
        #: batches of one point across the ranks of a sharded run (same results on every rank)
        self.map_batches = map_batches or (lambda fn, items: [fn(b) for b in items])
        self.images_generated = 0  # computed by this run (by every rank together when sharded)
        self.images_cached = self.cache.loaded  # found in the cache file when opened
        self.images_requested = 0  # (point, prompt) pairs asked for, cached or not
        self.compute_seconds = 0.0

    @property
    def n_prompts(self) -> int:
        return len(self.prompt_ids)

    @property
    def cache_path(self) -> str | None:
        return self.cache.path

    # evaluation ---------------------------------------------------------------------------------
    def cached(self, point: Point, n_prompts: int | None = None) -> bool:
        key = point_key(point)
        ids = self.prompt_ids[: n_prompts or self.n_prompts]
        return all((key, p) in self.cache for p in ids)

    def scores(self, point: Point, n_prompts: int | None = None) -> np.ndarray:
        """Scores of ``point`` on the first ``n_prompts`` prompts (all by default)."""
        n = self.n_prompts if n_prompts is None else int(n_prompts)
        if not 1 <= n <= self.n_prompts:
            raise ValueError(f"n_prompts must be in [1, {self.n_prompts}], got {n}")
        key = point_key(point)
        missing = [i for i in range(n) if (key, self.prompt_ids[i]) not in self.cache]
        self.images_requested += n
        batches = [missing[s : s + self.batch_size] for s in range(0, len(missing), self.batch_size)]
        pt = tuple(float(v) for v in point)
        t0 = time.perf_counter()
        outs = self.map_batches(lambda idx: [float(v) for v in self.compute(pt, idx)], batches)
        self.compute_seconds += time.perf_counter() - t0
        for idx, out in zip(batches, outs):
            if len(out) != len(idx):
                raise ValueError(f"objective returned {len(out)} scores for {len(idx)} prompts")
            if not all(math.isfinite(v) for v in out):
                raise QBenchError(f"objective returned a non-finite score at point {point_key(point)}")
            self.cache.put([(key, self.prompt_ids[i], s) for i, s in zip(idx, out)])
            self.images_generated += len(idx)
            if self.on_images is not None:
                self.on_images(len(idx))
        return np.array([self.cache.get(key, self.prompt_ids[i]) for i in range(n)], dtype=np.float64)

    def mean(self, point: Point, n_prompts: int | None = None) -> float:
        return float(self.scores(point, n_prompts).mean())


# -- results -------------------------------------------------------------------------------------
@dataclass
class SearchResult:
    search: str
    best_point: Point
    best_score: float  # mean over all calibration prompts
    evaluations: int  # points evaluated at some number of prompts
    images: int  # distinct (point, prompt) pairs the search needed (= images generated from an empty cache)
    images_generated: int  # pairs actually computed in this process (cache misses)
    wall_s: float
    trajectory: list[dict[str, Any]] = field(default_factory=list)
    stopped_by_budget: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "search": self.search,
            "best_point": list(self.best_point),
            "best_score": self.best_score,
            "evaluations": self.evaluations,
            "images": self.images,
            "images_generated": self.images_generated,
            "wall_s": self.wall_s,
            "stopped_by_budget": self.stopped_by_budget,
            "trajectory": self.trajectory,
        }


class _Tracker:
    """Evaluates points through the objective and records the trajectory and the best point."""

    def __init__(self, obj: CachedObjective, search: str):
        self.obj = obj
        self.search = search
        self.trajectory: list[dict[str, Any]] = []
        self.best_point: Point | None = None
        self.best_score = -math.inf
        self.t0 = time.perf_counter()
        self.gen0 = obj.images_generated
        self.evaluations = 0
        self._pairs: set[tuple[str, int]] = set()  # distinct (point, prompt) pairs this search used

    @property
    def images(self) -> int:
        """Distinct images this search needed (what it would generate with an empty cache)."""
        return len(self._pairs)

    def eval(self, point: Point, stage: str, n_prompts: int | None = None, outside_box: bool = False) -> float:
        n = self.obj.n_prompts if n_prompts is None else n_prompts
        score = self.obj.mean(point, n)
        self.evaluations += 1
        key = point_key(point)
        self._pairs.update((key, i) for i in range(n))
        if n == self.obj.n_prompts and score > self.best_score:
            self.best_score, self.best_point = score, tuple(point)
        self.trajectory.append(
            {
                "stage": stage,
                "point": [float(v) for v in point],
                "n_prompts": n,
                "score": score,
                "images": self.images,
                "best_score": None if self.best_point is None else self.best_score,
                "t": round(time.perf_counter() - self.t0, 3),
            }
        )
        if outside_box:
            self.trajectory[-1]["outside_box"] = True
        return score

    def result(self, stopped_by_budget: bool = False) -> SearchResult:
        if self.best_point is None:
            raise QBenchError(f"{self.search} search evaluated no point on all prompts (budget too small?)")
        return SearchResult(
            search=self.search,
            best_point=self.best_point,
            best_score=self.best_score,
            evaluations=self.evaluations,
            images=self.images,
            images_generated=self.obj.images_generated - self.gen0,
            wall_s=time.perf_counter() - self.t0,
            trajectory=self.trajectory,
            stopped_by_budget=stopped_by_budget,
        )


# -- searches ------------------------------------------------------------------------------------
def grid_search(obj: CachedObjective, axes: Sequence[Sequence[float]]) -> SearchResult:
    """Every point of the product lattice ``axes[0] x axes[1] x ...`` on every prompt (public code)."""
    if not axes:
        raise ConfigError("grid search needs at least one axis")
    tr = _Tracker(obj, "grid")
    for idx in np.ndindex(*[len(a) for a in axes]):
        tr.eval(tuple(float(axes[d][i]) for d, i in enumerate(idx)), "grid")
    return tr.result()


def _coarse_indices(n: int, coarse: int) -> list[int]:
    if coarse >= n:
        return list(range(n))
    return sorted({round(float(v)) for v in np.linspace(0, n - 1, coarse)})


def _nearest_index(axis: Sequence[float], value: float) -> int:
    return int(np.argmin(np.abs(np.asarray(axis) - value)))


def own_search(
    obj: CachedObjective,
    axes: Sequence[Sequence[float]],
    *,
    start: Sequence[float] | None = None,
    coarse: int = 7,
    max_coarse_points: int = 64,
    rungs: Sequence[int] = (5, 10),
    keep: float = 0.25,
    min_keep: int = 3,
    max_images: int | None = None,
    starts: int = 2,
    polish: int | None = None,
    extend: int = 0,
) -> SearchResult:
    """Coarse lattice + successive halving over prompts + lattice pattern search (module docstring).

    ``start`` (default: 1.0 on every axis) is where axis lines go through when the coarse product
    is too large. ``rungs`` are prompt-prefix sizes before the full set; ``max_images`` caps the
    (point, prompt) pairs the search may use (default: none); ``starts`` is how many of the
    last rung's best points start a pattern search (a second start guards against a local optimum);
    ``polish`` is the radius of the final neighbourhood sweep (None: as far as the budget allows);
    ``extend`` lets stages 3-4 leave the box by that many lattice steps per side.
    """
    if not axes:
        raise ConfigError("own search needs at least one axis")
    if not 0 < keep <= 1:
        raise ConfigError(f"keep must be in (0, 1], got {keep}")
    if (polish is not None and int(polish) < 0) or int(extend) < 0:
        raise ConfigError(f"polish and extend must be >= 0, got {polish} and {extend}")
    polish, extend = (None if polish is None else int(polish)), int(extend)
    d = len(axes)
    sizes = [len(a) for a in axes]
    start = [1.0] * d if start is None else list(start)
    start_idx = tuple(_nearest_index(axes[k], start[k]) for k in range(d))
    tr = _Tracker(obj, "own")
    budget = math.inf if max_images is None else int(max_images)

    def value(k: int, i: int) -> float:
        ax = axes[k]
        if 0 <= i < len(ax):
            return float(ax[i])
        step = (float(ax[-1]) - float(ax[0])) / (len(ax) - 1) if len(ax) > 1 else 0.0
        return float(ax[0]) + i * step if i < 0 else float(ax[-1]) + (i - len(ax) + 1) * step

    def pt(idx: Sequence[int]) -> Point:
        return tuple(value(k, i) for k, i in enumerate(idx))

    def inside(idx: Sequence[int]) -> bool:
        return all(0 <= idx[k] < sizes[k] for k in range(d))

    def allowed(idx: Sequence[int]) -> bool:
        # outside the box, coefficients must stay positive (a scale of 0 or below is meaningless)
        return all(-extend <= idx[k] < sizes[k] + extend for k in range(d)) and (inside(idx) or min(pt(idx)) > 0)

    def affordable(point: Point, n_prompts: int, reserve: int = 0) -> bool:
        key = point_key(point)
        new = sum((key, i) not in tr._pairs for i in range(n_prompts))
        return tr.images + new + reserve <= budget

    # 1. coarse candidates
    cidx = [_coarse_indices(n, coarse) for n in sizes]
    if math.prod(len(c) for c in cidx) <= max_coarse_points:
        cands = [tuple(int(cidx[k][j]) for k, j in enumerate(ix)) for ix in np.ndindex(*[len(c) for c in cidx])]
    else:  # axis lines through the start point
        seen: dict[tuple[int, ...], None] = {start_idx: None}
        for k in range(d):
            for i in cidx[k]:
                seen[start_idx[:k] + (i,) + start_idx[k + 1 :]] = None
        cands = list(seen)

    # 2. successive halving over prompt prefixes
    rung_sizes = sorted({min(int(r), obj.n_prompts) for r in rungs if int(r) >= 1} | {obj.n_prompts})
    stopped = False
    for r, n in enumerate(rung_sizes):
        scored = []
        for c in cands:
            # below the full set, keep enough budget to evaluate one leader on all prompts
            if not affordable(pt(c), n, reserve=0 if n == obj.n_prompts else obj.n_prompts):
                stopped = True
                break
            scored.append((tr.eval(pt(c), f"halving@{n}", n), c))
        scored.sort(key=lambda sc: -sc[0])  # stable: ties keep evaluation order
        if stopped:
            # out of budget mid-rung: spend what is left on the leader at all prompts, if possible
            leader = scored[0][1] if scored else cands[0]
            if tr.best_point is None and affordable(pt(leader), obj.n_prompts):
                tr.eval(pt(leader), "budget-final")
            break
        if n == obj.n_prompts:
            cands = [c for _, c in scored]
            break
        k_keep = max(min_keep, math.ceil(len(scored) * keep))
        cands = [c for _, c in scored[:k_keep]]

    # 3. pattern search on the lattice, all prompts, from the best `starts` survivors of the last rung
    if not stopped and tr.best_point is not None:
        spacing = max(max(1, (n - 1) // max(1, len(c) - 1)) for n, c in zip(sizes, cidx))
        dirs: list[tuple[int, ...]] = []
        for k in range(d):
            for sgn in (1, -1):
                dirs.append(tuple(sgn if j == k else 0 for j in range(d)))
        if d == 2:
            dirs += [(1, 1), (1, -1), (-1, 1), (-1, -1)]
        visited: set[tuple[int, ...]] = set()  # points some earlier pattern search stood on
        for start_no, cur in enumerate(list(cands)[: max(1, int(starts))]):
            if cur in visited or stopped:
                continue
            cur_score = obj.mean(pt(cur))  # cached: evaluated in the last rung
            visited.add(cur)
            s = max(1, spacing // 2)
            while True:
                best_nb, best_nb_score = None, cur_score
                for dv in dirs:
                    nb = tuple(cur[k] + s * dv[k] for k in range(d))
                    if not allowed(nb):
                        continue
                    if not affordable(pt(nb), obj.n_prompts):
                        stopped = True
                        break
                    sc = tr.eval(pt(nb), f"pattern{start_no}@s={s}", outside_box=not inside(nb))
                    if sc > best_nb_score:
                        best_nb, best_nb_score = nb, sc
                if stopped:
                    break
                if best_nb is not None:
                    cur, cur_score = best_nb, best_nb_score
                    if cur in visited:  # joined an earlier search's path: same local optimum
                        break
                    visited.add(cur)
                elif s > 1:
                    s //= 2
                else:
                    break

    # 4. polish: the full neighbourhood of the best point, nearest first, around each new best.
    # polish=None: as far as the budget reaches (radius capped at 2 beyond two dimensions)
    if polish is None:
        radius = 2 if budget == math.inf or d > 2 else max(sizes) + extend
    else:
        radius = polish
    if not stopped and tr.best_point is not None and radius > 0:
        index_of = {pt(ix): ix for ix in _visited_indices(tr, axes, value, sizes, extend)}
        done: set[tuple[int, ...]] = set()
        offsets = sorted(
            (o for o in itertools.product(range(-radius, radius + 1), repeat=d) if any(o)),
            key=lambda o: (max(map(abs, o)), sum(map(abs, o)), o),
        )
        out_of_budget = False
        while not out_of_budget:
            centre = index_of.get(tr.best_point)
            if centre is None or centre in done:
                break
            done.add(centre)
            for o in offsets:
                nb = tuple(centre[k] + o[k] for k in range(d))
                if not allowed(nb) or (point_key(pt(nb)), obj.n_prompts - 1) in tr._pairs:
                    continue
                if not affordable(pt(nb), obj.n_prompts):
                    out_of_budget = True  # the polish ends where the budget does; the search is complete
                    break
                before = tr.best_point
                tr.eval(pt(nb), f"polish@r={max(map(abs, o))}", outside_box=not inside(nb))
                index_of[pt(nb)] = nb
                if tr.best_point != before:
                    break  # re-centre on the new best
    return tr.result(stopped_by_budget=stopped)


def _visited_indices(tr: "_Tracker", axes, value, sizes, extend) -> list[tuple[int, ...]]:
    """Lattice indices of every point the search evaluated (points are looked up, not solved for)."""
    d = len(axes)
    ranges = [range(-extend, sizes[k] + extend) for k in range(d)]
    lookup = [{point_key((value(k, i),)): i for i in ranges[k]} for k in range(d)]
    out = []
    for t in tr.trajectory:
        try:
            out.append(tuple(lookup[k][point_key((t["point"][k],))] for k in range(d)))
        except KeyError:
            continue
    return out


def run_search(name: str, obj: CachedObjective, axes: Sequence[Sequence[float]], **options: Any) -> SearchResult:
    """Dispatch by name (``grid`` or ``own``); unknown names are refused."""
    if name == "grid":
        if options:
            raise ConfigError(f"grid search takes no options, got {', '.join(sorted(options))}")
        return grid_search(obj, axes)
    if name == "own":
        return own_search(obj, axes, **options)
    raise ConfigError(f"unknown search {name!r}; expected one of {', '.join(SEARCHES)}")


# -- the default calibration prompt set -----------------------------------------------------------
CALIB_HOLDOUT = 100


def coco2017_calib() -> tuple:
    """The LAST 100 prompts of ``coco2017`` (original indices kept, so seeds are unchanged), minus
    those whose caption text also occurs among the first 4900 (2 do): 98 prompts, held out from
    ``coco2017:N`` for any N <= 4900 by position AND by text. ``coco2017-calib:25`` is Q-Sched's
    default calibration set.
    """
    from qbench.prompts import coco2017

    allp = coco2017()
    head = {p.text for p in allp[: len(allp) - CALIB_HOLDOUT]}
    return tuple(p for p in allp[-CALIB_HOLDOUT:] if p.text not in head)
