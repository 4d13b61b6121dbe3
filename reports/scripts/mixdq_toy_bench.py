"""Benchmark of MixDQ's sensitivity pass with and without prefix reuse (``-O reuse_prefix``: the
denoiser units before the perturbed layer served from recorded full-precision outputs, in the
output-SQNR replays and in the first step of every SSIM image), on the same model, prompts and
layers, each arm in a fresh results folder.

    python reports/scripts/mixdq_toy_bench.py [--model M] [--calib SPEC] [--include GLOB] [--quality-only]
    e.g. python reports/scripts/mixdq_toy_bench.py                       # tiny-sdxl-turbo, both groups
         python reports/scripts/mixdq_toy_bench.py --include '*resnets*' --quality-only

Both layer groups are measured as the method's defaults split them (content: SSIM of images;
quality: output SQNR); ``--quality-only`` puts every layer in the quality group
(``-O content=NO_LAYER``). One split point (``k_sweep=1``, ``b_sweep=W``) keeps the allocation step
short (it is not what is compared). Prints each arm's sensitivity wall and CPU seconds, per kind
(SSIM images, SQNR replays), the calls served from the record, their ratios, and whether every
sensitivity score and the allocation are identical (they must be: the speed-up may not change the
result; exit 1 otherwise). Wall times on a shared CPU are noisy: CPU seconds compare better.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def calibrate(args: argparse.Namespace, reuse: bool, out: str) -> dict:
    argv = [sys.executable, "-m", "qbench", "calibrate", "--method", "mixdq", "--bits", "W4A8", "--model", args.model, "--calib-prompts", args.calib,
            "--out-dir", out, "--no-progress", "-O", "k_sweep=1", "-O", "b_sweep=4", "-O", f"reuse_prefix={str(reuse).lower()}"]
    if args.include:
        argv += ["-O", f"include={args.include}"]
    if args.quality_only:
        argv += ["-O", "content=NO_LAYER"]
    res = subprocess.run(argv, capture_output=True, text=True, check=False)
    if res.returncode:
        sys.exit(f"calibrate failed ({'with' if reuse else 'without'} prefix reuse): {res.stderr.strip().splitlines()[-1]}")
    summary = json.loads(res.stdout)
    with open(summary["json"], encoding="utf-8") as f:
        return json.load(f)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny-sdxl-turbo")
    ap.add_argument("--calib", default="coco2017-calib:2")
    ap.add_argument("--include", default="", help="layer glob (default: every layer MixDQ allocates)")
    ap.add_argument("--quality-only", action="store_true", help="every layer in the output-SQNR group")
    args = ap.parse_args()
    runs = {}
    for reuse in (False, True):
        with tempfile.TemporaryDirectory() as out:
            runs[reuse] = calibrate(args, reuse, out)
    before, after = runs[False], runs[True]
    same = before["sensitivity"] == after["sensitivity"] and before["allocation"] == after["allocation"]
    c = after["counts"]
    print(f"model {args.model}, calibration prompts {args.calib}, layers {args.include or 'all'!r}: {c['layers']} layers "
          f"({c.get('conv2d', 0)} Conv2d; {c['content']} content, {c['quality']} quality) = {c['configs']} single-layer configurations")
    for name, r in (("before (no reuse)", before), ("after (prefix reuse)", after)):
        t, k = r["timings"], r["timings"]["by_kind_s"]
        print(f"  {name:21s} sensitivity {t['sensitivity_s']:7.1f} s wall {t['sensitivity_cpu_s']:7.1f} s CPU "
              f"(SSIM images {k.get('ssim', 0):6.1f} s, SQNR replays {k.get('sqnr', 0):6.1f} s), "
              f"{r['counts']['forward_passes']} replayed passes, {r['counts'].get('prefix_served_calls', 0)} first steps served")
    tb, ta = before["timings"], after["timings"]
    ratio = lambda a, b: f"{a / b:.2f}x" if b else "n/a"  # noqa: E731
    print(f"  after / before: wall {ratio(ta['sensitivity_s'], tb['sensitivity_s'])}, CPU {ratio(ta['sensitivity_cpu_s'], tb['sensitivity_cpu_s'])}; "
          f"SSIM images {ratio(ta['by_kind_s'].get('ssim', 0), tb['by_kind_s'].get('ssim', 0))}, "
          f"SQNR replays {ratio(ta['by_kind_s'].get('sqnr', 0), tb['by_kind_s'].get('sqnr', 0))}")
    print(f"  scores and allocation identical: {same}")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
