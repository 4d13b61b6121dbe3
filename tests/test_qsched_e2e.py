"""End to end through the CLI: ``qbench calibrate`` then ``qbench run --method qsched`` on every
tiny twin, with the real JAQ metric (stand-in CLIP weights: offline, numbers meaningless), the
base quantizer (naive when registered) and a tiny grid (2 x 2 points, 1 calibration prompt, 32 px)."""
from __future__ import annotations

import json
import os

import pytest

from qbench.catalog import METHODS
from qbench.cli import main

BASE = "naive" if "naive" in METHODS else "fp"
TINY = ["tiny-lcm", "tiny-pcm", "tiny-sdxl-turbo", "tiny-flux"]
COMMON = ["--bits", "W4A8", "--resolution", "32", "--prompts", "coco2017:1", "--calib-prompts", "coco2017-calib:1",
          "-O", f"base={BASE}", "-O", "grid_n=2", "-O", "progress=false", "-M", "standin=true", "--no-progress"]


@pytest.mark.slow
@pytest.mark.parametrize("model", TINY)
def test_calibrate_then_run(model, tmp_path, capsys):
    out = str(tmp_path / "reports")
    args = ["--model", model, "--method", "qsched", "--out-dir", out, *COMMON]
    assert main(["calibrate", *args, "-O", "search=grid"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["search"] == "grid" and summary["images"] == 2 * 2 * 1 + 1 and summary["images_generated"] == 5
    assert summary["model"] == model and os.path.exists(summary["checkpoint"])
    with open(summary["checkpoint"]) as f:
        ck = json.load(f)
    assert ck["calibration"]["scorer"]["metric"] == "jaq" and ck["base"] == BASE

    # run with the same calibration inputs (the search is one): uses the stored checkpoint (no
    # calibration), evaluates with JAQ on held-out prompts
    assert main(["run", *args, "-O", "search=grid", "--metrics", "jaq", "--latency-repeats", "1", "--latency-warmup", "0", "--json"]) == 0
    cap = capsys.readouterr()
    res = json.loads(cap.out)
    assert "using stored checkpoint" in cap.err + cap.out or res["method_report"]["checkpoint_origin"] == "stored"
    assert res["method"]["coefficients"]["params"] == summary["params"]
    assert res["method_report"]["checkpoint_origin"] == "stored"
    assert res["metrics"]["jaq"]["n"] == 1

    # an explicit checkpoint for another model is refused in one line with a non-zero exit
    other = "tiny-flux" if model != "tiny-flux" else "tiny-lcm"
    code = main(["run", "--model", other, "--method", "qsched", "--out-dir", out, *COMMON, "-O", f"qsched_ckpt={summary['checkpoint']}", "--metrics", "jaq"])
    assert code != 0
    assert "calibrated for model" in capsys.readouterr().err


@pytest.mark.slow
def test_run_calibrates_first_when_no_checkpoint(tmp_path, capsys):
    out = str(tmp_path / "reports")
    args = ["--model", "tiny-flux", "--method", "qsched", "--out-dir", out, *COMMON, "-O", "search=own", "-O", "max_images=3"]
    assert main(["run", *args, "--metrics", "jaq", "--latency-repeats", "1", "--latency-warmup", "0", "--json"]) == 0
    cap = capsys.readouterr()
    res = json.loads(cap.out)
    assert res["method_report"]["checkpoint_origin"] == "calibrated"
    assert "calibrating first" in cap.out + cap.err
    path = res["method_report"]["checkpoint"]  # the file name carries the calibration's identity key
    assert os.path.basename(path).startswith(f"tiny-flux_W4A8_{BASE}_ramp_4steps_") and os.path.exists(path)
    assert res["method_report"]["checkpoint_identity"][:12] in os.path.basename(path)
