"""``qbench reproduce``: published tables as validated specs, their cells as a sweep, the plan, the
dry run, and one table run end to end on the tiny twins with stand-in metrics."""
from __future__ import annotations

import os
import textwrap

import numpy as np
import pytest

from qbench.cli import main
from qbench.errors import ConfigError, ManyErrors
from qbench.reproduce import build_sweep, list_specs, load_spec, twin_of
from qbench.reproduce_report import compare_rows, to_markdown

MINI = """
name: mini
title: "a made-up table"
source: {paper: "Nobody, A Paper, arXiv 0000.00000", table: "Table 1", where: "test file"}
protocol:
  model: lcm
  steps: 4
  guidance: 8.0
  resolution: 512
  prompts: "set-not-registered-yet:10"
  n: 10
  seed: 42
  seed_rule: "seed + index"
  metrics:
    - {metric: psnr, column: PSNR, protocol: "vs FP", decimals: 1}
    - {metric: imagereward, column: IR, protocol: "ImageReward v1.0"}
rows:
  - {label: "FP16", method: fp, published: {imagereward: 0.5}}
  - {label: "W8A8", method: naive, bits: W8A8, published: {psnr: 30.0, imagereward: 0.4}, deviations: ["a stated deviation"]}
  - {label: "other", published: {psnr: 20.0}, why: "no such method here"}
"""


def _write(tmp_path, text, name="t.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return str(p)


def test_shipped_tables_load_and_cite_their_source(capsys):
    import json

    assert main(["reproduce", "--list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [t["name"] for t in listed] == list_specs() and all(t["source"] and t["where"] for t in listed)
    assert main(["reproduce", "--list"]) == 0 and "svdquant-flux-schnell: SVDQuant" in capsys.readouterr().out
    names = list_specs()
    assert "svdquant-flux-schnell" in names
    for n in names:
        s = load_spec(n)
        assert s.source["paper"] and s.source["where"] and s.runnable
    s = load_spec("svdquant-flux-schnell")
    int4 = next(r for r in s.rows if r.label == "INT W4A4, no method")
    assert (int4.method, int4.bits, int4.published["fid"], int4.published["psnr"]) == ("naive", "W4A4", 18.1, 16.3)
    assert "arXiv 2411.05007" in s.source["paper"] and "69f3473f" in s.source["where"]


def test_bad_specs_one_line_per_problem(tmp_path, capsys):
    with pytest.raises(ConfigError, match="no published table 'nope'"):
        load_spec("nope")
    bad = MINI.replace("model: lcm", "model: no-such-model").replace("published: {psnr: 20.0}", "published: {psnr: high, fid: 1}")
    bad = bad.replace("why: \"no such method here\"", "colour: red").replace("method: naive", "method: nonesuch").replace("decimals: 1", "decimals: x")
    with pytest.raises(ManyErrors) as e:
        load_spec(_write(tmp_path, bad))
    text = str(e.value)
    for needle in ("protocol.model", "psnr must be a number", "'fid' is not one of the table's metrics", "unknown key 'colour'",
                   "must say why", "rows[1].method", "decimals (as the table prints them)"):
        assert needle in text, needle
    with pytest.raises(ConfigError, match="source.where must cite"):
        load_spec(_write(tmp_path, MINI.replace('where: "test file"', 'where: ""')))
    # the CLI: one line and a non-zero exit, no traceback
    assert main(["reproduce", _write(tmp_path, bad)]) != 0
    assert main(["reproduce"]) != 0 and main(["reproduce", "svdquant-flux-schnell", "--plan", "--twins"]) != 0
    err = capsys.readouterr().err
    assert "needs a table" in err and "--plan costs the real models" in err and "Traceback" not in err


def test_cells_plan_and_dry_run_without_resolving_the_prompt_set(tmp_path, capsys):
    spec = load_spec(_write(tmp_path, MINI))
    sweep = build_sweep(spec)
    assert [(c.model, c.method, c.bits, c.prompts) for c in sweep.cells] == [
        ("lcm", "fp", None, "set-not-registered-yet:10"), ("lcm", "naive", "W8A8", "set-not-registered-yet:10")]
    twins = build_sweep(spec, twins=True)
    assert twin_of("lcm") == "tiny-lcm" and all(c.model == "tiny-lcm" and c.metric_options["standin"] for c in twins.cells)
    assert main(["reproduce", _write(tmp_path, MINI), "--dry-run", "--twins"]) == 0
    out = capsys.readouterr().out
    assert "lcm -> tiny-lcm" in out and "published only (no such method here)" in out and "qbench run --model tiny-lcm" in out
    assert main(["reproduce", _write(tmp_path, MINI), "--plan", "--json"]) == 0
    import json

    plan = json.loads(capsys.readouterr().out)
    assert [c["prompts"] for c in plan["cells"]] == [10, 10] and plan["total"]["images"] == 20


def _run(model, value, *, standin=False, prompts="set-not-registered-yet:10", n=10):
    details = {"meaningful": False, "weights": "stand-in"} if standin else {"weights": "real"}
    return {"id": "run-abcdef", "model": model, "config": {"prompts": prompts},
            "result": {"metrics": {"psnr": {"value": value, "stderr": 0.1, "n": n, "details": {}},
                                   "imagereward": {"value": value / 100, "stderr": None, "n": n, "details": details}}}}


def test_difference_only_where_comparable(tmp_path):
    spec = load_spec(_write(tmp_path, MINI))
    rows = compare_rows(spec, [_run("lcm", 40.0), _run("lcm", 31.0)])
    by = {(r["row"], r["metric"]): r for r in rows}
    assert set(by) == {("FP16", "imagereward"), ("W8A8", "psnr"), ("W8A8", "imagereward"), ("other", "psnr")}
    assert by[("W8A8", "psnr")]["difference"] == pytest.approx(1.0) and by[("W8A8", "psnr")]["dagger"]
    assert by[("FP16", "imagereward")]["difference"] == pytest.approx(0.4 - 0.5)
    assert by[("other", "psnr")]["qbench"] is None and "no such method here" in by[("other", "psnr")]["made"]
    rows = compare_rows(spec, [_run("lcm", 40.0, standin=True), _run("tiny-lcm", 31.0)])
    by = {(r["row"], r["metric"]): r for r in rows}
    assert by[("FP16", "imagereward")]["difference"] is None and by[("FP16", "imagereward")]["why_no_difference"] == "stand-in metric"
    assert by[("W8A8", "psnr")]["difference"] is None and by[("W8A8", "psnr")]["why_no_difference"] == "tiny twin"
    rows = compare_rows(spec, [_run("lcm", 40.0, n=5), None])
    assert "other prompts or n" in rows[0]["why_no_difference"] and "cell failed" in rows[1]["made"]
    md = to_markdown(spec, rows, twins=False)
    assert "| W8A8 | PSNR | 30.0 | - | n/a |" in md and "| FP16 | IR | 0.5 |" in md


@pytest.mark.slow
def test_svdquant_table_end_to_end_on_the_tiny_twins(tmp_path, capsys):
    from PIL import Image

    ref = tmp_path / "ref"  # a small local "real image" folder: FID's reference under a stand-in Inception
    ref.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(ref / f"{i}.png")
    out = tmp_path / "out"
    argv = ["reproduce", "svdquant-flux-schnell", "--twins", "--fid-reference", str(ref), "--out-dir", str(out), "--no-progress"]
    assert main(argv + ["--list-cells"]) == 0
    listed = capsys.readouterr().out
    assert listed.splitlines()[0].startswith("0\ttiny-flux\tfp") and "sbatch --array=0-1 tools/slurm/sweep_array.sbatch --reproduce svdquant-flux-schnell --twins" in listed
    assert main(argv + ["--cell", "2"]) == 2 and "out of range" in capsys.readouterr().err
    # a SLURM array task per cell (the same entry point), then the table: both cells skipped, the report written
    assert main(argv + ["--cell", "1"]) == 0 and "cell 1: run" in capsys.readouterr().out
    assert not (out / "reproduce-svdquant-flux-schnell-twins.md").exists()
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert first.count("finished (run") == 1
    md = (out / "reproduce-svdquant-flux-schnell-twins.md").read_text()
    assert "TINY TWINS and STAND-IN METRICS" in md
    lines = [ln for ln in md.splitlines() if ln.startswith("| INT W4A4, no method |")]
    assert len(lines) == 4 and all("n/a (tiny twin)" in ln and "tiny-flux" in ln for ln in lines)
    assert "| INT W4A4, no method | FID | 18.1 |" in md and "| BF16 | IR | 0.938 |" in md and "| INT W8A8, SVDQ | LPIPS | 0.120 |" in md
    assert "not run: no SVDQuant method in qbench" in md
    html = (out / "reproduce-svdquant-flux-schnell-twins.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and "INT W4A4, no method" in html and "<script" not in html
    # again: both cells are finished (same identity key) and skipped; the report is the same
    assert main(argv) == 0
    again = capsys.readouterr().out
    assert again.count("finished (run") == 2 and "running" not in again
    assert (out / "reproduce-svdquant-flux-schnell-twins.md").read_text() == md
    assert os.path.exists(out / "qbench.sqlite") and "report:" in first
