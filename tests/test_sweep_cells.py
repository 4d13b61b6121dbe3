"""`qbench sweep FILE --cell I` (one SLURM array task per cell, tools/slurm/) and `--list-cells`: two
cells run as separate, concurrent processes into one results store, both land, a re-run skips the
finished cell, an out-of-range index is refused in one line."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from qbench.cli import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SWEEP = """
name: cells
models: [toy-flux]
methods:
  - fp
  - {method: naive, bits: [W8A8]}
run:
  prompts: toy:2
  metrics: []
  batch_size: 2
  latency_warmup: 0
  latency_repeats: 1
  out_dir: OUT
"""


def _sweep_file(tmp_path) -> str:
    p = tmp_path / "cells.yaml"
    p.write_text(textwrap.dedent(SWEEP.replace("OUT", str(tmp_path / "out"))))
    return str(p)


def _qbench(*args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "qbench", *args], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_list_cells_and_out_of_range(tmp_path, capsys):
    path = _sweep_file(tmp_path)
    assert main(["sweep", path, "--list-cells"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split("\t")[:3] == ["0", "toy-flux", "fp"] and lines[1].split("\t")[:3] == ["1", "toy-flux", "naive W8A8"]
    assert lines[2] == f"# 2 cells: sbatch --array=0-1 tools/slurm/sweep_array.sbatch {path}"
    assert main(["sweep", path, "--cell", "2"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--cell 2 is out of range: it has 2 cells (0..1)" in err[0]
    assert main(["sweep", path, "--report"]) != 0 and "--report goes with --cell" in capsys.readouterr().err
    assert not (tmp_path / "out").exists(), "nothing ran"


def test_two_cells_in_separate_processes_share_one_store(tmp_path):
    from qbench.store import Store
    from qbench.sweep import load_sweep

    path = _sweep_file(tmp_path)
    procs = [_qbench("sweep", path, "--cell", str(i), "--no-progress") for i in (0, 1)]  # concurrently, as two array tasks
    outs = [p.communicate(timeout=900) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
    assert "[cell 0 of 2] toy-flux / fp: running" in outs[0][0] and "cell 0: run" in outs[0][0]
    assert "[cell 1 of 2] toy-flux / naive W8A8" in outs[1][0]
    assert "qbench compare" not in outs[0][0] + outs[1][0], "a single cell neither compares nor reports"
    sweep = load_sweep(path)
    runs = Store(sweep.cells[0].db_path, create=False).runs(model="toy-flux")
    assert sorted(r["label"] for r in runs) == ["fp", "naive W8A8 simulate"] and len(runs) == 2
    again = _qbench("sweep", path, "--cell", "1", "--no-progress")
    out, err = again.communicate(timeout=900)
    assert again.returncode == 0, err[-2000:]
    assert "finished (run" in out and "cell 1: already finished" in out
    assert len(Store(sweep.cells[0].db_path, create=False).runs(model="toy-flux")) == 2, "the re-run stored nothing"
