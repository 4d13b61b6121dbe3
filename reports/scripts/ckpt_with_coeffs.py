"""A Q-Sched checkpoint with given coefficients, for re-testing a checkpoint reported earlier whose
file was not kept (reports/scripts/toy_claims.sh).

    python reports/scripts/ckpt_with_coeffs.py FROM.json OUT.json C_EPS0 C_X0 "why"

Copies the model, scheduler, bits and base of FROM (a checkpoint of the same model) and replaces
the ramp coefficients with (C_EPS0, C_X0) snapped to the calibration lattice of FROM (the public
code's 50-point grid over [0.8, 1.2]); the calibration record is replaced by a note saying where
the coefficients come from (so no search trajectory is attributed to them).
"""
from __future__ import annotations

import json
import sys

from qbench.methods.qsched import QSchedCoefficients, make_checkpoint, save_checkpoint

from qbench.calibration import lattice


def main() -> None:
    src, out, a, b, why = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
    with open(src) as f:
        ckpt = json.load(f)
    grid = ckpt["calibration"]["grid"]
    axis = lattice(float(grid["lo"]), float(grid["hi"]), int(grid["n"]))
    point = tuple(min(axis, key=lambda v: abs(v - x)) for x in (a, b))
    keep = {k: ckpt[k] for k in ("model", "model_source", "family", "scheduler_class", "guidance", "resolution", "bits", "base", "base_describe", "mode")}
    keep["calibration"] = {"note": why, "requested": [a, b], "prompt_ids": ckpt["calibration"]["prompt_ids"], "prompts": ckpt["calibration"]["prompts"]}
    save_checkpoint(out, make_checkpoint(QSchedCoefficients("ramp", point), steps=ckpt["steps"], **keep))
    print(f"{out}: (c_eps0, c_x0) = {point}")


if __name__ == "__main__":
    main()
