"""CalibrationContext outside the harness (``standalone``): full-precision images made up front,
its own progress display, artefact paths, and a score cache that refuses another context."""
from __future__ import annotations

import numpy as np
import pytest

from qbench.calibctx import CalibrationContext, ScoreCache
from qbench.errors import QBenchError


def test_standalone_fp_images_are_the_runs_images_in_its_batches(tiny_model, make_cfg):
    from qbench.prompts import load_prompts

    lm = tiny_model("tiny-flux")
    cfg = make_cfg(model="tiny-flux", resolution=32, batch_size=2)
    prompts = load_prompts("coco2017-calib:3")
    without = CalibrationContext.standalone(lm, cfg, prompts, "m")
    with pytest.raises(QBenchError, match="fp_calibration_images"):
        without.fp_images()
    ctx = CalibrationContext.standalone(lm, cfg, prompts, "m", fp_images=True)
    assert ctx.images_generated == 3
    fp = ctx.fp_images()
    # batches of cfg.batch_size, seed = run seed + prompt index: the same pixels as generate()
    again = without.generate(prompts[:2]) + without.generate(prompts[2:])
    assert len(fp) == 3 and all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(fp, again))
    assert np.array_equal(np.asarray(ctx.fp_images([prompts[2]])[0]), np.asarray(fp[2]))
    assert ctx.artefacts.path("x.json") == f"{cfg.out_dir}/m/x.json"


def test_standalone_progress_runs_inside_with(tiny_model, make_cfg, capsys):
    lm = tiny_model("tiny-flux")
    ctx = CalibrationContext.standalone(lm, make_cfg(model="tiny-flux"), [], "m", progress=True)
    with ctx, ctx:  # re-entrant: a base method may enter its wrapper's context again
        advance = ctx.progress("search", 4)
        advance(4)
        ctx.say("a message")
    err = capsys.readouterr().err
    assert "search: 4/4 (100%)" in err and "a message" in err


def test_score_cache_named_by_context_and_refuses_another(tiny_model, make_cfg):
    lm = tiny_model("tiny-flux")
    ctx = CalibrationContext.standalone(lm, make_cfg(model="tiny-flux"), [], "m")
    a = ctx.score_cache("c", {"bits": "W4A8"}, batch_size=2)
    a.put([("k", "p0", 1.5)])
    assert ScoreCache(a.path, a.context).get("k", "p0") == 1.5  # resumed from the file
    b = ctx.score_cache("c", {"bits": "W8A8"}, batch_size=2)
    assert b.path != a.path and len(b) == 0
    with pytest.raises(QBenchError, match="another configuration"):
        ScoreCache(a.path, b.context)
