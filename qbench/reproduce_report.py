"""``qbench reproduce``: a published table beside qbench's own numbers.

``--list`` lists the shipped tables (:mod:`qbench.reproduce`); ``--dry-run`` prints a table's
source, protocol and cells without loading anything; ``--plan`` costs its cells with
``qbench plan`` (:func:`qbench.costs.plan_sweep`, real models only); the run itself runs the cells
as a sweep (:func:`qbench.sweep.run_sweep`: finished cells, by identity key, are skipped) and
writes ``reproduce-<table>.md`` and ``.html`` with one row per published cell:
**published | qbench | difference**, and how the qbench number was made.

The difference (qbench - published, and relative) is printed only where the two numbers are
comparable: the real model (not its tiny twin), metric networks with their real weights (not
stand-ins), and the table's prompt set and n. It carries a dagger where the table lists a known
protocol deviation (seed rule, quantizer granularity...), spelled out under the table. Anywhere
else the cell says ``n/a`` and why: a tiny-twin or stand-in number is never set against a
published one.
"""
from __future__ import annotations

import argparse
import json
import os
from html import escape
from typing import Any

from qbench.errors import QBenchError
from qbench.reproduce import TableSpec, build_sweep, list_specs, load_spec


def add_arguments(p: argparse.ArgumentParser) -> None:
    from qbench.cli_types import fraction, positive_float, positive_int

    p.add_argument("table", nargs="?", help="a published table (`qbench reproduce --list`) or a spec YAML file")
    p.add_argument("--list", action="store_true", help="list the published tables qbench ships")
    p.add_argument("--dry-run", action="store_true", help="print the table's source, protocol and cells; load and run nothing")
    p.add_argument("--plan", action="store_true", help="images, FLOPs and GPU time of the table's cells (`qbench plan`; real models)")
    p.add_argument("--twins", action="store_true", help="offline: each real model's tiny twin, a small local prompt set and stand-in "
                   "metrics (numbers test the plumbing only)")
    p.add_argument("--prompts", help="prompt spec instead of the table's (default with --twins: coco2017:2)")
    p.add_argument("--fid-reference", help="real images for FID (folder or .npz of statistics), as the table's protocol names them")
    p.add_argument("--out-dir", help="results folder (default reports/reproduce/<table>)")
    p.add_argument("--batch-size", type=positive_int)
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:1 ...")
    p.add_argument("--gpus", type=positive_int, default=1, help="--plan: GPUs the images are split across")
    p.add_argument("--gpu", default="h100", help="--plan: GPU kind (h100, h200, a100, l40s, rtx4090, a10g)")
    p.add_argument("--mfu", type=fraction, default=0.40, help="--plan: assumed model-FLOPs utilisation")
    p.add_argument("--tflops", type=positive_float, help="--plan: effective TFLOP/s per GPU")
    p.add_argument("--json", action="store_true", help="--list / --plan / the run: JSON on stdout")
    p.add_argument("--cell", type=int, metavar="I", help="run only cell I (0-based; a SLURM array task), no report: "
                   "`qbench reproduce TABLE` afterwards skips the finished cells and writes it")
    p.add_argument("--list-cells", action="store_true", help="the table's cells with their index and the sbatch --array line")
    p.add_argument("--no-progress", action="store_true")


def main(args: argparse.Namespace) -> int:
    if args.list:
        return _list(args)
    if not args.table:
        raise QBenchError(f"qbench reproduce needs a table ({', '.join(list_specs())}) or --list")
    spec = load_spec(args.table)
    kw = {"twins": args.twins, "prompts": args.prompts, "out_dir": args.out_dir, "fid_reference": args.fid_reference,
          "batch_size": args.batch_size, "device": args.device}
    sweep = build_sweep(spec, **kw)
    check_methods(sweep.cells)
    if args.dry_run:
        print(dry_run_text(spec, sweep.cells, args.twins))
        return 0
    if args.list_cells or args.cell is not None:
        from qbench.sweep import cell_lines, run_sweep, select_cell

        if args.list_cells:
            lines = cell_lines(sweep)
            extra = " --twins" if args.twins else ""
            print("\n".join(lines[:-1] + [f"# {len(sweep.cells)} cells: sbatch --array=0-{len(sweep.cells) - 1} "
                                          f"tools/slurm/sweep_array.sbatch --reproduce {args.table}{extra}"]))
            return 0
        one = select_cell(sweep, args.cell)
        out = run_sweep(one, show_progress=not args.no_progress, say=print if not args.json else (lambda m: None))
        state = "failed" if out["failed"] else "run" if out["ran"] else "already finished"
        print(json.dumps({"table": spec.name, "cell": args.cell, "state": state}) if args.json else f"{spec.name}: cell {args.cell}: {state}")
        return 1 if out["failed"] else 0
    if args.plan:
        from qbench.costs import plan_sweep
        from qbench.tables import console, print_plan_table

        if args.twins:
            raise QBenchError("--plan costs the real models; the tiny twins run in seconds on a CPU")
        plan = plan_sweep(sweep, gpus=args.gpus, gpu=args.gpu, mfu=args.mfu, tflops=args.tflops,
                          prompt_counts={spec.protocol["prompts"]: spec.protocol["n"]})
        if args.json:
            print(json.dumps(plan, indent=1))
        else:
            print_plan_table(plan, console())
        return 0
    return _run(spec, sweep, args)


def check_methods(cells) -> None:
    """Each cell's method built from its options (no model loads): every refusal, one line each."""
    from qbench.catalog import METHODS
    from qbench.errors import ConfigError, ManyErrors

    errors = []
    for cfg in cells:
        try:
            METHODS.get(cfg.method)(cfg)
        except QBenchError as e:
            errors.append(ConfigError(f"cell {cfg.model} / {cfg.method} {cfg.bits or ''}: {e}"))
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise ManyErrors(errors)


def _list(args: argparse.Namespace) -> int:
    rows = []
    for name in list_specs():
        s = load_spec(name)
        rows.append({"name": name, "title": s.title, "model": s.protocol["model"], "rows": len(s.rows), "cells": len(s.runnable),
                     "metrics": [m["metric"] for m in s.metrics], "source": s.source["paper"], "where": s.source["where"]})
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    for r in rows:
        print(f"{r['name']}: {r['title']}\n  model {r['model']}; {r['rows']} published rows, {r['cells']} with a qbench method; "
              f"metrics {', '.join(r['metrics'])}\n  source: {r['source']}\n  numbers from: {r['where']}")
    return 0


def dry_run_text(spec: TableSpec, cells, twins: bool) -> str:
    p = spec.protocol
    out = [f"{spec.name}: {spec.title}", f"source: {spec.source['paper']}; {spec.source['table']}", f"numbers from: {spec.source['where']}",
           (f"protocol: model {p['model']}, {p['steps']} steps, guidance {p['guidance']}, {p['resolution']} px, prompts {p['prompts']} "
            f"(n {p['n']}), seed {p['seed']}"), f"seed rule: {p['seed_rule']}"]
    out += [f"metric {m['metric']} ({m['column']}): {m['protocol']}" + (f"; reference: {m['reference']}" if m.get("reference") else "")
            for m in spec.metrics]
    out += [f"deviation: {d}" for d in p.get("deviations") or []]
    if twins:
        out.append(f"--twins: {p['model']} -> {cells[0].model if cells else '?'}, prompts {cells[0].prompts if cells else '?'}, "
                   "stand-in metrics (random weights): the numbers test the plumbing only")
    it = iter(cells)
    for r in spec.rows:
        out.append(f"row {r.label!r}: " + (f"cell `{next(it).to_cli()}`" if r.method else f"published only ({r.why})"))
    return "\n".join(out)


def _run(spec: TableSpec, sweep, args: argparse.Namespace) -> int:
    from qbench.store import Store
    from qbench.sweep import run_sweep

    say = print if not args.json else (lambda m: None)
    say(f"{sweep.name}: {len(sweep.cells)} cells")
    out = run_sweep(sweep, show_progress=not args.no_progress, say=say)
    runs: list[dict[str, Any] | None] = []
    for cfg, rid in zip(sweep.cells, out["cells"]):
        runs.append(Store(cfg.db_path, create=False).get(rid) if rid else None)
    rows = compare_rows(spec, runs)
    out_dir = sweep.cells[0].out_dir if sweep.cells else (args.out_dir or ".")
    paths = write_report(spec, rows, out_dir, twins=args.twins, cells=sweep.cells)
    if args.json:
        print(json.dumps({"table": spec.name, "rows": rows, "report": paths, "failed": out["failed"]}, indent=1, default=str))
    else:
        print(to_markdown(spec, rows, args.twins, sweep.cells))
        say(f"report: {paths['md']} and {paths['html']}")
    return 1 if out["failed"] else 0


# -- the comparison ----------------------------------------------------------------------------------
def made_how(run: dict[str, Any], metric: str, spec: TableSpec) -> tuple[str, str | None]:
    """(how the number was made, why it is not comparable or None)."""
    from qbench.models.loader import get_spec

    m = (run.get("result") or {}).get("metrics", {}).get(metric) or {}
    d = m.get("details") or {}
    standin = d.get("meaningful") is False
    twin = bool(getattr(get_spec(run["model"]), "tiny_builder", None))
    n = m.get("n")
    prompts = (run.get("config") or {}).get("prompts")
    parts = [f"run {run['id'][-6:]}", f"model {run['model']}" + (" (tiny twin, random weights)" if twin else ""),
             "stand-in metric network (random weights)" if standin else ("metric with its real weights" if "weights" in d else "metric without a learned network"),
             f"prompts {prompts}, n {n}"]
    why = ("tiny twin" if twin else None) or ("stand-in metric" if standin else None)
    if why is None and (prompts != spec.protocol["prompts"] or n != spec.protocol["n"]):
        why = f"other prompts or n (table: {spec.protocol['prompts']}, n {spec.protocol['n']})"
    return "; ".join(parts), why


def compare_rows(spec: TableSpec, runs: list[dict[str, Any] | None]) -> list[dict[str, Any]]:
    """One record per published cell (row x metric with a published number)."""
    out = []
    it = iter(runs)
    has_dev = bool(spec.protocol.get("deviations"))
    for row in spec.rows:
        run = next(it) if row.method else None
        for m in spec.metrics:
            name = m["metric"]
            if name not in row.published:
                continue
            rec: dict[str, Any] = {"row": row.label, "metric": name, "column": m["column"], "published": row.published[name],
                                   "decimals": m.get("decimals"),
                                   "qbench": None, "stderr": None, "made": None, "difference": None, "relative": None, "dagger": False}
            if not row.method:
                rec["made"] = f"not run: {row.why}"
            elif run is None:
                rec["made"] = "not run: the cell failed (see the sweep's log)"
            else:
                mv = ((run.get("result") or {}).get("metrics") or {}).get(name) or {}
                rec["qbench"], rec["stderr"] = mv.get("value"), mv.get("stderr")
                rec["made"], why = made_how(run, name, spec)
                if rec["qbench"] is None:
                    rec["made"] += "; no value"
                elif why:
                    rec["why_no_difference"] = why
                else:
                    rec["difference"] = rec["qbench"] - rec["published"]
                    rec["relative"] = rec["difference"] / abs(rec["published"]) if rec["published"] else None
                    rec["dagger"] = has_dev or bool(row.deviations)
            out.append(rec)
    return out


def _num(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"


def _cells(r: dict[str, Any]) -> list[str]:
    q = "-" if r["qbench"] is None else _num(r["qbench"]) + (f" ± {_num(r['stderr'])}" if r.get("stderr") else "")
    if r["difference"] is not None:
        rel = f" ({r['relative']:+.1%})" if r["relative"] is not None else ""
        diff = f"{r['difference']:+.4g}{rel}" + (" †" if r["dagger"] else "")
    else:
        diff = f"n/a ({r['why_no_difference']})" if r.get("why_no_difference") else "n/a"
    dec = r.get("decimals")
    pub = f"{r['published']:.{dec}f}" if dec is not None else f"{r['published']:g}"
    return [r["row"], r["column"], pub, q, diff, r["made"] or ""]


HEAD = ["row", "metric", "published", "qbench", "difference", "how the qbench number was made"]


def _banner(spec: TableSpec, twins: bool) -> str:
    if twins:
        return ("qbench column: TINY TWINS and STAND-IN METRICS (random weights), a few local prompts: it tests that the table's cells "
                "run end to end; its numbers mean nothing and get no difference.")
    return "qbench column: the real models under the table's protocol; each number says how it was made."


def _notes(spec: TableSpec, cells=()) -> list[str]:
    p = spec.protocol
    notes = [f"source: {spec.source['paper']}; {spec.source['table']}; numbers typed in from {spec.source['where']}"]
    if spec.source.get("note"):
        notes.append(f"source note: {spec.source['note']}")
    notes.append(f"protocol: model {p['model']}, {p['steps']} steps, guidance {p['guidance']}, {p['resolution']} px, prompts "
                 f"{p['prompts']} (n {p['n']}), seed {p['seed']}; seed rule: {p['seed_rule']}")
    notes += [f"{m['column']} = qbench `{m['metric']}`: {m['protocol']}" + (f"; reference: {m['reference']}" if m.get("reference") else "")
              for m in spec.metrics]
    notes += [f"† deviation (whole table): {d}" for d in p.get("deviations") or []]
    notes += [f"† deviation ({r.label}): {d}" for r in spec.rows for d in r.deviations]
    notes.append("difference = qbench - published (relative to published), shown only where comparable: real model, real metric "
                 "weights, the table's prompts and n.")
    labels = [r.label for r in spec.runnable]
    notes += [f"qbench cell {label!r}: `{cfg.to_cli()}`" for label, cfg in zip(labels, cells)]
    return notes


def to_markdown(spec: TableSpec, rows: list[dict[str, Any]], twins: bool, cells=()) -> str:
    lines = [f"# Reproduce: {spec.title}", "", f"**{_banner(spec, twins)}**", "",
             "| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in _cells(r)) + " |" for r in rows]
    lines += [""] + [f"- {n}" for n in _notes(spec, cells)]
    return "\n".join(lines) + "\n"


def to_html(spec: TableSpec, rows: list[dict[str, Any]], twins: bool, cells=()) -> str:
    from qbench.report import Cell, Table
    from qbench.report_html import CSS, table_html

    t = Table(spec.title, HEAD, [[Cell(c) for c in _cells(r)] for r in rows])
    notes = "".join(f"<li>{escape(n)}</li>" for n in _notes(spec, cells))
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>qbench reproduce — {escape(spec.name)}</title>'
            f"<style>{CSS}</style></head><body><h1>Reproduce: {escape(spec.title)}</h1>"
            f'<p class="note"><b>{escape(_banner(spec, twins))}</b></p>{table_html(t)}<h2>Source and protocol</h2><ul>{notes}</ul></body></html>\n')


def write_report(spec: TableSpec, rows: list[dict[str, Any]], out_dir: str, twins: bool, cells=()) -> dict[str, str]:
    """Write ``reproduce-<table>[-twins].md`` and ``.html`` under ``out_dir``; their paths."""
    from qbench.results_export import write_text

    os.makedirs(out_dir, exist_ok=True)
    base = os.path.join(out_dir, f"reproduce-{spec.name}" + ("-twins" if twins else ""))
    write_text(base + ".md", to_markdown(spec, rows, twins, cells))
    write_text(base + ".html", to_html(spec, rows, twins, cells))
    return {"md": base + ".md", "html": base + ".html"}
