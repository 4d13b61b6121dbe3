"""What each ``qbench`` command does (``cmd_<name>(args) -> exit code``); the flags are
:mod:`qbench.cli_parser`, the entry point and its error handling :mod:`qbench.cli`.

Each command imports what it needs inside its function, after its argument and file checks
(:mod:`qbench.cli_checks`), so ``qbench --help``, ``list``, ``compare``, ``runs`` and ``show``
import no model library (torch, diffusers, transformers, peft, bitsandbytes, open_clip)."""
from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

from qbench.cli_read import (  # noqa: F401 (the parser names them here)
    _db_path,
    _finished,
    cmd_compare,
    cmd_list,
    cmd_runs,
    cmd_show,
)
from qbench.config import RunConfig
from qbench.errors import ConfigError, QBenchError

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
    if args.config:  # a regular file, bounded in size and depth (qbench.fsutil)
        from qbench.fsutil import read_json_file

        base = RunConfig.from_dict(read_json_file(args.config, "config file")).to_dict()
    for f in dataclasses.fields(RunConfig):
        v = single[f.name] if f.name in single else getattr(args, f.name, None)
        if v is not None and f.name not in ("method_options", "metric_options"):
            base[f.name] = v
    mo = dict(base.get("method_options", {}))
    mo.update(dict(args.option))
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


def cmd_run(args: argparse.Namespace) -> int:
    from qbench.cli_checks import precheck_run

    axes = sweep_axes(args)
    if any(len(v) > 1 for v in axes.values()):
        return _run_cli_sweep(args, axes)
    cfg = config_from_args(args)
    precheck_run(cfg)  # what the arguments and files alone decide, before any model library loads
    from qbench import harness
    from qbench.preflight import plan_run, print_plan
    from qbench.tables import console, print_result

    con = console(stderr=args.json)
    plan = plan_run(cfg)
    if args.dry_run:
        if args.json:
            print(json.dumps(plan.summary(), indent=1, default=str))
        else:
            print_plan(plan, con)
        return 0
    from qbench.comparison import compare_hint
    from qbench.progress import say

    result = harness.run(cfg, show_progress=not args.no_progress, log=lambda m: say(m, style="dim", fallback=con), plan=plan)
    if result is None:  # a non-main rank of a sharded run: the main rank prints and stores
        return 0
    if args.json:
        print(json.dumps(result.to_dict(), indent=1, default=str))
    else:
        print_result(result.to_dict(), con)
        con.print(f"stored as run {result.run_id} in {cfg.db_path}; `{compare_hint(cfg)}` compares runs", style="dim", markup=False, soft_wrap=True)
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
    return _sweep(Sweep("command line", cells), args, own_runs_only=False)


def _quantizes(method: str) -> bool:
    from qbench.catalog import METHODS

    return bool(METHODS.get(method).uses_bits)


def cmd_sweep(args: argparse.Namespace) -> int:
    from qbench.sweep import cell_lines, load_sweep, select_cell

    overrides = {k: getattr(args, k) for k in ("out_dir", "db") if getattr(args, k, None)}
    sweep = load_sweep(args.file, overrides)
    if getattr(args, "list_cells", False):
        for line in cell_lines(sweep):
            print(line)
        return 0
    if getattr(args, "cell", None) is not None:
        return _sweep(select_cell(sweep, args.cell), args, report=bool(getattr(args, "report", False)))
    if getattr(args, "report", False):
        raise ConfigError("--report goes with --cell (a whole sweep always ends with its comparison and report)")
    return _sweep(sweep, args)


def _sweep(sweep, args: argparse.Namespace, report: bool = True, own_runs_only: bool = True) -> int:
    """Run a sweep's unfinished cells, then compare every model's cells and write the report (only
    when a cell ran: a sweep of finished cells leaves the report as it is); a single ``--cell``
    compares only with ``report`` (``--report``). ``own_runs_only``: a sweep file's tables hold its
    own cells; a command-line sweep's hold the latest run of every configuration of its models (so
    the store's fp run is the baseline, as in `qbench compare`)."""
    from qbench.dist import current
    from qbench.sweep import run_sweep
    from qbench.tables import console

    con = console()
    main_rank = current(sweep.cells[0].device if sweep.cells else "auto").is_main  # only the main rank prints and reports
    say = (lambda m: con.print(m, markup=False, highlight=False)) if main_rank else (lambda m: None)
    say(f"sweep {sweep.name}: {len(sweep.cells)} cells")
    out = run_sweep(sweep, show_progress=not args.no_progress, say=say, dry_run=args.dry_run)
    if args.dry_run or not main_rank or not (out["ran"] or out["skipped"]) or not report:
        if main_rank and not args.dry_run and sweep.cell is not None:
            say(f"sweep {sweep.name}: cell {sweep.cell}: {'failed' if out['failed'] else 'run' if out['ran'] else 'already finished'}")
        return 1 if out["failed"] else 0
    ids = out["ran"] + out["skipped"]
    cfg0 = sweep.cells[0]
    # the sweep's runs through the commands' own parsers (their defaults stay theirs)
    store = ["--out-dir", cfg0.out_dir] + (["--db", cfg0.db] if cfg0.db else [])
    wheres = [["--runs", ",".join(ids)]] if own_runs_only else [["--model", m] for m in dict.fromkeys(c.model for c in sweep.cells)]
    from qbench.cli_parser import build_parser

    for where in wheres:
        cmd_compare(build_parser().parse_args(["compare", *where, *store]))
        if out["ran"]:
            cmd_report(build_parser().parse_args(["report", *where, *store]))
    if not out["ran"]:
        say(f"sweep {sweep.name}: every cell had finished already; the report is left as it is (`qbench report` rewrites it)")
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


def cmd_reproduce(args: argparse.Namespace) -> int:
    from qbench.reproduce_report import main as reproduce_main

    return reproduce_main(args)


def cmd_calibrate(args: argparse.Namespace) -> int:
    from qbench.catalog import METHODS

    if not args.method:
        with_step = sorted(e.name for e in METHODS if e.load().CAPABILITIES.calibrate_command)
        raise ConfigError(f"qbench calibrate needs --method (a method with a calibration step: {', '.join(with_step)})")
    cfg = config_from_args(args)
    from qbench.cli_checks import precheck_run

    precheck_run(cfg)
    cls = METHODS.get(cfg.method)
    if not cls.CAPABILITIES.calibrate_command:
        raise QBenchError(f"method {cfg.method!r} has no separate calibration step")
    if args.dry_run:  # the calibration's own plan and cost (no evaluation images); nothing loads
        from qbench.preflight import plan_run
        from qbench.tables import console

        full = plan_run(cfg).summary()
        plan = {k: full[k] for k in ("model", "weights", "device", "dtype", "method", "calibration_prompts", "calibration_note", "calibration")}
        plan["evaluation"] = "none: qbench calibrate writes the method's artefact only (qbench run evaluates)"
        if args.json:
            print(json.dumps(plan, indent=1, default=str))
        else:
            cal = plan["calibration"] or {}
            lines = [f"qbench calibrate (dry run): {plan['model']} / {plan['method']} on {plan['device']} ({plan['dtype']})",
                     f"  calibration prompts: {plan['calibration_prompts'] or 'none'}" + (f" ({plan['calibration_note']})" if plan["calibration_note"] else ""),
                     f"  calibration cost: {cal.get('images', 0)} images ({cal.get('what', 'nothing to compute')})" if cal else
                     "  calibration cost: nothing to compute (a stored artefact under the same key is reused)",
                     f"  evaluation: {plan['evaluation']}"]
            console().print("\n".join(lines), markup=False, highlight=False)
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
    from qbench.cli_checks import check_out_dir, precheck_run

    check_out_dir(args.out, "export folder")
    precheck_run(cfg)
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


def cmd_report(args: argparse.Namespace) -> int:
    from qbench.report import main as report_main

    return report_main(args, _db_path(args))


def cmd_judge(args: argparse.Namespace) -> int:
    from qbench.judge import main as judge_main

    return judge_main(args, _db_path(args))


def cmd_serve(args: argparse.Namespace) -> int:
    from qbench.serve_app import main as serve_main

    return serve_main(args, _db_path(args))


def cmd_export_results(args: argparse.Namespace) -> int:
    from qbench.results_export import main as export_main

    return export_main(args, _db_path(args), _finished)


def cmd_score(args: argparse.Namespace) -> int:
    from qbench.score_cli import main as score_main

    return score_main(args)


def cmd_regress(args: argparse.Namespace) -> int:
    from qbench.regress import main as regress_main

    return regress_main(args)


def cmd_delegate(args: argparse.Namespace) -> int:
    """A command with its own parser (``bench-kernels``, ``zoo``): every argument goes to it."""
    return delegate(args.delegate_target, args.rest)


def delegate(target: str, argv: list[str]) -> int:
    from qbench.registry import Entry

    return int(Entry("cmd", target, "").load()(argv) or 0)
