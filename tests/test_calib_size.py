"""Every calibrating method's default calibration size goes through one rule
(``Method.default_calibration_n``): the method's published size, capped by the model's
``calib_size``: 2 on the random-weight tiny twins (a smoke test of the code path: MixDQ's 32-prompt
default took about an hour there on a 2-core CPU), none on the toy world's trained models or the
real ones. ``--calib-prompts`` always wins."""
from __future__ import annotations

import pytest

from qbench.config import RunConfig
from qbench.models.loader import get_spec


@pytest.mark.parametrize("method, bits, options, published", [
    ("mixdq", "W4A8", {}, 32),
    ("qsched", "W4A8", {}, 25),
    ("naive", "W8A8", {"a_static": True, "a_granularity": "tensor"}, 8),
])
@pytest.mark.parametrize("model", ["tiny-sdxl-turbo", "tiny-flux", "toy-flux", "flux-schnell"])
def test_default_calibration_size_per_model(method, bits, options, published, model):
    from qbench.catalog import METHODS

    spec = get_spec(model)
    cfg = RunConfig(model=model, method=method, bits=bits, method_options=dict(options), out_dir="/nonexistent-qbench-out")
    m = METHODS.get(method)(cfg)
    want = 2 if model.startswith("tiny-") else published
    assert m.calibration_prompts_n == want, (model, method)
    assert (spec.calib_size is None) == (not model.startswith("tiny-"))
    if method == "mixdq":  # counts --calib-prompts itself (the others: the harness takes all of it)
        assert METHODS.get(method)(cfg.replace(calib_prompts="coco2017-calib:5")).calibration_prompts_n == 5


@pytest.mark.parametrize("method, extra, published", [
    ("mixdq", [], 32),
    ("qsched", ["-M", "standin=true"], 25),
    ("naive", ["-O", "a_static=true", "-O", "a_granularity=tensor"], 8),
])
def test_every_plan_line_says_the_smoke_size(tmp_path, capsys, method, extra, published):
    """The dry run's calibration line names the smoke size and how to get the published one, for
    every calibrating method; --calib-prompts takes the note away."""
    from qbench.cli import main

    argv = ["run", "--model", "tiny-flux", "--method", method, "--bits", "W8A8", "--prompts", "coco2017:2", "--out-dir", str(tmp_path),
            "--dry-run", *extra]
    assert main(argv) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("calibrate"))
    assert "on coco2017-calib:2 (tiny-flux's smoke size" in line and f"--calib-prompts coco2017-calib:{published})" in line, line
    assert main(argv + ["--calib-prompts", "coco2017-calib:3"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("calibrate"))
    assert "on coco2017-calib:3:" in line and "smoke size" not in line, line


@pytest.mark.parametrize("flag, value, says", [
    ("--calib-prompts", "", "--calib-prompts is empty"),
    ("--calib-prompts", "  ", "--calib-prompts is empty"),
    ("--prompts", "", "--prompts is empty"),
    ("--calib-prompts", "coco2017-calib:abc", "prompt spec 'coco2017-calib:abc': N must be a positive integer, got 'abc' (e.g. coco2017-calib:8)"),
])
def test_an_empty_or_miscounted_prompt_spec_is_one_line(tmp_path, capsys, flag, value, says):
    from qbench.cli import main

    code = main(["run", "--model", "tiny-flux", "--method", "mixdq", "--bits", "W8A8", "--out-dir", str(tmp_path), "--dry-run", flag, value])
    err = capsys.readouterr().err
    assert code == 2 and says in err and "Traceback" not in err, err


def test_calibration_provenance_names_the_resolved_spec(tmp_path):
    """An artefact's provenance names the calibration prompts it was made on, also when they are the
    method's default (--calib-prompts not given): never null."""
    from types import SimpleNamespace

    from qbench.calibctx import CalibrationContext
    from qbench.prompts import load_prompts

    model = SimpleNamespace(spec=SimpleNamespace(name="tiny-flux", steps=4, guidance=0.0, resolution=64), source="random tiny twin", device="cpu")
    cfg = RunConfig(model="tiny-flux", method="mixdq", bits="W4A8", out_dir=str(tmp_path))
    ctx = CalibrationContext(model, cfg, load_prompts("coco2017-calib:2"), method_name="mixdq", calib_spec="coco2017-calib:2")
    assert ctx.provenance({})["calibration_prompts"] == "coco2017-calib:2"
    given = CalibrationContext(model, cfg.replace(calib_prompts="coco2017-calib:3"), load_prompts("coco2017-calib:3"), method_name="mixdq")
    assert given.provenance({})["calibration_prompts"] == "coco2017-calib:3"
