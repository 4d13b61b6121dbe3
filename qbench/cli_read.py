"""The commands that read the results store (``compare``, ``show``, ``runs``) and the registries
(``list``): ``cmd_<name>(args) -> exit code``, re-exported by :mod:`qbench.cli_commands`. They
import no model library (torch, diffusers, transformers, peft, bitsandbytes, open_clip)."""
from __future__ import annotations

import argparse
import json
import os
from typing import Any

from qbench.errors import NoSuchRunError, QBenchError


def _db_path(args: argparse.Namespace) -> str:
    return args.db or os.path.join(args.out_dir, "qbench.sqlite")


def _finished(run: dict[str, Any]) -> dict[str, Any]:
    if run["status"] != "done":
        raise QBenchError(f"run {run['id']} is {run['status']}: only finished runs can be compared (`qbench show {run['id'][-6:]}`)")
    return run


def cmd_compare(args: argparse.Namespace) -> int:
    from qbench.arena import with_ratings
    from qbench.compare_table import print_compare
    from qbench.comparison import compare, make_row, matches, status_counts
    from qbench.results_export import dumps
    from qbench.store import Store
    from qbench.tables import console

    store = Store(_db_path(args), create=False)  # a read: creates nothing
    selected = None
    if args.runs:
        selected = list({r["id"]: _finished(r) for r in (store.get(x) for x in args.runs.split(",") if x.strip())}.values())
    base_run, base_name = None, None
    if args.baseline:
        try:
            base_run = _finished(store.get(args.baseline))
        except NoSuchRunError:  # not a run id: a method, label or tag
            base_name = args.baseline
    if base_run and args.model and base_run["model"] != args.model:
        raise QBenchError(f"baseline run {base_run['id']} is a {base_run['model']} run, not {args.model}")
    if args.model:
        models = [args.model]
    elif selected:
        models = list(dict.fromkeys(r["model"] for r in selected))
    else:
        models = [base_run["model"]] if base_run else store.models()
    if not models:
        others = status_counts(store.runs(status=None))
        more = f" ({', '.join(f'{n} {s}' for s, n in sorted(others.items()))}: `qbench runs` lists them)" if others else ""
        raise QBenchError(f"no finished runs in {store.path}{more}; run `qbench run` first")
    payload, extras = {}, {}
    for m in models:
        runs = [r for r in selected if r["model"] == m] if selected else store.runs(model=m)
        if base_run and base_run["model"] == m and base_run["id"] not in {r["id"] for r in runs}:
            runs.append(base_run)
        if not runs:
            raise QBenchError(f"no finished runs for model {m!r} in {store.path}")
        if base_name and not any(matches(make_row(r), base_name) for r in runs):
            methods = sorted({r["label"] + (f" tag {r['config'].get('tag')}" if (r.get("config") or {}).get("tag") else "") for r in runs})
            raise QBenchError(f"--baseline {base_name!r} is neither a run id nor a method, label or tag of the {m} runs ({', '.join(methods)})")
        with_ratings(store, runs)  # arena and judge ratings as metrics (qbench.arena)
        rows, hidden = compare(runs, store.per_image, baseline=base_name, baseline_run=base_run["id"] if base_run and base_run["model"] == m else None,
                               keep_all=bool(selected), selected=bool(selected))
        payload[m] = rows
        extras[m] = (hidden, status_counts(store.runs(model=m, status=None)) if not selected else {})
    only = [x.strip() for x in args.metrics.split(",") if x.strip()] if args.metrics else None
    if only:
        have = sorted({n for rows in payload.values() for r in rows for n in r["metrics"]})
        unknown = [n for n in only if n not in have]
        if unknown:
            raise QBenchError(f"no metric {', '.join(unknown)} in these runs (they have: {', '.join(have) or 'none'})")
    if args.csv or (args.json and args.json != "-"):
        from qbench.results_export import compare_records, to_csv, write_text

        if args.csv:
            write_text(args.csv, to_csv(compare_records(payload)))
        if args.json and args.json != "-":
            write_text(args.json, dumps(payload, indent=1) + "\n")
        if "-" in (args.csv, args.json):
            return 0
    if args.json == "-":
        print(dumps(payload, indent=1))
        return 0
    con = console()
    for m in models:
        print_compare(m, payload[m], con, wide=args.wide, metrics=only, hidden=extras[m][0], unfinished=extras[m][1])
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from qbench.results_export import dumps
    from qbench.store import Store
    from qbench.tables import console, print_run

    run = Store(_db_path(args), create=False).get(args.run)
    if args.json:
        print(dumps(run, indent=1))
        return 0
    try:
        print_run(run, console())
    except (KeyError, TypeError, ValueError, AttributeError) as e:  # a stored result of another shape
        raise QBenchError(f"run {run['id']}: its stored result lacks what the table shows ({type(e).__name__}: {str(e)[:80]}); "
                          f"the database was edited or written by another qbench version; `qbench show {run['id'][-6:]} --json` prints it as stored") from None
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    from qbench.results_export import dumps
    from qbench.store import Store
    from qbench.tables import console, print_runs

    store = Store(_db_path(args), create=False)
    runs = store.runs(model=args.model, status=args.status)
    if args.json:
        print(dumps(runs, indent=1))
        return 0
    if not runs and args.status:  # a filter that matches nothing is an answer, not an error
        console().print(f"no {args.status} runs{' for model ' + repr(args.model) if args.model else ''} in {store.path}", markup=False, highlight=False)
        return 0
    if not runs:
        raise QBenchError(f"no runs{' for model ' + repr(args.model) if args.model else ''} in {store.path}")
    print_runs(runs, console())
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from qbench.catalog import METHODS, METRICS, MODELS, PROMPTS
    from qbench.tables import console, print_registry

    regs = {"models": MODELS, "methods": METHODS, "metrics": METRICS, "prompts": PROMPTS}
    kinds = [args.kind] if args.kind else list(regs)
    if args.json:
        from qbench.registry import plugin_options

        def entry(k, e):
            d = {"name": e.name, "description": e.description, **e.meta}
            if k in ("methods", "metrics"):
                d["options"] = plugin_options(e)
            return d

        print(json.dumps({k: [entry(k, e) for e in regs[k]] for k in kinds}, indent=1, default=str))
        return 0
    con = console()
    for k in kinds:
        print_registry(k, regs[k], con)
    return 0
