"""What the arena, the automatic judges, ``compare`` and ``report`` share about pairwise votes.

* **Configurations** that can be voted on against each other: the finished runs of one model whose
  comparable settings were all recorded (:func:`qbench.comparison.run_settings`) and match (same
  weights, prompts, seed, steps, ...), the latest run of each configuration
  (:func:`qbench.comparison.select_runs`), each with its image folder and identity keys
  (:func:`qbench.store_votes.run_keys`). Same settings means same prompts, so every pair of them
  has the same prompts and seeds.
* **Ratings**: the Bradley-Terry ratings (:mod:`qbench.rating`) per configuration (image-folder
  identity key) from the stored votes of people (``arena``) or of one automatic judge
  (``judge-<name>``), attached to runs as metrics (value: rating on the Elo scale, ``n``: votes,
  ``details``: the 95 % bootstrap interval), so ``compare`` and ``report`` show them like any other.
"""
from __future__ import annotations

import os
from typing import Any

from qbench.config import stable_hash
from qbench.errors import QBenchError

N_BOOT = 1000  # bootstrap resamples of the interval (fixed seed 0)
PEOPLE = "arena"  # the metric name of people's votes; automatic judges: "judge-<name>"


def groups(store, model: str) -> list[list[dict[str, Any]]]:
    """The model's finished runs that can be voted on, by comparable settings (largest group
    first); each group holds the latest run of each configuration with ``_images`` (its image
    folder identity key). Runs without recorded settings, identity keys or images are left out."""
    from qbench.comparison import run_settings, select_runs
    from qbench.store_votes import VoteError, run_keys

    out: dict[str, list[dict[str, Any]]] = {}
    kept, _ = select_runs(store.runs(model=model))
    for r in kept:
        settings, complete = run_settings(r)
        if not complete or not (r.get("result") or {}).get("images_dir"):
            continue
        try:
            r["_ident"], r["_images"] = run_keys(r)
        except VoteError:
            continue
        out.setdefault(stable_hash(settings), []).append(r)
    # one configuration per image key (two runs with the same pixels: the latest)
    result = []
    for members in out.values():
        by_images: dict[str, dict[str, Any]] = {}
        for r in members:
            by_images[r["_images"]] = r
        result.append(list(by_images.values()))
    return sorted(result, key=lambda g: -len(g))


def label(run: dict[str, Any]) -> str:
    """A configuration's display label: the stored label and its tag."""
    tag = (run.get("config") or {}).get("tag")
    return run["label"] + (f" [{tag}]" if tag else "")


def prompts_and_paths(run: dict[str, Any]) -> tuple[list, dict[str, str]]:
    """The run's prompts (generation order) and prompt id -> PNG path (existing files only)."""
    from qbench.results_export import image_paths, run_prompts

    prompts = run_prompts(run)
    paths = {pid: p for pid, p in image_paths(run, prompts).items() if os.path.isfile(p)}
    return prompts, paths


def seed_of(run: dict[str, Any], prompt) -> int:
    from qbench.generation import seed_for
    from qbench.results_export import run_config

    return seed_for(run_config(run), prompt)


def rating_names(store, model: str) -> list[str]:
    """Metric names of the ratings the model has votes for: ``arena`` (people) first, then
    ``judge-<name>`` per automatic judge."""
    from qbench.store_votes import votes

    names = set()
    for v in votes(store, model):
        names.add(PEOPLE if not v["judge"] else "judge-" + v["voter"].split(":", 1)[1])
    return sorted(names, key=lambda n: (n != PEOPLE, n))


def configuration_ratings(store, model: str, name: str = PEOPLE, voter: str | None = None) -> dict[str, dict[str, Any]]:
    """Image-folder key -> rating (:func:`qbench.rating.ratings`: rating, lo, hi, votes, wins,
    losses, ties) from the model's votes of people (``name="arena"``, optionally one ``voter``) or
    of the judge ``judge-<name>``."""
    from qbench.rating import ratings
    from qbench.store_votes import votes

    if name == PEOPLE:
        vs = votes(store, model, voter=voter, judges=False)
    elif name.startswith("judge-"):
        vs = votes(store, model, voter="judge:" + name[len("judge-"):], judges=True)
    else:
        raise QBenchError(f"no rating {name!r}: `arena` (people's votes) or judge-<name>")
    return ratings([(v["images_a"], v["images_b"], v["winner"]) for v in vs], n_boot=N_BOOT, seed=0)


def as_metric(r: dict[str, Any], name: str) -> dict[str, Any]:
    """A rating as a stored-metric dict (value, stderr None, n = votes, details with the interval)."""
    who = "blind votes cast in `qbench serve`'s arena (voters by name in the store)" if name == PEOPLE else f"automatic judge {name[len('judge-'):]}"
    return {"value": r["rating"], "stderr": None, "n": r["votes"], "higher_is_better": True,
            "details": {"ci95": [r["lo"], r["hi"]], "votes": r["votes"], "wins": r["wins"], "losses": r["losses"], "ties": r["ties"],
                        "formula": "Bradley-Terry MLE (Hunter 2004 MM, tie = half a win, 0.5 virtual ties per pair), Elo scale 1000 + 400 log10 p; "
                                   f"95 % percentile bootstrap over votes ({N_BOOT} resamples, seed 0)",
                        "source": who}}


def with_ratings(store, runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``runs`` with every rating of their model added to ``metrics`` (runs whose images were
    voted on only); the runs are changed in place and returned."""
    from qbench.store_votes import VoteError, run_keys

    cache: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for r in runs:
        try:
            _, images = run_keys(r)
        except VoteError:
            continue
        if (r["model"], "") not in cache:
            cache[(r["model"], "")] = {n: {} for n in rating_names(store, r["model"])}
        for name in cache[(r["model"], "")]:
            if (r["model"], name) not in cache:
                cache[(r["model"], name)] = configuration_ratings(store, r["model"], name)
            table = cache[(r["model"], name)]
            if images in table and table[images]["rating"] is not None:
                r.setdefault("metrics", {})[name] = as_metric(table[images], name)
    return runs
