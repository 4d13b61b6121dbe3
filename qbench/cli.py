"""``qbench`` command line. Every user-facing error is one line on stderr and a non-zero exit."""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import sys
import threading
import warnings
from typing import Any, Sequence

from qbench.config import RunConfig
from qbench.errors import ConfigError, NoSuchRunError, QBenchError, RunInterrupted


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line instead of usage + error
        sys.stderr.write(f"qbench: error: {message} (see `{self.prog} --help`)\n")
        raise SystemExit(2)


def _kv(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    k, v = text.split("=", 1)
    try:
        value: Any = json.loads(v)
    except json.JSONDecodeError:
        value = v
    return k.strip(), value


def _add_run_args(p: argparse.ArgumentParser) -> None:
    d = RunConfig.__dataclass_fields__
    p.add_argument("--config", help="a RunConfig JSON file; flags given on the command line override it")
    sweep = " (run: comma-separated or repeated values make a sweep of every combination)"
    p.add_argument("--model", action="append", help=f"registered model name (default {d['model'].default}); see `qbench list models`{sweep}")
    p.add_argument("--method", action="append", help=f"registered method name (default fp); see `qbench list methods`{sweep}")
    p.add_argument("--bits", action="append", help=f"bit spec, e.g. W4A8, W8A8, W4A4 (methods that quantize){sweep}")
    p.add_argument("--mode", choices=["simulate", "kernel"], help="simulate = fake quantization; kernel = real low-bit execution")
    p.add_argument("--prompts", help="prompt spec NAME:N or a .txt/.jsonl/.csv file (default: the model's default set)")
    p.add_argument("--calib-prompts", help="calibration prompt spec (methods that calibrate)")
    p.add_argument("--seed", action="append", help=f"base seed; prompt i uses seed + i (default 42){sweep}")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--steps", type=int, help="denoising steps (default: the model's)")
    p.add_argument("--guidance", type=float)
    p.add_argument("--resolution", type=int)
    p.add_argument("--metrics", help="comma-separated metric names (default: the model's); see `qbench list metrics`")
    p.add_argument("--model-path", help="local diffusers folder with the model's weights")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:1 ...")
    p.add_argument("--dtype", help="float32 / float16 / bfloat16 (default: the model's native dtype; float32 on CPU)")
    p.add_argument("--out-dir", help="results folder (default reports/)")
    p.add_argument("--db", help="SQLite results database (default <out-dir>/qbench.sqlite)")
    p.add_argument("--latency-warmup", type=int)
    p.add_argument("--latency-repeats", type=int)
    p.add_argument("--tag", help="free-text label stored with the run")
    p.add_argument("--option", "-O", action="append", type=_kv, default=[], metavar="KEY=VALUE", help="method option (repeatable), e.g. -O group_size=64")
    p.add_argument("--metric-option", "-M", action="append", type=_kv, default=[], metavar="KEY=VALUE", help="metric option (repeatable), e.g. -M clip_model=ViT-B-32")
    p.add_argument("--qsched-ckpt", help="Q-Sched checkpoint JSON (method qsched)")
    p.add_argument("--inception-weights", help="local Inception-v3 FID weights (FID metrics)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--dry-run", action="store_true", help="check everything and print what the run would do and cost (images to generate, cached, calibration); load and store nothing")


SWEEP_FLAGS = ("model", "method", "bits", "seed")


def sweep_axes(args: argparse.Namespace) -> dict[str, list[Any]]:
    """The values of each sweepable flag (``--bits W4A8,W8A8 --bits W2A8`` -> three)."""
    from qbench.sweep import split_values

    axes: dict[str, list[Any]] = {k: split_values(getattr(args, k, None)) for k in SWEEP_FLAGS}
    try:
        axes["seed"] = [int(s) for s in axes["seed"]]
    except ValueError:
        raise ConfigError(f"--seed takes integers, got {','.join(axes['seed'])}") from None
    return axes


def config_from_args(args: argparse.Namespace, **single: Any) -> RunConfig:
    """The RunConfig of the flags (``single`` fixes sweepable flags to one value each)."""
    base: dict[str, Any] = {}
    axes = sweep_axes(args)
    for k, vals in axes.items():
        if k in single:
            continue
        if len(vals) > 1:
            raise ConfigError(f"--{k} takes one value with this command, got {', '.join(map(str, vals))}")
        single[k] = vals[0] if vals else None
    if args.config:
        try:
            with open(args.config, encoding="utf-8") as f:
                base = RunConfig.from_json(f.read()).to_dict()
        except OSError as e:
            raise ConfigError(f"cannot read config file {args.config!r}: {e.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"config file {args.config!r} is not UTF-8 JSON text") from None
    for f in dataclasses.fields(RunConfig):
        v = single[f.name] if f.name in single else getattr(args, f.name, None)
        if v is not None and f.name not in ("method_options", "metric_options"):
            base[f.name] = v
    mo = dict(base.get("method_options", {}))
    mo.update(dict(args.option))
    if args.qsched_ckpt:
        mo["qsched_ckpt"] = args.qsched_ckpt
    base["method_options"] = mo
    me = dict(base.get("metric_options", {}))
    me.update(dict(args.metric_option))
    if args.inception_weights:
        me["inception_weights"] = args.inception_weights
    base["metric_options"] = me
    try:
        return RunConfig.from_dict(base, validate=False)  # validated by the preflight, with everything else
    except TypeError as e:
        raise ConfigError(str(e)) from None


# -- commands ----------------------------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    from qbench import harness
    from qbench.preflight import plan_run, print_plan
    from qbench.tables import console, print_result

    axes = sweep_axes(args)
    if any(len(v) > 1 for v in axes.values()):
        return _run_cli_sweep(args, axes)
    cfg = config_from_args(args)
    con = console(stderr=args.json)
    plan = plan_run(cfg)
    if args.dry_run:
        if args.json:
            print(json.dumps(plan.summary(), indent=1, default=str))
        else:
            print_plan(plan, con)
        return 0
    result = harness.run(cfg, show_progress=not args.no_progress, log=lambda m: con.print(m, style="dim", markup=False), plan=plan)
    if result is None:  # a non-main rank of a sharded run: the main rank prints and stores
        return 0
    if args.json:
        print(json.dumps(result.to_dict(), indent=1, default=str))
    else:
        print_result(result.to_dict(), con)
        con.print(f"stored as run {result.run_id} in {cfg.db_path}; `qbench compare --model {cfg.model}` compares runs", style="dim", markup=False)
    return 0


def _run_cli_sweep(args: argparse.Namespace, axes: dict[str, list[Any]]) -> int:
    """``qbench run`` with several values of --model/--method/--bits/--seed: every combination."""
    import itertools

    from qbench.sweep import Sweep

    if args.json:
        raise ConfigError("--json prints one run; a sweep's runs are compared with `qbench compare --json` afterwards")
    combos = itertools.product(*[axes[k] or [None] for k in SWEEP_FLAGS])
    cells = []
    for values in combos:
        single = dict(zip(SWEEP_FLAGS, values))
        if single["method"] and not _quantizes(single["method"]):
            single["bits"] = None  # fp x {W4A8, W8A8}: one fp cell, not one per bit width
        cfg = config_from_args(args, **single)
        if all(c.to_dict() != cfg.to_dict() for c in cells):
            cells.append(cfg)
    return _sweep(Sweep("command line", cells), args)


def _quantizes(method: str) -> bool:
    from qbench.catalog import METHODS

    return bool(METHODS.get(method).uses_bits)


def cmd_sweep(args: argparse.Namespace) -> int:
    from qbench.sweep import load_sweep

    overrides = {k: getattr(args, k) for k in ("out_dir", "db") if getattr(args, k, None)}
    return _sweep(load_sweep(args.file, overrides), args)


def _sweep(sweep, args: argparse.Namespace) -> int:
    """Run a sweep's unfinished cells, then compare every model's cells (and write the report)."""
    from qbench.sweep import run_sweep
    from qbench.tables import console

    con = console()
    say = lambda m: con.print(m, markup=False, highlight=False)
    say(f"sweep {sweep.name}: {len(sweep.cells)} cells")
    out = run_sweep(sweep, show_progress=not args.no_progress, say=say, dry_run=args.dry_run)
    if args.dry_run or not (out["ran"] or out["skipped"]):
        return 1 if out["failed"] else 0
    ids = out["ran"] + out["skipped"]
    cfg0 = sweep.cells[0]
    # the sweep's runs through the commands' own parsers (their defaults stay theirs)
    where = ["--runs", ",".join(ids), "--out-dir", cfg0.out_dir] + (["--db", cfg0.db] if cfg0.db else [])
    cmd_compare(build_parser().parse_args(["compare", *where]))
    cmd_report(build_parser().parse_args(["report", *where]))
    say(f"sweep {sweep.name}: {len(out['ran'])} run, {len(out['skipped'])} already finished, {len(out['failed'])} failed")
    for f in out["failed"]:
        say(f"  failed: {f}")
    return 1 if out["failed"] else 0


def cmd_plan(args: argparse.Namespace) -> int:
    from qbench.costs import plan_sweep
    from qbench.sweep import load_sweep
    from qbench.tables import console, print_plan_table

    plan = plan_sweep(load_sweep(args.file), gpus=args.gpus, gpu=args.gpu, mfu=args.mfu, tflops=args.tflops)
    if args.json:
        print(json.dumps(plan, indent=1))
    else:
        print_plan_table(plan, console())
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from qbench.catalog import METHODS

    if not args.method:
        with_step = sorted(e.name for e in METHODS if hasattr(e.load(), "run_calibration"))
        raise ConfigError(f"qbench calibrate needs --method (a method with a calibration step: {', '.join(with_step)})")
    cfg = config_from_args(args)
    cfg.validate()
    if args.search:
        cfg.method_options["search"] = args.search
    cls = METHODS.get(cfg.method)
    if not hasattr(cls, "run_calibration"):
        raise QBenchError(f"method {cfg.method!r} has no separate calibration step")
    if args.dry_run:  # the run's preflight holds the calibration's plan and cost; nothing loads
        from qbench.preflight import plan_run, print_plan
        from qbench.tables import console

        plan = plan_run(cfg)
        if args.json:
            print(json.dumps(plan.summary(), indent=1, default=str))
        else:
            print_plan(plan, console())
        return 0
    summary = cls.run_calibration(cfg, show_progress=not args.no_progress)
    print(json.dumps(summary, indent=1, default=str))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """``qbench export --method M --bits B --model X OUT``: quantize as ``qbench run`` would, write
    the pipeline folder (:mod:`qbench.export`)."""
    from qbench.export import export
    from qbench.tables import console

    for name in ("prompts", "batch_size", "guidance", "resolution", "metrics", "db", "latency_warmup", "latency_repeats", "tag", "config"):
        setattr(args, name, getattr(args, name, None))
    args.metric_option, args.inception_weights = [], None
    cfg = config_from_args(args)
    con = console(stderr=True)
    doc = export(cfg, args.out, force=args.force, show_progress=not args.no_progress, log=lambda m: con.print(m, style="dim", markup=False))
    if args.json:
        print(json.dumps(doc, indent=1, default=str))
    else:
        for name, c in doc["quantized_components"].items():
            print(f"{name}: {c['class']}, {c['quantized_layers']} quantized layers ({', '.join(c['modes'])}), {c['bytes'] / 2**20:.2f} MiB of tensors")
        print(f"load it with: {doc['load']['qbench']}")
        print(f"or with diffusers: {doc['load']['diffusers']}")
    return 0


def _db_path(args: argparse.Namespace) -> str:
    return args.db or os.path.join(args.out_dir, "qbench.sqlite")


def _finished(run: dict[str, Any]) -> dict[str, Any]:
    if run["status"] != "done":
        raise QBenchError(f"run {run['id']} is {run['status']}: only finished runs can be compared (`qbench show {run['id'][-6:]}`)")
    return run


def cmd_compare(args: argparse.Namespace) -> int:
    from qbench.compare import compare, make_row, matches, status_counts
    from qbench.compare_table import print_compare
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
            write_text(args.json, json.dumps(payload, indent=1, default=str) + "\n")
        if "-" in (args.csv, args.json):
            return 0
    if args.json == "-":
        print(json.dumps(payload, indent=1, default=str))
        return 0
    con = console()
    for m in models:
        print_compare(m, payload[m], con, wide=args.wide, metrics=only, hidden=extras[m][0], unfinished=extras[m][1])
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from qbench.store import Store
    from qbench.tables import console, print_run

    run = Store(_db_path(args), create=False).get(args.run)
    if args.json:
        print(json.dumps(run, indent=1, default=str))
    else:
        print_run(run, console())
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    from qbench.store import Store
    from qbench.tables import console, print_runs

    store = Store(_db_path(args), create=False)
    runs = store.runs(model=args.model, status=args.status)
    if args.json:
        print(json.dumps(runs, indent=1, default=str))
        return 0
    if not runs:
        raise QBenchError(f"no {args.status + ' ' if args.status else ''}runs{' for model ' + repr(args.model) if args.model else ''} in {store.path}")
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


def cmd_report(args: argparse.Namespace) -> int:
    from qbench.report import main as report_main

    return report_main(args, _db_path(args))


def cmd_export_results(args: argparse.Namespace) -> int:
    from qbench.results_export import main as export_main

    return export_main(args, _db_path(args), _finished)


def cmd_regress(args: argparse.Namespace) -> int:
    from qbench.regress import main as regress_main

    return regress_main(args)


def _delegate(target: str, argv: list[str]) -> int:
    from qbench.registry import Entry

    return int(Entry("cmd", target, "").load()(argv) or 0)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="qbench", description="Evaluate post-training quantization of few-step text-to-image diffusion models.")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser, metavar="COMMAND")
    p = sub.add_parser("run", help="generate images with a model + method, measure, store the result")
    _add_run_args(p)
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("calibrate", help="run a method's calibration only (e.g. Q-Sched coefficient search) and save its checkpoint")
    _add_run_args(p)
    p.add_argument("--search", help="calibration search (method-specific, e.g. grid or own for qsched)")
    p.set_defaults(func=cmd_calibrate)
    p = sub.add_parser("export", help="quantize a model with a method (as `qbench run` does) and write it to a folder that qbench.load_quantized or diffusers loads back")
    p.add_argument("out", help="output folder (must not exist or be empty; --force replaces an earlier export)")
    p.add_argument("--model", action="append", help="registered model name (default toy-flux)")
    p.add_argument("--method", action="append", help="a quantizing method (naive, qsched, ...)")
    p.add_argument("--bits", action="append", help="bit spec, e.g. W4A8, W8A8")
    p.add_argument("--mode", choices=["simulate", "kernel"], help="kernel = packed integer weights (the deployable format); simulate = fake-quantized float weights")
    p.add_argument("--option", "-O", action="append", type=_kv, default=[], metavar="KEY=VALUE", help="method option (repeatable)")
    p.add_argument("--calib-prompts", help="calibration prompt spec (methods that calibrate)")
    p.add_argument("--qsched-ckpt", help="Q-Sched checkpoint JSON (method qsched)")
    p.add_argument("--seed", action="append", help="calibration seed base (default 42)")
    p.add_argument("--steps", type=int, help="denoising steps the method is calibrated for (default: the model's)")
    p.add_argument("--model-path", help="local diffusers folder with the model's weights")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:1 ...")
    p.add_argument("--dtype", help="float32 / float16 / bfloat16 (default: the model's; float32 on CPU)")
    p.add_argument("--out-dir", help="results folder whose calibration artefacts (e.g. Q-Sched checkpoints) are used and written (default reports/)")
    p.add_argument("--force", action="store_true", help="replace an earlier export in OUT")
    p.add_argument("--json", action="store_true", help="print the export index (qbench_export.json) as JSON")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_export)
    p = sub.add_parser("sweep", help="run every cell of a sweep file (models x methods x bits x seeds), skipping finished cells, then compare")
    p.add_argument("file", help="sweep YAML (see sweeps/toy.yaml)")
    p.add_argument("--out-dir", help="results folder (overrides the file's run.out_dir)")
    p.add_argument("--db")
    p.add_argument("--dry-run", action="store_true", help="check every cell and list what would run")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_sweep)
    p = sub.add_parser("plan", help="images, forward passes, FLOPs and estimated GPU time of every cell of a sweep (real models), before running it")
    p.add_argument("file", help="sweep YAML (e.g. sweeps/paper.yaml)")
    p.add_argument("--gpus", type=int, default=1, help="GPUs the images are split across (default 1)")
    p.add_argument("--gpu", default="h100", help="GPU kind for its datasheet peak: h100, h200, a100, l40s, rtx4090, a10g")
    p.add_argument("--mfu", type=float, default=0.40, help="assumed model-FLOPs utilisation (default 0.40; measure yours)")
    p.add_argument("--tflops", type=float, help="effective TFLOP/s per GPU (overrides --gpu and --mfu)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_plan)
    p = sub.add_parser("compare", help="stored runs of a model side by side: a table per set of comparable settings, paired differences to the baseline")
    p.add_argument("--model", help="only this model (default: every model with runs)")
    p.add_argument("--baseline", metavar="RUN|METHOD", help="the baseline: a run id (or unique prefix/suffix), or a method or label (default fp) whose run with the same settings is each table's baseline")
    p.add_argument("--runs", metavar="ID,ID,...", help="compare exactly these runs (ids or unique prefixes/suffixes) instead of the latest run of every configuration")
    p.add_argument("--metrics", help="only these metrics (comma-separated)")
    p.add_argument("--wide", action="store_true", help="one row per configuration, every measure a column (needs a wide terminal or a pipe)")
    p.add_argument("--out-dir", default="reports")
    p.add_argument("--db")
    p.add_argument("--json", nargs="?", const="-", metavar="FILE", help="the comparison as JSON: on stdout, or into FILE (the table is still printed)")
    p.add_argument("--csv", metavar="FILE", help="the comparison as CSV, one row per configuration (- for stdout): every metric with its standard "
                   "error and n, paired difference, its standard error and whether it is resolved; settings, latency, memory, size")
    p.set_defaults(func=cmd_compare)
    p = sub.add_parser("report", help="write a Markdown report and a self-contained HTML page per model (tables, provenance, plots, image grids) under <out-dir>/")
    p.add_argument("--model", help="only this model (default: every model with runs)")
    p.add_argument("--out-dir", default="reports")
    p.add_argument("--db")
    from qbench.report import add_arguments as report_arguments

    report_arguments(p)
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("export-results", help="per-image scores of stored runs as JSON Lines (run, prompt id and text, seed, image path, every per-image metric)")
    from qbench.results_export import add_arguments as export_arguments

    export_arguments(p)
    p.add_argument("--out-dir", default="reports")
    p.add_argument("--db")
    p.set_defaults(func=cmd_export_results)
    p = sub.add_parser("regress", help="regression check: the toy models' quality cells through `qbench run` against reports/baselines/toy.json, "
                       "and (--speed) the pytest-benchmark suite against its committed baseline; prints what moved")
    from qbench.regress import add_arguments

    add_arguments(p)
    p.set_defaults(func=cmd_regress)
    p = sub.add_parser("show", help="one stored run in full")
    p.add_argument("run", help="run id, or an unambiguous prefix or suffix (compare prints the last 6 characters)")
    p.add_argument("--out-dir", default="reports")
    p.add_argument("--db")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_show)
    p = sub.add_parser("runs", help="every stored run with its status (done, running, stale = process gone, interrupted, failed)")
    p.add_argument("--model")
    p.add_argument("--status", choices=["done", "running", "stale", "interrupted", "failed"])
    p.add_argument("--out-dir", default="reports")
    p.add_argument("--db")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_runs)
    p = sub.add_parser("list", help="registered models, methods, metrics or prompt sets")
    p.add_argument("kind", nargs="?", choices=["models", "methods", "metrics", "prompts"])
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_list)
    for name, target, helptext in [
        ("bench-kernels", "qbench.quant.bench:main", "benchmark quantized vs full-precision linear layers at real GEMM shapes"),
        ("size", "qbench.sizes:main", "FP16 and deployable bytes of the real denoisers (meta device) per method x bit width"),
        ("zoo", "qbench.zoo.cli:main", "the toy world: train / check the shipped toy models"),
    ]:
        # every argument, --help and other flags included, goes to the command's own parser: with
        # no prefix character here, argparse never takes a leading "--flag" for an option of ours
        p = sub.add_parser(name, help=helptext, add_help=False, prefix_chars="\0")
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(func=lambda a, _t=target: _delegate(_t, a.rest))
    return parser


def _log_to_stderr() -> None:
    """qbench's own warnings (``logging.getLogger("qbench")``) as ``qbench: warning: ...`` lines."""
    log = logging.getLogger("qbench")
    if not log.handlers:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("qbench: %(levelname)s: %(message)s"))
        log.addHandler(h)
        log.propagate = False


def quiet_libraries() -> None:
    """Silence import-time chatter of torch/torchao/bitsandbytes/diffusers that is not ours."""
    for name in ("torch.utils._pytree", "bitsandbytes", "torchao", "diffusers", "transformers", "datasets", "httpx2", "timm"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"(diffusers|transformers|torchvision|open_clip|timm)")
    warnings.filterwarnings("ignore", message=".*deprecated.*")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")


def main(argv: Sequence[str] | None = None) -> int:
    # With more busy threads than cores, libgomp's default active wait stalls every parallel
    # region ~10 ms (measured on the 2-core CI machine); it must be set before torch loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    quiet_libraries()
    _log_to_stderr()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    restore = _stop_signals_interrupt()
    try:
        return args.func(args)
    except QBenchError as e:
        by = f"{signal.Signals(_SIGNALLED[0]).name}: " if _SIGNALLED and isinstance(e, RunInterrupted) else ""
        sys.stderr.write(f"qbench: error: {by}{e}\n")
        return 128 + _SIGNALLED[0] if by else e.exit_code
    except KeyboardInterrupt:
        by = f" by {signal.Signals(_SIGNALLED[0]).name}" if _SIGNALLED else ""
        sys.stderr.write(f"qbench: interrupted{by}; results already stored are kept\n")
        return 128 + (_SIGNALLED[0] if _SIGNALLED else signal.SIGINT)
    finally:
        for sig, handler in restore.items():
            signal.signal(sig, handler)


#: the stop signal received during this command (SIGTERM, SIGHUP), if any
_SIGNALLED: list[int] = []


def _on_stop_signal(signum: int, frame: Any) -> None:
    """SIGTERM (``timeout``, a CI cancel, Slurm) and SIGHUP (a closed terminal) stop a command the
    way Ctrl-C does: KeyboardInterrupt in the main thread, so a run is marked ``interrupted`` and
    keeps its images. A second signal while that cleanup runs is ignored (kill -9 still works; the
    run is then shown as ``stale``)."""
    if not _SIGNALLED:
        _SIGNALLED.append(signum)
        raise KeyboardInterrupt(signal.Signals(signum).name)


def _stop_signals_interrupt() -> dict[int, Any]:
    """Install :func:`_on_stop_signal` for SIGTERM and SIGHUP where they have their default action
    (an ignored SIGHUP, as under ``nohup``, stays ignored); returns the handlers to restore."""
    _SIGNALLED.clear()
    if threading.current_thread() is not threading.main_thread():
        return {}
    old = {}
    for name in ("SIGTERM", "SIGHUP"):
        sig = getattr(signal, name, None)
        if sig is not None and signal.getsignal(sig) is signal.SIG_DFL:
            old[sig] = signal.signal(sig, _on_stop_signal)
    return old


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
