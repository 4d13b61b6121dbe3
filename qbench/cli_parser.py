"""The ``qbench`` command line's flags (:func:`build_parser`): argparse only, and the cheap
argument types that refuse a nonsense value in one line (``qbench: error: argument --mfu: must
be in (0, 1], got 0``, exit 2). What each command does is :mod:`qbench.cli_commands`."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from qbench.cli_types import (  # noqa: F401  (re-exported)
    _number,
    positive_int,
    nonneg_int,
    bounded_int,
    positive_float,
    fraction,
    id_list,
)
from qbench.config import RunConfig


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line instead of usage + error
        sys.stderr.write(f"qbench: error: {message} (see `{self.prog} --help`)\n")
        raise SystemExit(2)


class _Removed(argparse.Action):
    """A flag that became a method option (``-O``): refused in one line naming the new form."""

    def __init__(self, option_strings: list[str], dest: str, new: str = "", **kwargs: Any):
        super().__init__(option_strings, dest, nargs="?", help=argparse.SUPPRESS, **kwargs)
        self.new = new

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option_string: str | None = None) -> None:
        parser.error(f"{option_string} was removed: it is the method option {self.new}")


def _kv(text: str) -> tuple[str, Any]:
    """``KEY=VALUE``; VALUE is JSON where it parses (nested at most 64 deep), else the string."""
    from qbench.fsutil import MAX_JSON_DEPTH, json_depth

    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text[:60]!r}")
    k, v = text.split("=", 1)
    if not k.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE with a key, got {text[:60]!r}")
    try:
        value: Any = json.loads(v)
    except (json.JSONDecodeError, RecursionError):
        value = v
    if json_depth(value, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise argparse.ArgumentTypeError(f"{k.strip()}: the value nests deeper than {MAX_JSON_DEPTH} levels")
    return k.strip(), value


def _store_args(p: argparse.ArgumentParser) -> None:
    """``--out-dir`` and ``--db``: the results store a reading command opens (``<out-dir>/qbench.sqlite``
    unless ``--db`` names one), the same two flags on every such command."""
    p.add_argument("--out-dir", default="reports", help="results folder (default reports/)")
    p.add_argument("--db", help="results database (default <out-dir>/qbench.sqlite)")


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
    p.add_argument("--qsched-ckpt", action=_Removed, new="-O qsched_ckpt=FILE")
    p.add_argument("--inception-weights", help="local Inception-v3 FID weights (FID metrics)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--dry-run", action="store_true", help="check everything and print what the run would do and cost (images to generate, cached, calibration); load and store nothing")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="qbench", description="Evaluate post-training quantization of few-step text-to-image diffusion models.")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser, metavar="COMMAND")
    p = sub.add_parser("run", help="generate images with a model + method, measure, store the result")
    _add_run_args(p)
    p.set_defaults(func="cmd_run")
    p = sub.add_parser("calibrate", help="run a method's calibration only (e.g. Q-Sched coefficient search) and save its checkpoint")
    _add_run_args(p)
    p.add_argument("--search", action=_Removed, new="-O search=grid|own")
    p.set_defaults(func="cmd_calibrate")
    p = sub.add_parser("export", help="quantize a model with a method (as `qbench run` does) and write it to a folder that qbench.load_quantized or diffusers loads back")
    p.add_argument("out", help="output folder (must not exist or be empty; --force replaces an earlier export)")
    p.add_argument("--model", action="append", help="registered model name (default toy-flux)")
    p.add_argument("--method", action="append", help="a quantizing method (naive, qsched, ...)")
    p.add_argument("--bits", action="append", help="bit spec, e.g. W4A8, W8A8")
    p.add_argument("--mode", choices=["simulate", "kernel"], help="kernel = packed integer weights (the deployable format); simulate = fake-quantized float weights")
    p.add_argument("--option", "-O", action="append", type=_kv, default=[], metavar="KEY=VALUE", help="method option (repeatable)")
    p.add_argument("--calib-prompts", help="calibration prompt spec (methods that calibrate)")
    p.add_argument("--qsched-ckpt", action=_Removed, new="-O qsched_ckpt=FILE")
    p.add_argument("--seed", action="append", help="calibration seed base (default 42)")
    p.add_argument("--steps", type=int, help="denoising steps the method is calibrated for (default: the model's)")
    p.add_argument("--model-path", help="local diffusers folder with the model's weights")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:1 ...")
    p.add_argument("--dtype", help="float32 / float16 / bfloat16 (default: the model's; float32 on CPU)")
    p.add_argument("--out-dir", help="results folder whose calibration artefacts (e.g. Q-Sched checkpoints) are used and written (default reports/)")
    p.add_argument("--force", action="store_true", help="replace an earlier export in OUT")
    p.add_argument("--json", action="store_true", help="print the export index (qbench_export.json) as JSON")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func="cmd_export")
    p = sub.add_parser("sweep", help="run every cell of a sweep file (models x methods x bits x seeds), skipping finished cells, then compare")
    p.add_argument("file", help="sweep YAML, or the name of a shipped one: toy, paper (sweeps/toy.yaml)")
    p.add_argument("--out-dir", help="results folder (overrides the file's run.out_dir)")
    p.add_argument("--db")
    p.add_argument("--dry-run", action="store_true", help="check every cell and list what would run")
    p.add_argument("--cell", type=nonneg_int, metavar="I", help="run only cell I (0-based, as --list-cells numbers them; skipped if finished); "
                   "one SLURM array task each (tools/slurm/); no compare/report unless --report")
    p.add_argument("--list-cells", action="store_true", help="print every cell with its index (and the --array range for sbatch), run nothing")
    p.add_argument("--report", action="store_true", help="with --cell: compare and report the sweep's finished cells afterwards")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func="cmd_sweep")
    p = sub.add_parser("plan", help="images, forward passes, FLOPs and estimated GPU time of every cell of a sweep (real models), before running it")
    p.add_argument("file", help="sweep YAML, or the name of a shipped one (e.g. paper: sweeps/paper.yaml)")
    p.add_argument("--gpus", type=positive_int, default=1, help="GPUs the images are split across (default 1)")
    p.add_argument("--gpu", default="h100", help="GPU kind for its datasheet peak: h100, h200, a100, l40s, rtx4090, a10g")
    p.add_argument("--mfu", type=fraction, default=0.40, help="assumed model-FLOPs utilisation (default 0.40; measure yours)")
    p.add_argument("--tflops", type=positive_float, help="effective TFLOP/s per GPU (overrides --gpu and --mfu)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func="cmd_plan")
    p = sub.add_parser("reproduce", help="a published table (Q-Sched, MixDQ, SVDQuant...) beside qbench's numbers: --list, --dry-run, "
                       "--plan, the run (--twins: offline on the tiny twins with stand-in metrics); report: published | qbench | difference")
    from qbench.reproduce_report import add_arguments as reproduce_arguments

    reproduce_arguments(p)
    p.set_defaults(func="cmd_reproduce")
    p = sub.add_parser("compare", help="stored runs of a model side by side: a table per set of comparable settings, paired differences to the baseline")
    p.add_argument("--model", help="only this model (default: every model with runs)")
    p.add_argument("--baseline", metavar="RUN|METHOD", help="the baseline: a run id (or unique prefix/suffix), or a method or label (default fp) whose run with the same settings is each table's baseline")
    p.add_argument("--runs", type=id_list, metavar="ID,ID,...", help="compare exactly these runs (ids or unique prefixes/suffixes) instead of the latest run of every configuration")
    p.add_argument("--metrics", help="only these metrics (comma-separated)")
    p.add_argument("--wide", action="store_true", help="one row per configuration, every measure a column (needs a wide terminal or a pipe)")
    _store_args(p)
    p.add_argument("--json", nargs="?", const="-", metavar="FILE", help="the comparison as JSON: on stdout, or into FILE (the table is still printed)")
    p.add_argument("--csv", metavar="FILE", help="the comparison as CSV, one row per configuration (- for stdout): every metric with its standard "
                   "error and n, paired difference, its standard error and whether it is resolved; settings, latency, memory, size")
    p.set_defaults(func="cmd_compare")
    p = sub.add_parser("report", help="write a Markdown report and a self-contained HTML page per model (tables, provenance, plots, image grids) under <out-dir>/")
    p.add_argument("--model", help="only this model (default: every model with runs)")
    _store_args(p)
    from qbench.report import add_arguments as report_arguments

    report_arguments(p)
    p.set_defaults(func="cmd_report")
    p = sub.add_parser("judge", help="an automatic judge (the toy world's checker, or a preference metric's per-image scores) votes on every "
                       "pair of comparable configurations, prompt by prompt; stored and rated like the arena's votes")
    p.add_argument("--model", help="the model (default: the first with runs)")
    _store_args(p)
    from qbench.judge import add_arguments as judge_arguments

    judge_arguments(p)
    p.set_defaults(func="cmd_judge")
    p = sub.add_parser("serve", help="a local web app over a results store: gallery, blind pairwise arena with ratings, try a prompt live "
                       "(needs the serve extra: pip install 'qbench[serve]')")
    _store_args(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--no-try", action="store_true", help="no live generation (the try-it page only shows cached images)")
    p.set_defaults(func="cmd_serve")
    p = sub.add_parser("export-results", help="per-image scores of stored runs as JSON Lines (run, prompt id and text, seed, image path, every per-image metric)")
    from qbench.results_export import add_arguments as export_arguments

    export_arguments(p)
    _store_args(p)
    p.set_defaults(func="cmd_export_results")
    p = sub.add_parser("score", help="score images made elsewhere (a folder or eval JSON, one image per prompt id) with the model's metrics, "
                       "paired with a stored fp run or a reference folder; stored as a labelled run that compare and report show")
    from qbench.score_cli import add_arguments as score_arguments

    score_arguments(p)
    p.add_argument("--metric-option", "-M", action="append", type=_kv, default=[], metavar="KEY=VALUE", help="metric option (repeatable)")
    p.set_defaults(func="cmd_score")
    p = sub.add_parser("regress", help="regression check: the toy models' quality cells through `qbench run` against reports/baselines/toy.json, "
                       "and (--speed) the pytest-benchmark suite against its committed baseline; prints what moved")
    from qbench.regress import add_arguments

    add_arguments(p)
    p.set_defaults(func="cmd_regress")
    p = sub.add_parser("show", help="one stored run in full")
    p.add_argument("run", help="run id, or an unambiguous prefix or suffix (compare prints the last 6 characters)")
    _store_args(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func="cmd_show")
    p = sub.add_parser("runs", help="every stored run with its status (done, running, stale = process gone, interrupted, failed)")
    p.add_argument("--model")
    p.add_argument("--status", choices=["done", "running", "stale", "interrupted", "failed"])
    _store_args(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func="cmd_runs")
    p = sub.add_parser("list", help="registered models, methods, metrics or prompt sets")
    p.add_argument("kind", nargs="?", choices=["models", "methods", "metrics", "prompts"])
    p.add_argument("--json", action="store_true")
    p.set_defaults(func="cmd_list")
    for name, target, helptext in [
        ("bench-kernels", "qbench.quant.bench:main", "benchmark quantized vs full-precision linear layers at real GEMM shapes"),
        ("size", "qbench.sizes:main", "FP16 and deployable bytes of the real denoisers (meta device) per method x bit width"),
        ("zoo", "qbench.zoo.cli:main", "the toy world: train / check the shipped toy models"),
    ]:
        # every argument, --help and other flags included, goes to the command's own parser: with
        # no prefix character here, argparse never takes a leading "--flag" for an option of ours
        p = sub.add_parser(name, help=helptext, add_help=False, prefix_chars="\0")
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(func="cmd_delegate", delegate_target=target)
    return parser
