"""Which value of a report column is marked "best": only one that is better beyond noise.

* A metric (mean over prompts): the row with the best mean is marked only when its paired
  difference to **every** other row of the column is resolved, the rule ``qbench compare`` uses
  for "resolved": ``|mean| > 2 se`` of the per-prompt differences on the prompts both scored
  (:func:`qbench.metrics.stats.paired_difference`). Where either row kept no per-prompt scores,
  the unpaired rule on the two means: ``|a - b| > 2 sqrt(se_a^2 + se_b^2)``. Reference metrics
  (PSNR to FP, ...) leave the full-precision row out (its value is the reference against itself).
* Latency (median of repeated timings): marked only when the fastest row's slowest timing is
  below every other row's fastest (the ranges do not overlap) and it was timed at least twice.
* Peak memory and size: exact numbers, the smallest is marked (ties: all).

No mark means "no configuration is resolved as best", not "all equal".
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from qbench.report_figures import is_reference_metric

PerImage = Callable[[str], dict[str, dict[str, float]]]


def higher_is_better(rows: list[dict[str, Any]], name: str) -> bool:
    return next(r["metrics"][name] for r in rows if name in r["metrics"]).get("higher_is_better", True)


def resolved(d: dict[str, Any] | None) -> bool:
    """A paired difference ``{mean, se, n}`` resolved from zero: ``|mean| > 2 se`` (se > 0), or a
    non-zero mean with se == 0 (every prompt moved by the same amount); one pair (se None): not."""
    if d is None or d.get("se") is None:
        return False
    return abs(d["mean"]) > 2 * d["se"] if d["se"] > 0 else d["mean"] != 0


def _beats(best: dict[str, Any], other: dict[str, Any], name: str, per_image: PerImage | None) -> bool:
    from qbench.metrics.stats import paired_difference

    a = per_image(best["run_id"]).get(name) if per_image else None
    b = per_image(other["run_id"]).get(name) if per_image else None
    if a and b:
        return resolved(paired_difference(b, a))
    ma, mb = best["metrics"][name], other["metrics"][name]
    if ma.get("stderr") is None or mb.get("stderr") is None:
        return False
    return abs(ma["value"] - mb["value"]) > 2 * math.hypot(ma["stderr"], mb["stderr"])


def best_rows(rows: list[dict[str, Any]], name: str, per_image: PerImage | None = None) -> set[str]:
    """The run id whose metric ``name`` is best and resolved from every other row's (empty when
    none is, or fewer than two rows have the metric)."""
    ref = is_reference_metric(rows, name)
    cands = [r for r in rows if r["metrics"].get(name, {}).get("value") is not None and not (ref and r["method"] == "fp")]
    if len(cands) < 2:
        return set()
    sign = 1.0 if higher_is_better(rows, name) else -1.0
    best = max(cands, key=lambda r: sign * r["metrics"][name]["value"])
    if all(_beats(best, o, name, per_image) for o in cands if o is not best):
        return {best["run_id"]}
    return set()


def best_latency(rows: list[dict[str, Any]], lat: dict[str, dict[str, Any]], key: str, keep=lambda r: True) -> set[str]:
    """``lat``: run id -> the run's timing stats for ``key`` (``{median, min, max, n}``)."""
    cands = [r for r in rows if r.get(key) is not None and keep(r) and lat.get(r["run_id"])]
    if len(cands) < 2:
        return set()
    best = min(cands, key=lambda r: r[key])
    b = lat[best["run_id"]]
    if (b.get("n") or 0) < 2 or b.get("max") is None:
        return set()
    if all(b["max"] < (lat[o["run_id"]].get("min") if lat[o["run_id"]].get("min") is not None else -math.inf) for o in cands if o is not best):
        return {best["run_id"]}
    return set()


def best_exact(rows: list[dict[str, Any]], key: str) -> set[str]:
    """The smallest value of ``key`` (peak memory, size: exact numbers; ties: all)."""
    vals = {r["run_id"]: r[key] for r in rows if r.get(key) is not None}
    if len(vals) < 2:
        return set()
    lo = min(vals.values())
    return {k for k, v in vals.items() if v == lo}


LEGEND = ("Green: the best value of its column, marked only where it is better beyond noise: its paired difference to every "
          "other configuration's value is resolved (|mean| > 2 standard errors over the same prompts and seeds; unpaired means "
          "where per-prompt scores are missing); reference metrics leave out the full-precision row. Latency: marked only when "
          "the fastest configuration's timings (at least two) all lie below every other's, among deployment latencies. Memory "
          "and size are exact: the smallest is marked. No mark: nothing is resolved as best.")
