"""A run sharded over 2 CPU processes (torchrun, gloo) gives the same images and the same numbers
as a one-process run: identical PNG bytes, identical metric values and per-prompt scores."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

ARGS = ["run", "--model", "toy-flux", "--method", "naive", "--bits", "W4A8", "--prompts", "toy:10", "--batch-size", "3",
        "--metrics", "psnr,ssim,toy-acc,fd-toyclip,fid-fp,clip,jaq", "-M", "standin=true",
        "--latency-warmup", "0", "--latency-repeats", "1", "--no-progress"]


def _env(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", QBENCH_STANDIN_DIR=str(tmp_path / "standins"))
    env.pop("WORLD_SIZE", None)
    return env


def _hashes(images_dir):
    return {f: hashlib.sha256(open(os.path.join(images_dir, f), "rb").read()).hexdigest()
            for f in sorted(os.listdir(images_dir)) if f.endswith(".png")}


def _stored(out_dir):
    from qbench.store import Store

    s = Store(os.path.join(out_dir, "qbench.sqlite"), create=False)
    (run,) = s.runs()
    return run, s.per_image(run["id"])


def _free_port() -> int:
    """A TCP port free on this machine now (two test sessions at once must not share torchrun's)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _one_and_two_ranks(tmp_path, args, port=None, timeout=900):
    """``qbench *args`` in one process, then on 2 gloo ranks (torchrun, ``port``), each in its own
    results folder; both must succeed. Returns the folders and ``((run, per-image), ...)``."""
    one, two = tmp_path / "one", tmp_path / "two"
    env = _env(tmp_path)
    r1 = subprocess.run([sys.executable, "-m", "qbench", *args, "--out-dir", str(one)], env=env, capture_output=True, text=True, timeout=timeout)
    assert r1.returncode == 0, r1.stderr[-2000:]
    r2 = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port or _free_port()),
                         "-m", "qbench", *args, "--out-dir", str(two)], env=env, capture_output=True, text=True, timeout=timeout)
    assert r2.returncode == 0, r2.stderr[-3000:]
    return (one, two), (_stored(one), _stored(two))


def test_two_gloo_ranks_match_one_process(tmp_path):
    _, ((run1, per1), (run2, per2)) = _one_and_two_ranks(tmp_path, ARGS, timeout=600)
    res1, res2 = run1["result"], run2["result"]
    assert res2["provenance"]["distributed"]["world_size"] == 2 and "distributed" not in res1["provenance"]
    assert "rank 0 of 2" in res2["latency"]["kind"]
    # the same images, byte for byte (same batches, same seeds, written by whichever rank)
    h1, h2 = _hashes(res1["images_dir"]), _hashes(res2["images_dir"])
    assert len(h1) == 10 and h1 == h2
    assert res1["n_generated"] == res2["n_generated"] == 10
    # the same numbers: every metric value and standard error, every per-prompt score
    m1 = {k: (v["value"], v["stderr"], v["n"]) for k, v in run1["metrics"].items()}
    m2 = {k: (v["value"], v["stderr"], v["n"]) for k, v in run2["metrics"].items()}
    assert m1 == m2 and "fid-fp" in m1 and "fd-toyclip" in m1 and "toy-acc" in m1
    assert per1 == per2 and len(per1["psnr"]) == 10
    json.dumps(res2)  # stored as JSON


def test_qsched_calibration_shards_its_batches_and_chooses_the_same_coefficients(tmp_path):
    """Q-Sched's search on 2 ranks: each point's calibration batches are split across the ranks
    (CalibrationContext.map_batches); both ranks see every score, take the same search path, and
    the checkpoint and the run's numbers equal the one-process run's."""
    args = ["run", "--model", "toy-flux", "--method", "qsched", "--bits", "W4A8", "--prompts", "toy:4", "--metrics", "psnr,jaq",
            "--calib-prompts", "toy-calib:4", "-O", "search=grid", "-O", "grid_n=3", "-O", "calib_batch_size=1",
            "--latency-warmup", "0", "--latency-repeats", "1", "--no-progress"]
    _, ((run1, per1), (run2, per2)) = _one_and_two_ranks(tmp_path, args)
    c1 = run1["result"]["method_report"]["coefficients"]
    c2 = run2["result"]["method_report"]["coefficients"]
    assert c1 == c2
    cal1, cal2 = (r["result"]["method_report"]["calibration"] for r in (run1, run2))
    assert cal1["images"] == cal2["images"] == 3 * 3 * 4 and cal1["jaq_after"] == cal2["jaq_after"]
    assert {k: v["value"] for k, v in run1["metrics"].items()} == {k: v["value"] for k, v in run2["metrics"].items()}
    assert _hashes(run1["result"]["images_dir"]) == _hashes(run2["result"]["images_dir"]) and per1 == per2


def test_mixdq_calibration_shards_its_configs_and_allocates_the_same(tmp_path):
    """MixDQ's sensitivity configs and candidate allocations are split across 2 ranks
    (CalibrationContext.map_batches); every rank gets every score, so the allocation, the run's
    images and its numbers equal the one-process run's, and the main rank's score cache holds
    all of them."""
    args = ["run", "--model", "toy-flux", "--method", "mixdq", "--bits", "W4A8", "--prompts", "toy:3", "--metrics", "psnr",
            "--calib-prompts", "toy-calib:2", "-O", "k_sweep=0.8,0.96", "-O", "b_sweep=3.9,4", "-O", "a_candidates=8",
            "--latency-warmup", "0", "--latency-repeats", "1", "--no-progress"]
    (one, two), ((run1, per1), (run2, per2)) = _one_and_two_ranks(tmp_path, args)
    rep1, rep2 = run1["result"]["method_report"], run2["result"]["method_report"]
    assert rep1["allocation_origin"] == rep2["allocation_origin"] == "calibrated"
    yaml1, yaml2 = (open(r["calibration"]["yaml"]).read() for r in (rep1, rep2))
    assert yaml1 == yaml2 and "mean W" in yaml1
    cal1, cal2 = (r["calibration"]["counts"] for r in (rep1, rep2))
    # the same work, except that each rank records its own prefix outputs once (one replay of the
    # steps per extra rank: the prefix reuse of the output-SQNR replays)
    fw1, fw2 = cal1.pop("forward_passes"), cal2.pop("forward_passes")
    assert cal1 == cal2 and cal1["computed"] == cal1["configs"] > 0 and fw1 <= fw2 <= fw1 + 4
    assert {k: v["value"] for k, v in run1["metrics"].items()} == {k: v["value"] for k, v in run2["metrics"].items()}
    assert _hashes(run1["result"]["images_dir"]) == _hashes(run2["result"]["images_dir"]) and per1 == per2
    caches = [sorted(p.read_text().splitlines()) for d in (one, two) for p in d.rglob("*sensitivity*.jsonl")]
    assert len(caches) == 2 and caches[0] == caches[1]


_FLAKY = '''
import os
from qbench.api import Method
from qbench.errors import QBenchError


class Flaky(Method):
    """Full precision, except that converting fails on rank 1 (a cell that fails on one rank only)."""

    name = "flaky"

    def convert(self, model):
        if os.environ.get("RANK") == "1":
            raise QBenchError("flaky: rank 1 cannot convert")
'''

_LAUNCH = '''
import sys
sys.path.insert(0, {here!r})
from qbench.catalog import METHODS
METHODS.register("flaky", "flaky_method:Flaky", "fails on rank 1")
from qbench.cli import main
sys.exit(main(sys.argv[1:]))
'''


def test_sweep_on_two_ranks_a_cell_failing_on_one_rank_fails_on_both_and_the_sweep_goes_on(tmp_path):
    """The main rank decides which cells run (a repeated cell, seeds [42, 42], is one run: no rank
    crashes); a cell that fails on rank 1 only fails on both ranks (no hang) and the next cell runs;
    only the main rank prints."""
    (tmp_path / "flaky_method.py").write_text(_FLAKY)
    launch = tmp_path / "launch.py"
    launch.write_text(_LAUNCH.format(here=str(tmp_path)))
    out = tmp_path / "r"
    sweep = tmp_path / "s.yaml"
    sweep.write_text(f"models: [toy-flux]\nmethods: [flaky, fp]\nseeds: [42, 42]\nrun: {{prompts: 'toy:4', metrics: [psnr], batch_size: 2, "
                     f"latency_warmup: 0, latency_repeats: 1, out_dir: {out}}}\n")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()), str(launch),
                        "sweep", str(sweep), "--no-progress"], env=_env(tmp_path), capture_output=True, text=True, timeout=900)
    assert r.returncode == 1, r.stderr[-3000:]  # a failed cell: exit 1, after the others ran
    assert "rank 1 of 2 failed: flaky: rank 1 cannot convert" in r.stdout
    assert r.stdout.count("sweep s: 4 cells") == 1 and r.stdout.count("[1/4] toy-flux / flaky: running") == 1  # one rank prints
    assert "[2/4] toy-flux / flaky: same cell as an earlier one (failed above), skipped" in r.stdout
    assert "[4/4] toy-flux / fp: same cell as an earlier one (run " in r.stdout
    from qbench.store import Store

    runs = Store(str(out / "qbench.sqlite"), create=False).runs(status=None)
    by = {}
    for run in runs:
        by.setdefault(run["method"], []).append(run["status"])
    assert by == {"flaky": ["failed"], "fp": ["done"]}, by
