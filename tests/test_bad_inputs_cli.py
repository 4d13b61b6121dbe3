"""Hostile and broken inputs across every command (issue 23): one line, a documented exit code,
nothing stored lost, and, for what the arguments and files alone decide, no model library imported.

``ISSUE_CASES`` are the cases the issue lists; ``OWN_CASES`` are further bad inputs found while
fixing them (the README's "Exit codes" section counts both). Each runs the real entry point
(:func:`qbench.cli.main`) in-process; argparse refusals exit 2 through ``SystemExit``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from qbench.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _ckpt() -> dict:
    """A valid 4-step Q-Sched checkpoint (identity coefficients) that the cases break one field of."""
    from qbench.methods.qsched_scheduler import QSchedCoefficients, make_checkpoint

    return make_checkpoint(QSchedCoefficients.identity("ramp"), steps=4, provenance={})


def _deep(n: int) -> str:
    return "[" * n + "]" * n


def _files(tmp: str) -> dict[str, str]:
    """Every input file the cases name, written fresh per test: name -> path."""
    d: dict[str, str] = {}

    def w(name: str, data, binary: bool = False) -> None:
        path = os.path.join(tmp, name)
        with open(path, "wb" if binary else "w", encoding=None if binary else "utf-8") as f:
            f.write(data)
        d[name] = path

    CKPT = _ckpt()
    w("deep.json", _deep(200_000))
    w("ckpt_no_c_eps.json", json.dumps({k: v for k, v in CKPT.items() if k != "c_eps"}))
    w("ckpt_steps_true.json", json.dumps(dict(CKPT, steps=True)))
    w("ckpt_steps_huge.json", json.dumps(dict(CKPT, steps=20_000_000)))
    w("ckpt_params_str.json", json.dumps(dict(CKPT, params=["a", 1])))
    w("ckpt_nan.json", json.dumps(dict(CKPT, params=[float("nan")] * 2)))
    w("ckpt_list.json", "[1, 2]")
    w("sweep_run_list.yaml", "models: [toy-flux]\nmethods: [fp]\nrun: [1, 2]\n")
    w("sweep_seeds_abc.yaml", "models: [toy-flux]\nmethods: [fp]\nseeds: [abc]\n")
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
                                                             for p, c in zip("abcdefgh", "bcdefghi"))
    w("sweep_bomb.yaml", "models: [toy-flux]\nmethods: [fp]\nrun:\n  tag: &t\n" + "".join("    " + x + "\n" for x in bomb.splitlines()))
    w("sweep_models_int.yaml", "models: [1, 2]\nmethods: [fp]\n")
    w("sweep_no_method.yaml", "models: [toy-flux]\nmethods: [{bits: W4A8}]\n")
    w("sweep_bits_int.yaml", "models: [toy-flux]\nmethods: [{method: naive, bits: [4]}]\n")
    w("sweep_options_list.yaml", "models: [toy-flux]\nmethods: [{method: naive, bits: [W4A8], options: [1]}]\n")
    w("sweep_list.yaml", "- a\n- b\n")
    w("sweep_unknown.yaml", "models: [toy-flux]\nmethods: [fp]\nmodel: x\nbogus: 1\n")
    w("sweep_bad_yaml.yaml", "models: [toy-flux\n")
    w("sweep_too_many.yaml", "models: [toy-flux]\nmethods: [fp]\nseeds: [" + ", ".join(str(i) for i in range(10_001)) + "]\n")
    w("sweep_mo_list.yaml", "models: [toy-flux]\nmethods: [fp]\nrun: {method_options: [1]}\n")
    w("empty.yaml", "")
    w("prompts_2m.txt", "a red circle\n" * 2_000_000)
    w("prompts_long_id.jsonl", json.dumps({"id": "x" * 300, "caption": "a red circle"}) + "\n")
    w("prompts_obj_id.jsonl", json.dumps({"id": {"a": 1}, "caption": "a red circle"}) + "\n")
    w("binary.json", b"\xff\xfe\x00", binary=True)
    w("a_file", "not a folder\n")
    w("notadb.sqlite", "text\n")
    w("list.json", "[1, 2]\n")
    w("cfg_resolution.json", json.dumps({"resolution": 100_000}))
    w("cfg_unknown.json", json.dumps({"bogus_field": 1}))
    fifo = os.path.join(tmp, "fifo")
    os.mkfifo(fifo)
    d["fifo"] = fifo
    os.makedirs(os.path.join(tmp, "folder"))
    d["folder"] = os.path.join(tmp, "folder")
    d["missing"] = os.path.join(tmp, "missing.json")
    return d


RUN = ["run", "--model", "toy-flux", "--prompts", "toy:2", "--metrics", "", "--no-progress"]

# (id, argv with {name} placeholders, expected exit code, text in the one line)
ISSUE_CASES = [
    ("qsched ckpt without c_eps", RUN + ["--method", "qsched", "--bits", "W8A8", "-O", "qsched_ckpt={ckpt_no_c_eps.json}"], 2, "'c_eps' must be a list of 4 numbers"),
    ("qsched ckpt steps true", RUN + ["--method", "qsched", "--bits", "W8A8", "-O", "qsched_ckpt={ckpt_steps_true.json}"], 2, "'steps' must be an integer from 1 to 1000"),
    ("qsched ckpt steps 20000000", RUN + ["--method", "qsched", "--bits", "W8A8", "-O", "qsched_ckpt={ckpt_steps_huge.json}"], 2, "'steps' must be an integer from 1 to 1000"),
    ("qsched ckpt 200000 deep", RUN + ["--method", "qsched", "--bits", "W8A8", "-O", "qsched_ckpt={deep.json}"], 2, "nests deeper than 64 levels"),
    ("qsched ckpt FIFO", RUN + ["--method", "qsched", "--bits", "W8A8", "-O", "qsched_ckpt={fifo}"], 2, "is a FIFO (named pipe)"),
    ("config 200000 deep", RUN + ["--config", "{deep.json}"], 2, "nests deeper than 64 levels"),
    ("config FIFO", RUN + ["--config", "{fifo}"], 2, "is a FIFO (named pipe)"),
    ("prompts FIFO", ["run", "--model", "toy-flux", "--prompts", "{fifo}"], 2, "is a FIFO (named pipe)"),
    ("layers option FIFO", RUN + ["--method", "naive", "--bits", "W4A8", "-O", "layers={fifo}"], 2, "is a FIFO (named pipe)"),
    ("sweep file FIFO", ["sweep", "{fifo}", "--dry-run"], 2, "is a FIFO (named pipe)"),
    ("sweep run list", ["sweep", "{sweep_run_list.yaml}", "--dry-run"], 2, "'run' must be a mapping"),
    ("sweep seeds abc", ["sweep", "{sweep_seeds_abc.yaml}", "--dry-run"], 2, "seeds must be integers"),
    ("sweep alias bomb", ["sweep", "{sweep_bomb.yaml}", "--dry-run"], 2, "expands to more than 100000 values"),
    ("plan alias bomb", ["plan", "{sweep_bomb.yaml}"], 2, "expands to more than 100000 values"),
    ("group_size 1e20", RUN + ["--method", "naive", "--bits", "W4A8", "-O", "group_size=1e20"], 2, "group_size must be <= 2147483647"),
    ("plan mfu 0", ["plan", "sweeps/toy.yaml", "--mfu", "0"], 2, "must be in (0, 1]"),
    ("plan mfu nan", ["plan", "sweeps/toy.yaml", "--mfu", "nan"], 2, "expected a finite number"),
    ("plan tflops -1", ["plan", "sweeps/toy.yaml", "--tflops", "-1"], 2, "must be > 0"),
    ("compare runs commas", ["compare", "--runs", ",,,", "--out-dir", "{folder}"], 2, "lists no run id"),
    ("report grid-prompts -5", ["report", "--grid-prompts", "-5", "--out-dir", "{folder}"], 2, "must be from 0 to 1000"),
    ("latency repeats 1e9", RUN + ["--latency-repeats", "1000000000"], 2, "latency_repeats must be <= 1000"),
    ("resolution 100000", RUN + ["--resolution", "100000"], 2, "resolution must be <= 4096"),
    ("2,000,000-line prompt file", ["run", "--model", "toy-flux", "--prompts", "{prompts_2m.txt}"], 2, "more than the 200000 accepted"),
    ("300-character prompt id", ["run", "--model", "toy-flux", "--prompts", "{prompts_long_id.jsonl}"], 2, "at most 120 characters"),
    ("out-dir a file", RUN + ["--out-dir", "{a_file}"], 2, "is a file, not a folder"),
    ("QBENCH_CACHE a file", RUN + ["@env QBENCH_CACHE={a_file}"], 2, "$QBENCH_CACHE="),
    ("QBENCH_STANDIN_DIR a file", RUN + ["@env QBENCH_STANDIN_DIR={a_file}"], 2, "$QBENCH_STANDIN_DIR="),
]

OWN_CASES = [
    ("batch size 0", RUN + ["--batch-size", "0"], 2, "batch_size must be >= 1"),
    ("batch size huge", RUN + ["--batch-size", "100000"], 2, "batch_size must be <= 4096"),
    ("steps 5000", RUN + ["--steps", "5000"], 2, "steps must be <= 1000"),
    ("latency warmup -1", RUN + ["--latency-warmup", "-1"], 2, "latency_warmup must be >= 0"),
    ("latency warmup huge", RUN + ["--latency-warmup", "5000"], 2, "latency_warmup must be <= 1000"),
    ("tag 5000 characters", RUN + ["--tag", "t" * 5000], 2, "tag must be at most 4096 characters"),
    ("prompts N 0", ["run", "--model", "toy-flux", "--prompts", "coco2017:0"], 2, "N must be a positive integer"),
    ("prompts N negative", ["run", "--model", "toy-flux", "--prompts", "coco2017:-3"], 2, "N must be a positive integer"),
    ("prompts N too many", ["run", "--model", "toy-flux", "--prompts", "toy:100000000"], 2, "requested"),
    ("prompts unknown set", ["run", "--model", "toy-flux", "--prompts", "nosuchset:4"], 2, "unknown prompt set"),
    ("prompts missing file", ["run", "--model", "toy-flux", "--prompts", "{missing}"], 2, "does not exist"),
    ("prompts object id", ["run", "--model", "toy-flux", "--prompts", "{prompts_obj_id.jsonl}"], 2, "'id' must be a string or integer"),
    ("calib prompts FIFO", RUN + ["--method", "naive", "--bits", "W8A8", "--calib-prompts", "{fifo}"], 2, "is a FIFO (named pipe)"),
    ("seed abc", RUN + ["--seed", "abc"], 2, "--seed takes integers"),
    ("device cuda:x", RUN + ["--device", "cuda:x"], 2, "unknown device"),
    ("option without key", RUN + ["-O", "=3"], 2, "with a key"),
    ("option without =", RUN + ["-O", "noequals"], 2, "expected KEY=VALUE"),
    ("option 100 deep", RUN + ["--method", "naive", "-O", "layers=" + _deep(100)], 2, "nests deeper than 64"),
    ("metric option without =", RUN + ["-M", "x"], 2, "expected KEY=VALUE"),
    ("db a folder", RUN + ["--db", "{folder}"], 2, "is a folder"),
    ("config missing", RUN + ["--config", "{missing}"], 2, "does not exist"),
    ("config folder", RUN + ["--config", "{folder}"], 2, "is a folder"),
    ("config binary", RUN + ["--config", "{binary.json}"], 2, "not UTF-8"),
    ("config resolution", RUN + ["--config", "{cfg_resolution.json}"], 2, "resolution must be <= 4096"),
    ("config unknown field", RUN + ["--config", "{cfg_unknown.json}"], 2, "unknown RunConfig field"),
    ("qsched ckpt missing", RUN + ["--method", "qsched", "--bits", "W8A8", "-O", "qsched_ckpt={missing}"], 2, "does not exist"),
    ("qsched ckpt a list", RUN + ["--method", "qsched", "--bits", "W8A8", "-O", "qsched_ckpt={ckpt_list.json}"], 2, "is not a Q-Sched checkpoint"),
    ("qsched ckpt string params", RUN + ["--method", "qsched", "--bits", "W8A8", "-O", "qsched_ckpt={ckpt_params_str.json}"], 2, "'params' must be a list of numbers"),
    ("qsched ckpt nan params", RUN + ["--method", "qsched", "--bits", "W8A8", "-O", "qsched_ckpt={ckpt_nan.json}"], 2, "must be finite"),
    ("calibrate ckpt FIFO", ["calibrate", "--method", "qsched", "--model", "toy-flux", "-O", "qsched_ckpt={fifo}"], 2, "is a FIFO (named pipe)"),
    ("export into a file", ["export", "--method", "naive", "--bits", "W4A8", "{a_file}"], 2, "is a file, not a folder"),
    ("export batch of options FIFO", ["export", "--method", "naive", "--bits", "W4A8", "-O", "layers={fifo}", "{folder}/e"], 2, "is a FIFO"),
    ("sweep missing", ["sweep", "{missing}", "--dry-run"], 2, "does not exist"),
    ("sweep folder", ["sweep", "{folder}", "--dry-run"], 2, "is a folder"),
    ("sweep empty", ["sweep", "{empty.yaml}", "--dry-run"], 2, "must hold a mapping"),
    ("sweep a list", ["sweep", "{sweep_list.yaml}", "--dry-run"], 2, "must hold a mapping"),
    ("sweep unknown keys", ["sweep", "{sweep_unknown.yaml}", "--dry-run"], 2, "unknown key(s)"),
    ("sweep bad yaml", ["sweep", "{sweep_bad_yaml.yaml}", "--dry-run"], 2, "cannot parse"),
    ("sweep models ints", ["sweep", "{sweep_models_int.yaml}", "--dry-run"], 2, "models must be model names"),
    ("sweep entry without method", ["sweep", "{sweep_no_method.yaml}", "--dry-run"], 2, "a method entry is a name or a mapping"),
    ("sweep bits ints", ["sweep", "{sweep_bits_int.yaml}", "--dry-run"], 2, "must be bit specs"),
    ("sweep options list", ["sweep", "{sweep_options_list.yaml}", "--dry-run"], 2, "must be a mapping"),
    ("sweep 10001 cells", ["sweep", "{sweep_too_many.yaml}", "--dry-run"], 2, "more than the 10000"),
    ("sweep method_options list", ["sweep", "{sweep_mo_list.yaml}", "--dry-run"], 2, "method_options must be a mapping"),
    ("plan gpus 0", ["plan", "sweeps/toy.yaml", "--gpus", "0"], 2, "must be >= 1"),
    ("plan gpus abc", ["plan", "sweeps/toy.yaml", "--gpus", "abc"], 2, "expected an integer"),
    ("plan mfu 1.5", ["plan", "sweeps/toy.yaml", "--mfu", "1.5"], 2, "must be in (0, 1]"),
    ("plan tflops inf", ["plan", "sweeps/toy.yaml", "--tflops", "inf"], 2, "expected a finite number"),
    ("plan missing file", ["plan", "{missing}"], 2, "does not exist"),
    ("compare db a folder", ["compare", "--db", "{folder}"], 2, "is a folder"),
    ("compare db not sqlite", ["compare", "--db", "{notadb.sqlite}"], 2, "not a qbench results database"),
    ("regress baseline a list", ["regress", "--baseline", "{list.json}"], 2, "is not a qbench regression baseline"),
    ("regress bench baseline a list", ["regress", "--speed", "--bench-baseline", "{list.json}"], 2, "is not a qbench benchmark baseline"),
    ("tag with escape sequences", RUN + ["--tag", "\x1b[31mRED\x1b]0;pwned\x07\nline2"], 2, "tag must be printable text"),
    ("option non-finite", RUN + ["--method", "qsched", "--bits", "W8A8", "-O", 'search_options={"extend": 1e400}'], 2, "non-finite number"),
    ("compare missing db", ["compare", "--out-dir", "{folder}"], 2, "no results database"),
    ("show blank id", ["show", "  ", "--db", "{notadb.sqlite}"], 2, "not a qbench results database"),
    ("runs bad status", ["runs", "--status", "bogus"], 2, "invalid choice"),
    ("list bad kind", ["list", "bogus"], 2, "invalid choice"),
    ("report grid-prompts huge", ["report", "--grid-prompts", "100000", "--out-dir", "{folder}"], 2, "must be from 0 to 1000"),
    ("report runs commas", ["report", "--runs", ",", "--out-dir", "{folder}"], 2, "lists no run id"),
    ("export-results runs commas", ["export-results", "--runs", " , ", "--out-dir", "{folder}"], 2, "lists no run id"),
]

SLOW_CASES = [  # delegated to a command that imports torch first (qbench.quant.bench)
    ("bench-kernels repeats 0", ["bench-kernels", "--repeats", "0"], 2, "must be from 1 to 1000"),
    ("bench-kernels threads 0", ["bench-kernels", "--threads", "0"], 2, "must be from 1 to 4096"),
    ("bench-kernels chunk-rows 0", ["bench-kernels", "--chunk-rows", "0"], 2, "must be from 1 to 1048576"),
    ("bench-kernels flux-tokens -1", ["bench-kernels", "--flux-tokens", "-1"], 2, "must be from 1 to 65536"),
    ("bench-kernels repeats huge", ["bench-kernels", "--repeats", "100000"], 2, "must be from 1 to 1000"),
    ("bench-kernels probe ratio nan", ["bench-kernels", "--max-probe-ratio", "nan"], 2, "expected a finite number"),
]


def _fill(argv: list[str], files: dict[str, str], monkeypatch) -> list[str]:
    out = []
    for a in argv:
        for name, path in files.items():
            a = a.replace("{" + name + "}", path)
        if a.startswith("@env "):
            var, _, value = a[5:].partition("=")
            monkeypatch.setenv(var, value)
            continue
        out.append(a)
    return out


def _one_line(capsys, argv: list[str]) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as e:  # argparse
        code = e.code
    err = capsys.readouterr().err
    lines = [x for x in err.strip().splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("qbench: error:") and "Traceback" not in err, err[-3000:]
    return code, lines[0]


@pytest.mark.parametrize("case", ISSUE_CASES + OWN_CASES, ids=[c[0] for c in ISSUE_CASES + OWN_CASES])
def test_bad_input_is_one_line_with_its_exit_code(tmp_path, capsys, monkeypatch, case):
    _, argv, want_code, needle = case
    monkeypatch.chdir(ROOT)  # sweeps/toy.yaml
    files = _files(str(tmp_path))
    out = tmp_path / "out"
    argv = _fill(argv, files, monkeypatch)
    if argv[0] in ("run", "calibrate", "export") and "--out-dir" not in argv:
        argv += ["--out-dir", str(out)]
    code, line = _one_line(capsys, argv)
    assert code == want_code, (code, line)
    assert needle in line, line
    assert len(line) <= 600
    assert not (out / "qbench.sqlite").exists(), "refused before anything was stored"


@pytest.mark.parametrize("case", SLOW_CASES, ids=[c[0] for c in SLOW_CASES])
def test_bench_kernels_refuses_nonsense_values(capsys, case):
    _, argv, want_code, needle = case
    code, line = _one_line(capsys, argv)
    assert code == want_code and needle in line, line


def test_cases_counted():
    """The README's count of the bad inputs covered here (issue 23 asks for ~50 beyond its own)."""
    assert len(ISSUE_CASES) >= 27 and len(OWN_CASES) + len(SLOW_CASES) >= 50


def _imports_after(argv: list[str], env: dict[str, str] | None = None) -> tuple[int, list[str], str]:
    """(exit code, model libraries imported, stderr) of ``main(argv)`` in a fresh interpreter."""
    code = ("import sys, json\nfrom qbench.cli import main\n"
            "try:\n    rc = main(sys.argv[1:])\nexcept SystemExit as e:\n    rc = e.code\n"
            "libs = ['torch', 'diffusers', 'transformers', 'peft', 'bitsandbytes', 'open_clip']\n"
            "print(json.dumps([rc, [m for m in libs if m in sys.modules]]))\n")
    proc = subprocess.run([sys.executable, "-c", code, *argv], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, **(env or {})))
    rc, libs = json.loads(proc.stdout.strip().splitlines()[-1])
    return rc, libs, proc.stderr


@pytest.mark.parametrize("argv", [
    ["run", "--model", "toy-flux", "--prompts", "nosuchset:4"],
    ["run", "--model", "toy-flux", "--prompts", "coco2017:0"],
    ["run", "--model", "nosuch"],
    ["run", "--resolution", "100000"],
    ["sweep", "sweeps/missing.yaml"],
], ids=["unknown prompt set", "prompts N 0", "unknown model", "resolution", "missing sweep"])
def test_refusals_from_arguments_import_no_model_library(tmp_path, argv):
    """Decided from the arguments alone: refused before torch/diffusers load (the time this saves
    is measured in the README, not asserted here)."""
    rc, libs, err = _imports_after(argv + (["--out-dir", str(tmp_path)] if argv[0] == "run" else []))
    assert rc == 2 and libs == [] and err.count("\n") == 1 and err.startswith("qbench: error:"), (rc, libs, err)


def test_read_only_commands_import_no_model_library(tmp_path):
    """Issue 22 §1: --help, list, compare, runs and show import none of torch, diffusers,
    transformers, peft, bitsandbytes, open_clip."""
    from qbench.store import Store

    db = str(tmp_path / "qbench.sqlite")
    store = Store(db)
    rid = store.start_run({"model": "toy-flux", "method": "fp"}, "fp", None, "simulate")
    store.finish_run(rid, {"label": "fp"}, {"psnr": {"value": 30.0, "stderr": 1.0, "n": 2}})
    for argv in (["--help"], ["list"], ["list", "methods", "--json"], ["runs", "--db", db], ["show", rid[-6:], "--db", db, "--json"],
                 ["compare", "--db", db], ["show", rid[-6:], "--db", db]):
        rc, libs, err = _imports_after(argv)
        assert libs == [], (argv, libs)
        if argv[0] == "show" and "--json" not in argv:  # this hand-made result lacks what the table shows: one line
            assert rc == 2 and err.count("\n") == 1 and "lacks what the table shows" in err, err
        else:
            assert rc == 0, (argv, err[-2000:])
