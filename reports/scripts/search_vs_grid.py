"""Q-Sched calibration: the public grid vs qbench's own search, on one model (reports/qsched-toy.md).

    python reports/scripts/search_vs_grid.py toy-flux toy-calib:25 [--grid-n 50] [--out DIR] [--searches own,grid]

Each search gets its own output directory, hence its own score cache: each pays for every image it
needs (nothing is shared between them). Prints one JSON line per search and writes
``<out>/<model>-summary.json`` (checkpoint summaries with the full trajectories). Resumable: a
killed run restarts where it stopped (the caches are append-only JSONL).
"""
from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def grid_rank(cache: str, point) -> dict:
    """Rank (0 = best) of ``point``'s mean score among all points of a grid search's cache."""
    import numpy as np

    from qbench.calibration import point_key

    scores: dict[str, list[float]] = {}
    with open(cache) as f:
        next(f)
        for line in f:
            r = json.loads(line)
            scores.setdefault(r["k"], []).append(r["s"])
    n = max(len(v) for v in scores.values())
    means = {k: float(np.mean(v)) for k, v in scores.items() if len(v) == n}
    key = point_key(point)
    ranked = sorted(means.values(), reverse=True)
    mine = means.get(key)
    return {"points": len(means), "rank": None if mine is None else sum(v > mine for v in ranked),
            "score": mine, "grid_best": ranked[0]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("calib", help="calibration prompt set, e.g. toy-calib:25")
    ap.add_argument("--grid-n", type=int, default=50)
    ap.add_argument("--bits", default="W4A8")
    ap.add_argument("--out", default="qbench-out/search-vs-grid")
    ap.add_argument("--searches", default="own,grid")
    ap.add_argument("--model-path")
    a = ap.parse_args()

    from qbench.cli import quiet_libraries

    quiet_libraries()
    from qbench.config import RunConfig
    from qbench.methods.qsched import run_calibration

    out = {}
    for search in a.searches.split(","):
        cfg = RunConfig(model=a.model, model_path=a.model_path, method="qsched", bits=a.bits, prompts="toy:1",
                        calib_prompts=a.calib, out_dir=os.path.join(a.out, f"{a.model}-{search}"),
                        method_options={"grid_n": a.grid_n, "search": search, "progress": True})
        t = time.time()
        s = run_calibration(cfg, show_progress=True)
        s["wall_total_s"] = time.time() - t
        out[search] = s
        keys = ("search", "params", "jaq_before", "jaq_searched", "jaq_after", "images", "images_generated",
                "evaluations", "stopped_by_budget", "wall_s")
        print(json.dumps({k: s.get(k) for k in keys}), flush=True)
    if "own" in out and "grid" in out:  # where the own search's point ranks among the grid's points
        out["own_rank_in_grid"] = grid_rank(out["grid"]["cache"], out["own"]["params"])
        print(json.dumps({"own_rank_in_grid": out["own_rank_in_grid"]}), flush=True)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, f"{a.model}-summary.json"), "w") as f:
        json.dump(out, f, indent=1, default=str)


if __name__ == "__main__":
    main()
