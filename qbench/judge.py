"""``qbench judge``: automatic judges vote on the arena's pairs, so a user study can be approximated
before people are asked.

For every group of comparable configurations of a model (:func:`qbench.arena.groups`), every pair
of configurations and every prompt both have an image of (same prompt, same seed), a judge scores
both images and votes for the higher score (``tie`` on equal scores). The votes are stored in the
results store labelled ``judge:<name>`` (:func:`qbench.store_votes.replace_judge_votes`; a re-run
replaces them) and rated like people's (:mod:`qbench.rating`).

Judges (:data:`JUDGES`):

* ``toy-checker``: the toy world's exact rule-based checker (:func:`qbench.toyworld.checker.score`)
  reads background, colour, size, shape and position back from each image; the score is the
  number of attributes that match the prompt's scene (toy-world prompts only).
* any metric with per-image scores (``hpsv2``, ``imagereward``, ``pickscore``, ``clip``,
  ``toy-acc``, ...): the per-prompt scores the runs stored for it (run them with ``--metrics``),
  in the metric's direction. A preference model's vote is only as meaningful as its weights:
  scores of a stand-in network (no real weights present) are refused.
"""
from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

from qbench.errors import QBenchError

TOY_CHECKER = "toy-checker"


def _checker_scores(run: dict[str, Any], prompts: list, paths: dict[str, str]) -> dict[str, float]:
    """Prompt id -> attributes of the prompt's scene the checker reads back correctly."""
    from PIL import Image

    from qbench.toyworld.checker import score

    out = {}
    for p in prompts:
        scene = (p.meta or {}).get("scene")
        if scene is None:
            raise QBenchError(f"judge {TOY_CHECKER} needs toy-world prompts (prompt {p.id!r} of run {run['id']} has no scene)")
        if p.id not in paths:
            continue
        with Image.open(paths[p.id]) as im:
            s = score(im.convert("RGB"), scene)
        out[p.id] = float(sum(v for k, v in s.items() if k != "all"))
    return out


def _metric_scores(store, run: dict[str, Any], metric: str) -> tuple[dict[str, float], bool]:
    """The run's stored per-prompt scores of ``metric`` and whether higher is better."""
    from qbench.tables import meaningless

    m = (run.get("metrics") or {}).get(metric)
    scores = store.per_image(run["id"]).get(metric)
    if m is None or not scores:
        raise QBenchError(f"judge {metric}: run {run['id']} ({run['label']}) stored no per-prompt {metric} scores; "
                          f"re-run it with --metrics {metric} (or pick another judge)")
    if meaningless(m):
        raise QBenchError(f"judge {metric}: run {run['id']} scored {metric} with a stand-in network (no real weights): its votes would mean nothing")
    return scores, bool(m.get("higher_is_better", True))


def vote(sa: float, sb: float, higher_is_better: bool = True) -> str:
    """``a``, ``b`` or ``tie`` for scores ``sa``, ``sb``."""
    if sa == sb:
        return "tie"
    return "a" if (sa > sb) == higher_is_better else "b"


def judge_votes(store, model: str, judge: str, limit: int | None = None,
                say: Callable[[str], None] = lambda s: None) -> list[dict[str, Any]]:
    """The judge's votes on every pair of comparable configurations of ``model``, over every prompt
    both have an image of (the first ``limit`` prompts of the group's prompt order, if given)."""
    from qbench.arena import groups, prompts_and_paths, seed_of

    votes: list[dict[str, Any]] = []
    gs = [g for g in groups(store, model) if len(g) > 1]
    if not gs:
        raise QBenchError(f"no two comparable finished {model} runs with images in {store.path}: nothing to judge")
    for g in gs:
        scores: dict[str, tuple[dict[str, float], bool]] = {}
        order: list = []
        for r in g:
            prompts, paths = prompts_and_paths(r)
            if limit:
                prompts = prompts[:limit]
            order = order or prompts
            if judge == TOY_CHECKER:
                scores[r["id"]] = (_checker_scores(r, prompts, paths), True)
            else:
                s, hib = _metric_scores(store, r, judge)
                keep = {p.id for p in prompts}
                scores[r["id"]] = ({k: v for k, v in s.items() if k in keep}, hib)
            say(f"{judge}: scored {len(scores[r['id']][0])} images of {r['label']}")
        for ra, rb in itertools.combinations(g, 2):
            (sa, hib), (sb, _) = scores[ra["id"]], scores[rb["id"]]
            for p in order:
                if p.id in sa and p.id in sb:
                    votes.append({"model": model, "run_a": ra["id"], "run_b": rb["id"], "ident_a": ra["_ident"], "ident_b": rb["_ident"],
                                      "images_a": ra["_images"], "images_b": rb["_images"], "prompt_id": p.id, "seed": seed_of(ra, p),
                                      "winner": vote(sa[p.id], sb[p.id], hib)})
    return votes


def add_arguments(p) -> None:
    p.add_argument("--judge", required=True, help=f"{TOY_CHECKER} (the toy world's exact checker) or a metric with per-image scores "
                   "(hpsv2, imagereward, pickscore, ...)")
    p.add_argument("--prompts-limit", type=int, default=None, help="judge only the first N prompts of each group")


def main(args, db: str) -> int:
    from qbench.arena import configuration_ratings, groups, label
    from qbench.store import Store
    from qbench.store_votes import replace_judge_votes
    from qbench.tables import console

    if args.prompts_limit is not None and args.prompts_limit < 1:
        raise QBenchError("--prompts-limit must be at least 1")
    con = console()
    store = Store(db, create=False)
    model = args.model or next(iter(store.models()), None)
    if model is None:
        raise QBenchError(f"no finished runs in {db}; run `qbench run` first")
    name = args.judge.strip()
    if name != TOY_CHECKER:
        from qbench.catalog import METRICS

        METRICS.get(name)  # an unknown name: one line listing the metrics
    votes = judge_votes(store, model, name, args.prompts_limit, say=lambda s: con.print(s, style="dim", markup=False))
    Store(db)  # the votes tables: an older store migrates here (a write)
    n = replace_judge_votes(store, name, votes)
    table = configuration_ratings(store, model, "judge-" + name)
    by_images = {r["_images"]: r for g in groups(store, model) for r in g}
    con.print(f"judge {name}: {n} votes on {model} stored in {db}; Bradley-Terry ratings (Elo scale, 95 % bootstrap interval):", markup=False)
    for key, r in sorted(table.items(), key=lambda kv: -(kv[1]["rating"] or 0)):
        who = label(by_images[key]) if key in by_images else key[:12]
        con.print(f"  {who:<28} {r['rating']:7.1f}  [{r['lo']:.1f}, {r['hi']:.1f}]  votes {r['votes']} (W {r['wins']} / L {r['losses']} / T {r['ties']})", markup=False)
    return 0
