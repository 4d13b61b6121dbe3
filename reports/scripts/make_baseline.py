"""Write reports/baselines/toy.json: the quality numbers tests/test_regression_toy.py and
`qbench regress` guard, the measured noise and the tolerances derived from it.

    python reports/scripts/make_baseline.py            # re-measure every cell; keep the noise and tolerances
    python reports/scripts/make_baseline.py --add      # measure only cells missing from the baseline (a new method)
    python reports/scripts/make_baseline.py --noise    # also re-measure the noise and re-derive the tolerances

Every cell (qbench.regress.CELLS x both toy models) runs through qbench.harness.run, the path
of `qbench run`, in a fresh results folder. `--noise` runs all cells again in subprocesses under
each of VARIANTS: the same settings again (run-to-run) and settings that change the floating-point
code path the way another machine would (machine-to-machine): 1 thread instead of 2 (other
reduction splits in MKL/oneDNN GEMMs and convolutions), ATen's AVX2 kernels instead of AVX-512,
MKL and oneDNN restricted to AVX2 (another BLAS path). Per metric, the noise is the largest
|value - baseline| over cells and variants, and

    tolerance = max(SAFETY x noise, FLOOR[metric])

where FLOOR is the least a tolerance may be, for a metric whose measured noise is zero or tiny
here (toy-acc never moved) but may move on a machine these variants do not emulate: toy-acc two of
the 32 prompts flipping; JAQ 0.002 (a third of its prompt-to-prompt standard error on 32 prompts,
0.006); fd-toyclip 2%; PSNR 0.2 dB; SSIM 2e-4. For scale, a deliberately broken quantizer (floor
instead of round-to-nearest) moved toy-flux naive W8A8 by -5.0 dB PSNR, -3.6e-4 SSIM and +1.6%
fd-toyclip, and naive W4A8 by -14 dB PSNR, -0.056 JAQ and -0.094 toy-acc. fd-toyclip is relative
(the nunchaku pattern `value < expected * (1 + t)`), the others absolute.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from qbench import regress

SAFETY = 3.0
N = int(regress.PROMPTS.split(":")[1])
FLOOR = {"toy-acc": ("abs", 2 / N), "jaq": ("abs", 0.002), "fd-toyclip": ("rel", 0.02), "psnr": ("abs", 0.2), "ssim": ("abs", 2e-4)}
VARIANTS = {
    "same settings again (run-to-run)": {},
    "1 thread (OMP_NUM_THREADS=1)": {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
    "ATen AVX2 kernels (ATEN_CPU_CAPABILITY=avx2)": {"ATEN_CPU_CAPABILITY": "avx2"},
    "MKL + oneDNN on AVX2 (MKL_ENABLE_INSTRUCTIONS=AVX2, ONEDNN_MAX_CPU_ISA=AVX2)": {"MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
}


def machine() -> dict:
    import torch

    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "python": platform.python_version()}


def variant(env: dict) -> dict:
    with tempfile.TemporaryDirectory(prefix="qbench-noise-") as tmp:
        out = os.path.join(tmp, "cur.json")
        code = ("import json, sys; from qbench.cli import quiet_libraries; quiet_libraries(); from qbench import regress; "
                "json.dump(regress.measure(regress.cells(), sys.argv[2], say=lambda m: None), open(sys.argv[1], 'w'))")
        subprocess.run([sys.executable, "-c", code, out, os.path.join(tmp, "r")], env=dict(os.environ, **env), check=False)
        if not os.path.exists(out):
            raise SystemExit(f"variant {env} produced no numbers")
        with open(out) as f:
            return json.load(f)


def noise_and_tolerance(base: dict, variants: dict) -> tuple[dict, dict]:
    per_metric: dict = {}
    for vname, cur in variants.items():
        for cid, cell in base.items():
            for m, v in cell.items():
                if cid.split("/")[1].startswith("fp") and m in regress.REFERENCE_METRICS:
                    continue
                d = abs(cur[cid][m] - v)
                rel = d / abs(v) if v else 0.0
                slot = per_metric.setdefault(m, {"max_abs": 0.0, "max_rel": 0.0, "where": None, "by_variant": {}})
                bv = slot["by_variant"].setdefault(vname, {"max_abs": 0.0, "max_rel": 0.0, "cells_changed": 0})
                bv["max_abs"], bv["max_rel"] = max(bv["max_abs"], d), max(bv["max_rel"], rel)
                bv["cells_changed"] += d > 0
                if d > slot["max_abs"]:
                    slot.update(max_abs=d, where=f"{cid} under {vname}")
                slot["max_rel"] = max(slot["max_rel"], rel)
    tol = {}
    for m, (kind, floor) in FLOOR.items():
        n = per_metric.get(m, {"max_abs": 0.0, "max_rel": 0.0})
        measured = n["max_rel"] if kind == "rel" else n["max_abs"]
        value = max(SAFETY * measured, floor)
        tol[m] = {"kind": kind, "value": float(f"{value:.3g}"),
                  "rule": f"max({SAFETY:g} x measured noise {measured:.3g}{' (relative)' if kind == 'rel' else ''}, floor {floor:.3g})"}
    return per_metric, tol


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--add", action="store_true", help="measure only the cells missing from the baseline")
    ap.add_argument("--noise", action="store_true", help="re-measure the noise under VARIANTS and re-derive the tolerances")
    a = ap.parse_args()
    from qbench.cli import quiet_libraries

    quiet_libraries()
    old = regress.load_baseline() if os.path.exists(regress.BASELINE) else {}
    old.setdefault("cells", {})  # (a baseline of the earlier format has none)
    todo = [c for c in regress.cells() if not (a.add and c["id"] in old["cells"])]
    print(f"measuring {len(todo)} cells")
    cur = regress.measure(todo)
    cells = {k: v for k, v in old["cells"].items() if a.add}
    for c in todo:
        cells[c["id"]] = {"model": c["model"], "method": c["method"], "bits": c["bits"], "options": {k: str(v).replace(regress.BASELINES_DIR + "/", "reports/baselines/")
                          for k, v in c["options"].items()}, "metrics": {k: round(v, 6) for k, v in cur[c["id"]].items()}}
    data = {
        "about": "fp / naive / qsched cells of both toy models through qbench.harness.run; written by reports/scripts/make_baseline.py",
        "prompts": regress.PROMPTS, "batch_size": regress.BATCH, "seed": 42, "metrics": list(regress.METRICS),
        "machine": machine(), "cells": cells,
        "noise": old.get("noise"), "tolerance": old.get("tolerance"),
    }
    if a.noise:
        raw = {k: v for k, v in cur.items()}
        measured = {}
        for name, env in VARIANTS.items():
            print(f"variant: {name}")
            measured[name] = variant(env)
        per_metric, tol = noise_and_tolerance(raw, measured)
        data["noise"] = {"how": "largest |value - baseline| over every cell, each variant a fresh process and results folder",
                         "variants": {k: v for k, v in VARIANTS.items()}, "per_metric": per_metric, "raw": measured}
        data["tolerance"] = tol
    if not data["tolerance"]:
        raise SystemExit("no tolerances yet: run with --noise once")
    with open(regress.BASELINE, "w") as f:
        json.dump(data, f, indent=1, sort_keys=False)
        f.write("\n")
    print(json.dumps({"tolerance": data["tolerance"]}, indent=1))


if __name__ == "__main__":
    main()
