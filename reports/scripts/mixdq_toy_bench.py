"""Benchmark of MixDQ's sensitivity pass: the output-SQNR replays with and without prefix reuse
(``-O reuse_prefix``: the denoiser units before the perturbed layer served from recorded
full-precision outputs), on the same model, prompts and layers, each in a fresh results folder.

    python reports/scripts/mixdq_toy_bench.py [MODEL] [CALIB_PROMPTS] [INCLUDE]
    e.g. python reports/scripts/mixdq_toy_bench.py tiny-sdxl-turbo coco2017-calib:2 '*resnets*'

Every layer is put in the quality group (``-O content=NO_LAYER``) so that every configuration is an
output-SQNR replay; one split point (``k_sweep=1``, ``b_sweep=W``) keeps the allocation step short.
Prints the sensitivity pass's wall and CPU seconds of both arms, their ratio, and whether every
sensitivity score is identical (it must be: the speed-up may not change the result). Wall times on a
shared CPU are noisy: the CPU seconds are the better comparison.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def calibrate(model: str, calib: str, include: str, reuse: bool, out: str) -> dict:
    argv = [sys.executable, "-m", "qbench", "calibrate", "--method", "mixdq", "--bits", "W4A8", "--model", model, "--calib-prompts", calib,
            "--out-dir", out, "--no-progress", "-O", f"include={include}", "-O", "content=NO_LAYER", "-O", "k_sweep=1", "-O", "b_sweep=4",
            "-O", "a_candidates=8", "-O", f"reuse_prefix={str(reuse).lower()}"]
    res = subprocess.run(argv, capture_output=True, text=True, check=False)
    if res.returncode:
        sys.exit(f"calibrate failed ({'with' if reuse else 'without'} prefix reuse): {res.stderr.strip().splitlines()[-1]}")
    summary = json.loads(res.stdout)
    with open(summary["json"], encoding="utf-8") as f:
        return json.load(f)


def main() -> None:
    model = sys.argv[1] if len(sys.argv) > 1 else "tiny-sdxl-turbo"
    calib = sys.argv[2] if len(sys.argv) > 2 else "coco2017-calib:2"
    include = sys.argv[3] if len(sys.argv) > 3 else "*resnets*"
    runs = {}
    for reuse in (False, True):
        with tempfile.TemporaryDirectory() as out:
            runs[reuse] = calibrate(model, calib, include, reuse, out)
    before, after = runs[False], runs[True]
    same = before["sensitivity"] == after["sensitivity"] and before["allocation"] == after["allocation"]
    c = after["counts"]
    print(f"model {model}, calibration prompts {calib}, layers {include!r}: {c['layers']} layers ({c.get('conv2d', 0)} Conv2d) x "
          f"{c['configs'] // c['layers']} widths = {c['configs']} output-SQNR configurations")
    for name, r in (("before (full replays)", before), ("after (prefix reuse)", after)):
        t = r["timings"]
        print(f"  {name:22s} sensitivity {t['sensitivity_s']:8.1f} s wall {t['sensitivity_cpu_s']:8.1f} s CPU, {r['counts']['forward_passes']} denoiser passes")
    tb, ta = before["timings"], after["timings"]
    print(f"  after / before: wall {ta['sensitivity_s'] / tb['sensitivity_s']:.2f}x, CPU {ta['sensitivity_cpu_s'] / tb['sensitivity_cpu_s']:.2f}x")
    print(f"  scores and allocation identical: {same}")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
