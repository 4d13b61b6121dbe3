"""``qbench regress``: the regression check, locally, with a table of what moved.

* **Quality** (also ``tests/test_regression_toy.py`` in CI): every cell of :data:`CELLS` on both
  toy models runs through :func:`qbench.harness.run` (the path of ``qbench run``) on
  :data:`PROMPTS`, and each metric is compared with ``reports/baselines/toy.json``: a cell fails
  when a metric is worse than its baseline by more than the metric's tolerance (``abs``:
  ``value < base - t`` for higher-is-better; ``rel``: the nunchaku pattern ``value > base * (1 + t)``
  for lower-is-better). Tolerances come from the measured noise stored in the same file
  (``reports/scripts/measure_noise.py``).
* **Speed and memory** (``make bench``, not CI): the pytest-benchmark suite ``tests/bench`` runs with
  ``--benchmark-compare=tests/bench/baseline.json --benchmark-compare-fail=STAT:X%`` (STAT, the
  median or the minimum of the rounds, and X from the measured noise in ``tests/bench/noise.json``);
  then each benchmark's STAT and its peak generation memory (``extra_info``) are compared with the
  baseline here.

Adding a method to the regression check is one line in :data:`CELLS` plus
``python reports/scripts/make_baseline.py --add`` (measures the new cells only).
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
from typing import Any

from qbench.errors import QBenchError
from qbench.resources import data_path

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: ``reports/baselines`` of the checkout, or the wheel's ``qbench/data/baselines`` (:mod:`qbench.resources`)
BASELINES_DIR = data_path("baselines")
BASELINE = os.path.join(BASELINES_DIR, "toy.json")
BENCH_DIR = os.path.join(REPO, "tests", "bench")
BENCH_BASELINE = os.path.join(BENCH_DIR, "baseline.json")
BENCH_NOISE = os.path.join(BENCH_DIR, "noise.json")
MODELS = ("toy-flux", "toy-lcm")
PROMPTS = "toy:32"
BATCH = 16
METRICS = ("toy-acc", "jaq", "fd-toyclip", "psnr", "ssim")
HIGHER_IS_BETTER = {"toy-acc": True, "jaq": True, "fd-toyclip": False, "psnr": True, "ssim": True}
#: the quality cells, per model: (method, bits, method options; ``{model}`` and ``{baselines}``
#: (:data:`BASELINES_DIR`) in an option value are filled in). One line per method configuration.
CELLS: tuple[tuple[str, str | None, dict[str, Any]], ...] = (
    ("fp", None, {}),
    ("naive", "W8A8", {}),
    ("naive", "W4A8", {}),
    ("qsched", "W4A8", {"qsched_ckpt": "{baselines}/qsched/{model}_W4A8.json"}),
    ("mixdq", "W4A8", {"allocation": "{baselines}/mixdq/{model}_W4A8.yaml"}),
    ("torchao", "W8A8", {"config": "int8dq"}),
    ("diffusers", "W8A16", {"backend": "quanto", "config": "int8"}),
)
#: methods whose numbers depend on whether ``torch._int_mm`` is exact on this CPU (torchao's int8dq
#: runs it; without a VNNI/AMX int8 dot its int16 pair sums saturate): their cells are checked only
#: where it is exact, else reported as ``n/a (CPU)`` (the baseline was recorded on an exact CPU)
INT_MM_DEPENDENT = ("torchao",)


def int_mm_exact() -> tuple[bool, str]:
    """Whether ``torch._int_mm`` is exact on this CPU (:mod:`qbench.quant.backends`' probe): (ok, note)."""
    from qbench.quant import backends

    r = backends.selection("cpu").probe.get("int_mm")
    return (bool(r and r.available and r.exact), r.note if r else "not probed")
#: metrics measured against the full-precision images: not checked on the fp cell (itself)
REFERENCE_METRICS = ("psnr", "ssim")


def cell_id(model: str, method: str, bits: str | None) -> str:
    return f"{model}/{method}" + (f" {bits}" if bits else "")


def cells(models=MODELS) -> list[dict[str, Any]]:
    """Every (model, cell) with its options filled in."""
    out = []
    for m in models:
        for method, bits, opts in CELLS:
            o = {k: v.format(model=m, baselines=BASELINES_DIR) if isinstance(v, str) else v for k, v in opts.items()}
            out.append({"id": cell_id(m, method, bits), "model": m, "method": method, "bits": bits, "options": o})
    return out


def run_cell(cell: dict[str, Any], out_dir: str) -> dict[str, float]:
    """The metrics of one cell through :func:`qbench.harness.run` (latency: 1 timed run, no warm-up:
    speed is the benchmarks' job)."""
    from qbench.config import RunConfig
    from qbench.harness import run

    cfg = RunConfig(model=cell["model"], method=cell["method"], bits=cell["bits"], prompts=PROMPTS, batch_size=BATCH, metrics=list(METRICS),
                    out_dir=out_dir, latency_warmup=0, latency_repeats=1, method_options=dict(cell["options"]), device="cpu")
    res = run(cfg, show_progress=False)
    return {k: float(res.metrics[k]["value"]) for k in METRICS}


def measure(selected: list[dict[str, Any]], out_dir: str | None = None, say=print) -> dict[str, dict[str, float]]:
    """Cell id -> metrics, for the ``selected`` cells (a temporary results folder by default)."""
    tmp = None if out_dir else tempfile.TemporaryDirectory(prefix="qbench-regress-")
    try:
        out = {}
        for c in selected:
            out[c["id"]] = run_cell(c, out_dir or tmp.name)
            say(f"  {c['id']}: " + ", ".join(f"{k} {v:.4f}" for k, v in out[c["id"]].items()))
        return out
    finally:
        if tmp:
            tmp.cleanup()


def _load_json(path: str, what: str, script: str, shape: dict[str, type] | None = None) -> dict[str, Any]:
    """A committed JSON object holding (at least) the keys of ``shape`` with their types; one-line
    QBenchError when it is missing, unreadable or of another shape."""
    from qbench.fsutil import read_json_file

    if not os.path.lexists(path):
        raise QBenchError(f"no {what} at {path}; `python reports/scripts/{script}` writes it")
    try:
        data = read_json_file(path, what)  # regular file, bounded size and depth; one line on error
    except (OSError, ValueError) as e:
        raise QBenchError(f"{what} {path} is unreadable: {e}") from None
    wrong = [k for k, t in (shape or {}).items() if not isinstance(data.get(k) if isinstance(data, dict) else None, t)]
    if not isinstance(data, dict) or wrong:
        got = type(data).__name__ if not isinstance(data, dict) else f"an object without {', '.join(wrong)} of the right type"
        raise QBenchError(f"{what} {path} is not a qbench {what} (a JSON object with {', '.join(shape or {}) or 'keys'}; got {got})")
    return data


def load_baseline(path: str = BASELINE) -> dict[str, Any]:
    base = _load_json(path, "regression baseline", "make_baseline.py", {"cells": dict, "tolerance": dict})
    for cid, cell in base["cells"].items():
        if not (isinstance(cell, dict) and isinstance(cell.get("metrics"), dict) and isinstance(cell.get("method"), str)
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in cell["metrics"].values())):
            raise QBenchError(f"regression baseline {path}: cell {cid!r} is not {{\"method\": str, \"metrics\": {{name: number}}}}")
    return base


def limit(metric: str, base: float, tol: dict[str, Any]) -> float:
    """The worst value ``metric`` may take given its baseline value and tolerance."""
    hib = HIGHER_IS_BETTER[metric]
    t = float(tol["value"])
    if tol["kind"] == "rel":
        return base * (1 - t) if hib else base * (1 + t)
    return base - t if hib else base + t


def check_quality(baseline: dict[str, Any], current: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    """One row per (cell, metric) of the baseline: baseline, current, change, the limit and a
    status: ``ok``, ``WORSE`` (beyond the tolerance: a regression), ``better`` (beyond the
    tolerance the other way: the baseline is stale), ``missing``, or ``n/a (CPU)`` for a cell of
    :data:`INT_MM_DEPENDENT` on a CPU where ``torch._int_mm`` is inexact."""
    rows = []
    exact = None
    for cid, cell in baseline["cells"].items():
        cur = current.get(cid)
        if cell["method"] in INT_MM_DEPENDENT and exact is None:
            exact = int_mm_exact()
        for metric, base in cell["metrics"].items():
            if cell["method"] == "fp" and metric in REFERENCE_METRICS:
                continue
            tol = (cell.get("tolerance") or {}).get(metric) or baseline["tolerance"][metric]  # a cell's own, where measured
            lim = limit(metric, base, tol)
            v = None if cur is None else cur.get(metric)
            if cell["method"] in INT_MM_DEPENDENT and exact is not None and not exact[0]:
                status = "n/a (CPU)"  # torch._int_mm inexact here: the number depends on the CPU kind
            elif v is None or not math.isfinite(v):
                status = "missing"
            else:
                hib = HIGHER_IS_BETTER[metric]
                worse = v < lim if hib else v > lim
                mirror = 2 * base - lim
                better = v > mirror if hib else v < mirror
                status = "WORSE" if worse else "better" if better else "ok"
            rows.append({"cell": cid, "metric": metric, "baseline": base, "current": v, "change": None if v is None else v - base,
                         "limit": lim, "tolerance": f"{tol['kind']} {tol['value']:g}", "status": status})
    return rows


def failures(rows: list[dict[str, Any]]) -> list[str]:
    return [f"{r['cell']} {r['metric']}: {'missing' if r['current'] is None else format(r['current'], '.6g')} vs baseline {r['baseline']:.6g} "
            f"(limit {r['limit']:.6g}, {r['tolerance']})"
            for r in rows if r["status"] in ("WORSE", "missing")]


# -- speed and memory -------------------------------------------------------------------------------------
def load_noise(path: str = BENCH_NOISE) -> dict[str, Any]:
    return _load_json(path, "benchmark noise file", "bench_baseline.py")


def run_bench(json_out: str, baseline: str | None, fail_pct: float | None, extra: list[str] | None = None, stat: str = "median") -> int:
    """Run the pytest-benchmark suite (a subprocess, from the repository root); returns its exit code."""
    if not os.path.isdir(BENCH_DIR):
        raise QBenchError(f"no benchmark suite at {BENCH_DIR}: `qbench regress --speed` runs from a qbench checkout")
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "bench", BENCH_DIR, "--benchmark-enable", f"--benchmark-json={json_out}",
           "--benchmark-min-rounds=15", "--benchmark-max-time=3", "--benchmark-sort=name"]
    if baseline:
        cmd += [f"--benchmark-compare={baseline}"] + ([f"--benchmark-compare-fail={stat}:{fail_pct:g}%"] if fail_pct else [])
    env = dict(os.environ, OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    return subprocess.call(cmd + (extra or []), cwd=REPO, env=env)


def check_speed(baseline: dict[str, Any], current: dict[str, Any], noise: dict[str, Any]) -> list[dict[str, Any]]:
    """Per benchmark: the change of ``noise["stat"]`` (median or min of the rounds) against
    ``noise["latency_fail_pct"]`` and of the peak generation memory against
    ``noise["memory_fail_mib"]`` (benchmarks with it)."""
    base = {b["fullname"]: b for b in baseline["benchmarks"]}
    rows = []
    lat_pct, mem_mib, stat = float(noise["latency_fail_pct"]), float(noise["memory_fail_mib"]), noise.get("stat", "median")
    for b in current["benchmarks"]:
        ref = base.get(b["fullname"])
        if ref is None:
            rows.append({"cell": b["name"], "metric": f"{stat} ms", "baseline": None, "current": b["stats"][stat] * 1e3, "change": None,
                         "limit": None, "tolerance": "-", "status": "new"})
            continue
        med, bmed = b["stats"][stat] * 1e3, ref["stats"][stat] * 1e3
        lim = bmed * (1 + lat_pct / 100)
        rows.append({"cell": b["name"], "metric": f"{stat} ms", "baseline": bmed, "current": med, "change": med - bmed, "limit": lim,
                     "tolerance": f"+{lat_pct:g}%", "status": "WORSE" if med > lim else "better" if med < bmed * (1 - lat_pct / 100) else "ok"})
        pm, bpm = b["extra_info"].get("peak_generate_mib"), ref["extra_info"].get("peak_generate_mib")
        if pm is not None and bpm is not None:
            rows.append({"cell": b["name"], "metric": "peak MiB", "baseline": bpm, "current": pm, "change": pm - bpm, "limit": bpm + mem_mib,
                         "tolerance": f"+{mem_mib:g} MiB", "status": "WORSE" if pm > bpm + mem_mib else "better" if pm < bpm - mem_mib else "ok"})
    return rows


_ISA_ORDER = ("amx_int8", "avx512_vnni", "avx_vnni", "avx512f", "avx2")


def cpu_kind(cpu: dict[str, Any]) -> dict[str, Any]:
    """Pure: the kind of CPU a benchmark's speed depends on, from py-cpuinfo's dict (what
    pytest-benchmark stores as ``machine_info.cpu``): vendor, the best integer-GEMM ISA level
    (AMX, AVX512-VNNI, AVX-VNNI, AVX512, AVX2: it picks the kernel path) and the core count."""
    flags = set(cpu.get("flags") or [])
    isa = next((f for f in _ISA_ORDER if f in flags or f.replace("_", "") in flags), "other")
    return {"vendor": cpu.get("vendor_id_raw"), "isa": isa, "cores": cpu.get("count"), "brand": cpu.get("brand_raw")}


def check_same_cpu_kind(baseline: dict[str, Any], path: str) -> None:
    """Refuse (one line) a speed baseline recorded on another kind of CPU: its times say nothing
    about this machine's."""
    try:
        import cpuinfo  # py-cpuinfo, which pytest-benchmark records its machine_info with
    except ImportError:
        raise QBenchError("the speed check needs pytest-benchmark (pip install -e '.[test]')") from None
    base = cpu_kind(((baseline.get("machine_info") or {}).get("cpu")) or {})
    here = cpu_kind(cpuinfo.get_cpu_info())
    keys = ("vendor", "isa", "cores")
    if any(base[k] != here[k] for k in keys):
        show = lambda k: f"{k['brand']} ({k['vendor']}, {k['isa']}, {k['cores']} cores)"
        raise QBenchError(f"{path} was recorded on {show(base)}, this machine is {show(here)}: its speed numbers are not comparable; "
                          f"record a baseline here with `make bench-baseline` (or pass --bench-baseline FILE from this kind of CPU)")


def print_table(title: str, against: str, rows: list[dict[str, Any]]) -> None:
    from rich.table import Table
    from rich.text import Text

    from qbench.tables import console

    from rich import box

    style = {"WORSE": "bold red", "missing": "bold red", "better": "yellow", "new": "yellow", "ok": "green", "n/a (CPU)": "dim"}

    def num(v):
        return "-" if v is None else f"{v:.5g}" if abs(v) < 1e4 else f"{v:.0f}"

    body = []
    for r in sorted(rows, key=lambda r: (r["status"] == "ok", r["cell"], r["metric"])):
        ch = "-" if r["change"] is None else f"{r['change']:+.4g}" + (f" ({100 * r['change'] / r['baseline']:+.1f}%)" if r["baseline"] else "")
        body.append([r["cell"], r["metric"], num(r["baseline"]), num(r["current"]), ch, num(r["limit"]), r["tolerance"], r["status"]])
    # numbers are never cut: their columns keep their full width and the cell names wrap; below
    # 120 columns the tolerance rules move under the table (one line per metric)
    con = console()
    narrow = con.width < 120
    heads = ["cell", "metric", "baseline", "current", "change", "limit", "tolerance", "status"]
    if narrow:
        heads.remove("tolerance")
        body = [b[:6] + b[7:] for b in body]
    t = Table(title=Text(f"{title} — against {against}"), title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False,
              collapse_padding=True)
    for i, col in enumerate(heads):
        wraps = col in ("cell", "tolerance")
        t.add_column(col, justify="left" if col in ("cell", "metric", "tolerance", "status") else "right", no_wrap=not wraps,
                     overflow="fold", min_width=None if wraps else max([len(col)] + [len(b[i]) for b in body]))
    for b in body:
        t.add_row(*[Text(x) for x in b[:-1]], Text(b[-1], style=style.get(b[-1], "")))
    con.print(t)
    if narrow:
        for metric, tol in sorted({(r["metric"], r["tolerance"]) for r in rows}):
            con.print(Text(f"tolerance {metric}: {tol}", style="dim"))


def add_arguments(p) -> None:
    p.add_argument("--quality", action="store_true", help="only the quality cells (through `qbench run`)")
    p.add_argument("--speed", action="store_true", help="only the speed and memory benchmarks (pytest-benchmark)")
    p.add_argument("--model", action="append", help="only this toy model's cells (repeatable)")
    p.add_argument("--baseline", default=BASELINE, help="quality baseline JSON (default reports/baselines/toy.json)")
    p.add_argument("--bench-baseline", default=BENCH_BASELINE, help="pytest-benchmark baseline JSON (default tests/bench/baseline.json)")
    p.add_argument("--save", metavar="FILE", help="write the measured quality numbers (cell -> metrics) as JSON")
    p.add_argument("--out-dir", help="results folder of the quality runs (default: a temporary one, removed after)")


def main(args) -> int:
    both = not (args.quality or args.speed)
    bad: list[str] = []
    if args.quality or both:
        base = load_baseline(args.baseline)
        models = tuple(args.model or MODELS)
        unknown = [m for m in models if m not in MODELS]
        if unknown:
            raise QBenchError(f"no regression cells for {', '.join(unknown)} (cells exist for {', '.join(MODELS)})")
        selected = [c for c in cells(models) if c["id"] in base["cells"]]
        print(f"quality: {len(selected)} cells through qbench.harness.run on {PROMPTS} (batch {BATCH})")
        cur = measure(selected, args.out_dir)
        if args.save:
            from qbench.results_export import write_text

            write_text(args.save, json.dumps(cur, indent=1, sort_keys=True) + "\n")
        rows = check_quality({**base, "cells": {k: v for k, v in base["cells"].items() if k in cur}}, cur)
        print_table("quality", os.path.relpath(args.baseline), rows)
        bad += failures(rows)
        missing = [c["id"] for c in cells(models) if c["id"] not in base["cells"]]
        if missing:
            print(f"not in the baseline (run `python reports/scripts/make_baseline.py --add`): {', '.join(missing)}")
    if args.speed or both:
        noise = load_noise()
        base_b = _load_json(args.bench_baseline, "benchmark baseline", "bench_baseline.py", {"benchmarks": list})  # before the 75 s of benchmarks
        check_same_cpu_kind(base_b, os.path.relpath(args.bench_baseline))
        with tempfile.TemporaryDirectory(prefix="qbench-bench-") as tmp:
            out = os.path.join(tmp, "current.json")
            rc = run_bench(out, args.bench_baseline, float(noise["latency_fail_pct"]), stat=noise.get("stat", "median"))
            if not os.path.exists(out):
                raise QBenchError(f"the benchmark suite produced no results (pytest exit {rc})")
            with open(out) as f:
                cur_b = json.load(f)
        rows = check_speed(base_b, cur_b, noise)
        print_table("speed and memory", f"{os.path.relpath(args.bench_baseline)} (recorded on {noise.get('machine', '?')})", rows)
        bad += [f"{r['cell']} {r['metric']}: {r['current']:.4g} vs baseline {r['baseline']:.4g} (limit {r['limit']:.4g})" for r in rows if r["status"] == "WORSE"]
        if rc != 0 and not bad:
            bad.append(f"pytest-benchmark exited {rc} (see above)")
    if bad:
        print("regressions:\n  " + "\n  ".join(bad))
        return 1
    print("no regression beyond the measured noise")
    return 0
