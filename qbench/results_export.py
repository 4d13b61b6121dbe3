"""Results out of qbench, for pandas and for sharing: a run's prompts and image files, the
comparison as flat records (``qbench compare --csv/--json FILE``) and per-image scores as JSON Lines
(``qbench export-results``, the counterpart of lm-evaluation-harness's ``--log_samples``).

* :func:`run_prompts` / :func:`image_paths`: the prompts a stored run generated (re-loaded from its
  prompt spec and checked against the hash of ids and texts the run recorded) and, per prompt id,
  the PNG file the run's image cache holds (:meth:`qbench.imagecache.ImageCache.path` with the
  run's own batches, never by parsing file names).
* :func:`compare_records`: one flat dict per row of :func:`qbench.comparison.compare` (settings,
  every metric's value / standard error / n, the paired difference to the baseline with its
  standard error and whether it is resolved at two standard errors, latency, memory, size).
* :func:`per_image_records`: one dict per (run, prompt): run id, model, configuration, prompt id,
  index and text, seed, image path, then every per-image metric of the run as its own key.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterable, Iterator
from typing import Any

from qbench.errors import QBenchError

#: fixed columns of a per-image record, before the metric columns
PER_IMAGE_FIELDS = ("run_id", "model", "configuration", "method", "bits", "mode", "tag", "prompt_id", "prompt_index", "prompt_text",
                    "seed", "image_path")


def run_config(run: dict[str, Any]):
    """The :class:`~qbench.config.RunConfig` a stored run ran with (its resolved config)."""
    from qbench.config import RunConfig

    cfg = (run.get("result") or {}).get("config") or run.get("config") or {}
    try:
        return RunConfig.from_dict(cfg)
    except QBenchError as e:
        raise QBenchError(f"run {run['id']}: its stored config no longer loads ({e})") from None


def run_prompts(run: dict[str, Any]) -> list:
    """The prompts of a finished run, in generation order (list of :class:`qbench.api.Prompt`).

    Raises QBenchError when the prompt spec no longer loads or no longer gives the prompts the run
    used (the run recorded a hash of their ids and texts in ``result["sampling"]``)."""
    from qbench.imagecache import sha
    from qbench.prompts import load_prompts

    res = run.get("result") or {}
    spec = (res.get("config") or {}).get("prompts") or (run.get("config") or {}).get("prompts")
    if not spec:
        raise QBenchError(f"run {run['id']} recorded no prompt spec")
    try:
        prompts = load_prompts(spec)
    except QBenchError as e:
        raise QBenchError(f"run {run['id']}: its prompts {spec!r} no longer load ({e})") from None
    want = (res.get("sampling") or {}).get("prompts_sha")
    if want and sha([[p.id, p.text] for p in prompts]) != want:
        raise QBenchError(f"run {run['id']}: the prompts {spec!r} changed since the run (ids or texts differ from what it recorded)")
    return prompts


def image_paths(run: dict[str, Any], prompts: list | None = None) -> dict[str, str]:
    """Prompt id -> the PNG file of that prompt in the run's image folder (the file may be missing
    if the cache was cleaned; callers check). Empty when the run kept no image folder."""
    from qbench.generation import batches, seed_for
    from qbench.imagecache import ImageCache

    res = run.get("result") or {}
    if res.get("image_files"):  # a run scored from images made elsewhere (qbench score) names its files
        return dict(res["image_files"])
    d = res.get("images_dir")
    if not d:
        return {}
    cfg = run_config(run)
    prompts = run_prompts(run) if prompts is None else prompts
    cache = ImageCache(cfg.out_dir, cfg.model, os.path.basename(os.path.normpath(d)), {}, create=False)
    cache.dir = d  # where the run wrote them (out_dir may have been relative to another folder)
    return {p.id: cache.path(p, seed_for(cfg, p), sig) for chunk, sig in batches(prompts, cfg) for p in chunk}


# -- the comparison as flat records --------------------------------------------------------------------
def strict(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, inf) replaced by None, so ``json.dumps(...,
    allow_nan=False)`` writes strict JSON that every parser reads."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict(v) for v in obj]
    return obj


def dumps(obj: Any, **kw: Any) -> str:
    """Strict JSON (:func:`strict`; non-JSON values by ``str``)."""
    return json.dumps(strict(json.loads(json.dumps(obj, default=str))), allow_nan=False, **kw)


def _resolved(d: dict[str, Any] | None) -> bool | None:
    if not d or d.get("se") is None or not math.isfinite(d["se"]):
        return None
    return bool(abs(d["mean"]) >= 2 * d["se"]) if d["se"] > 0 else d["mean"] != 0


def compare_records(payload: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Flatten ``{model: rows of qbench.comparison.compare}`` into one dict per row (CSV-ready).

    Per metric ``M``: ``M``, ``M_se``, ``M_n``, and where the row is paired with its baseline
    ``M_delta``, ``M_delta_se``, ``M_delta_n``, ``M_resolved`` (``|delta| >= 2 se``)."""
    from qbench.comparison import short_label

    names: list[str] = []
    for rows in payload.values():
        for r in rows:
            names += [n for n in r["metrics"] if n not in names]
    out = []
    for model, rows in payload.items():
        for r in rows:
            s = r["sampling"]
            rec: dict[str, Any] = {
                "model": model, "table": r["group"] + 1, "configuration": short_label(r), "options": r.get("options_diff") or "",
                "tag": r.get("tag") or "", "run_id": r["run_id"], "method": r["method"], "bits": r.get("bits"),
                "effective_bits": r.get("effective_bits"), "mode": r.get("mode"), "is_baseline": r["is_baseline"],
                "baseline_run": r.get("baseline_run"),
                **{f"setting_{k}": s.get(k) for k in ("prompts", "n_prompts", "seed", "steps", "guidance", "resolution", "dtype",
                                                      "device_type", "batch_size", "weights")},
            }
            for name in names:  # every row has every column (empty where it has no such number)
                m = r["metrics"].get(name) or {}
                d = (r.get("paired") or {}).get(name) or {}
                rec.update({name: m.get("value"), f"{name}_se": m.get("stderr"), f"{name}_n": m.get("n"), f"{name}_delta": d.get("mean"),
                            f"{name}_delta_se": d.get("se"), f"{name}_delta_n": d.get("n"), f"{name}_resolved": _resolved(d)})
            rec.update(latency_s=r["latency_s"], step_s=r["step_s"], latency_kind=r.get("latency_kind"), peak_bytes=r["peak_bytes"],
                       memory_kind=r.get("memory_kind"), size_bytes=r["size_bytes"], size_vs_16bit=r["size_vs_16bit"],
                       size_kind=r.get("size_kind"), device=r.get("device"), date=r.get("date"), paired_note=r.get("paired_note") or "",
                       table_note=r.get("group_note") or "")
            out.append(rec)
    return out


def _columns(records: Iterable[dict[str, Any]]) -> list[str]:
    cols: list[str] = []
    seen: set[str] = set()
    for rec in records:
        for k in rec:
            if k not in seen:
                seen.add(k)
                cols.append(k)
    return cols


def to_csv(records: list[dict[str, Any]]) -> str:
    """CSV text of ``records`` (columns: the union of keys, in first-seen order; missing = empty)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=_columns(records), lineterminator="\n")
    w.writeheader()
    for rec in records:
        w.writerow({k: ("" if v is None else v) for k, v in rec.items()})
    return buf.getvalue()


def write_text(path: str, text: str) -> str:
    """Write ``text`` to ``path`` (``-``: stdout) atomically; QBenchError if it cannot be written."""
    from qbench.fsutil import atomic_write_text

    if path == "-":
        import sys

        sys.stdout.write(text)
        return path
    if os.path.isdir(path):
        raise QBenchError(f"{path} is a folder; give a file name")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise QBenchError(f"cannot write {path}: folder {parent} does not exist")
    try:
        return atomic_write_text(path, text)
    except OSError as e:
        raise QBenchError(f"cannot write {path}: {e.strerror}") from None


# -- per-image scores ----------------------------------------------------------------------------------
def per_image_records(run: dict[str, Any], scores: dict[str, dict[str, float]]) -> Iterator[dict[str, Any]]:
    """One record per prompt of a finished ``run`` (``scores``: ``Store.per_image(run_id)``), in
    prompt order; metrics the run did not score for a prompt are left out of that record."""
    from qbench.comparison import make_row, short_label
    from qbench.generation import seed_for

    row = make_row(run)
    cfg = run_config(run)
    prompts = run_prompts(run)
    paths = image_paths(run, prompts)
    for p in prompts:
        rec: dict[str, Any] = {
            "run_id": run["id"], "model": run["model"], "configuration": short_label(row), "method": run["method"], "bits": run.get("bits"),
            "mode": run.get("mode"), "tag": row.get("tag"), "prompt_id": p.id, "prompt_index": p.index, "prompt_text": p.text,
            "seed": seed_for(cfg, p), "image_path": paths.get(p.id),
        }
        for name in sorted(scores):
            if p.id in scores[name]:
                rec[name] = scores[name][p.id]
        yield rec


def jsonl(records: Iterable[dict[str, Any]]) -> str:
    return "".join(dumps(r, sort_keys=False) + "\n" for r in records)


# -- command line ---------------------------------------------------------------------------------------
def add_arguments(p) -> None:
    """``qbench export-results``' own flags (the CLI adds --out-dir and --db)."""
    p.add_argument("--model", help="only this model's runs (default: every finished run)")
    from qbench.cli_types import id_list

    p.add_argument("--runs", type=id_list, metavar="ID,ID,...", help="only these runs (ids or unique prefixes/suffixes)")
    p.add_argument("--output", "-o", default="-", metavar="FILE", help="the JSONL file (default -: stdout)")


def main(args, db: str, finished) -> int:
    """``qbench export-results``: every finished run (or the ``--runs`` named, each checked by
    ``finished``) as per-image JSONL records."""
    from qbench.store import Store

    store = Store(db, create=False)
    if args.runs:
        runs = [finished(store.get(x)) for x in dict.fromkeys(x.strip() for x in args.runs.split(",") if x.strip())]
    else:
        runs = store.runs(model=args.model)
        if not runs:
            raise QBenchError(f"no finished runs{' for model ' + repr(args.model) if args.model else ''} in {store.path}")
    records = [rec for r in runs for rec in per_image_records(r, store.per_image(r["id"]))]
    write_text(args.output, jsonl(records))
    if args.output != "-":
        print(f"{args.output}: {len(records)} records (one per run and prompt) from {len(runs)} run(s)")
    return 0
