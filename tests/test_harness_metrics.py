"""Every metric runs inside `qbench run` on every tiny twin, offline, with stand-in networks."""
import math

import pytest

from conftest import TINY_MODELS
from qbench import harness

ALL = ["fid-fp", "clip", "clipiqa", "jaq", "psnr", "ssim", "lpips", "brisque", "piqe"]
CORE = ["fid-fp", "clip", "clipiqa", "jaq", "psnr", "ssim", "lpips"]


@pytest.mark.parametrize("name", TINY_MODELS)
def test_all_metrics_on_tiny_twin_fp_vs_itself(make_cfg, name):
    # every metric on the fastest twin; the core set on the others (BRISQUE/PIQE need no
    # model and are slow on CPU)
    wanted = ALL if name == "tiny-flux" else CORE
    cfg = make_cfg(model=name, metrics=wanted, metric_options={"standin": True})
    res = harness.run(cfg, show_progress=False)
    m = res.metrics
    assert set(wanted) == set(m)
    # the FP run is its own reference: fidelity is perfect and the Frechet distance vanishes
    assert m["psnr"]["value"] == 100.0 and m["ssim"]["value"] == pytest.approx(1.0, abs=1e-6)
    assert m["lpips"]["value"] == pytest.approx(0.0, abs=1e-6)
    assert m["fid-fp"]["value"] == 0.0  # 2 images: rank-deficient covariances; round-off is reported as 0
    for k in set(wanted) & {"clip", "clipiqa", "jaq", "brisque", "piqe"}:
        assert math.isfinite(m[k]["value"]) and m[k]["n"] == 2
    # every learned metric computed with stand-in weights says so
    for k in ("fid-fp", "clip", "clipiqa", "jaq", "lpips"):
        assert m[k]["details"]["meaningful"] is False, k
    assert res.timings["score_s"] > 0 and "generate_s" in res.timings and set(res.timings) >= {f"{p}_s" for p in ("plan", "load", "references", "apply", "measure")}
