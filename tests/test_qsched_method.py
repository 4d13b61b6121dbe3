"""QSched as a Method on the tiny twins: calibration, stored checkpoints, reuse, errors.

The objective here is a cheap deterministic image statistic injected as ``scorer`` (the tiny
twins have random weights, so JAQ would mean nothing); test_qsched_e2e.py runs the real JAQ
through the harness and the CLI.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from qbench.methods import qsched as qs

from qbench.catalog import METHODS
from qbench.errors import ConfigError, QBenchError

BASE = "naive" if "naive" in METHODS else "fp"


def brightness_scorer(images, prompts):
    """Higher when the mean pixel value is closer to 100/255 (depends on the coefficients)."""
    return [-abs(float(np.asarray(im, dtype=np.float64).mean()) - 100.0) for im in images]


def counting_scorer():
    """(calls, scorer): ``brightness_scorer`` that counts the images it scores in ``calls["n"]``."""
    calls = {"n": 0}

    def counting(images, prompts):
        calls["n"] += len(images)
        return brightness_scorer(images, prompts)

    return calls, counting


def _cfg(make_cfg, model, **opts):
    base = {"base": BASE, "grid_n": 3, "progress": False, "calib_batch_size": 2}
    base.update(opts)
    return make_cfg(model=model, method="qsched", bits="W4A8", resolution=32, prompts="coco2017:2", method_options=base)


@pytest.fixture(scope="module")
def flux():
    from qbench.models.loader import load_model

    return load_model("tiny-flux", device="cpu")


def _run_method(cfg, model, prompts):
    m = qs.QSched(cfg, scorer=brightness_scorer)
    m.prepare(model)
    m.calibrate(model, prompts)
    m.convert(model)
    return m


def test_calibrate_store_reuse_and_errors(make_cfg, flux):
    from qbench.prompts import load_prompts

    prompts = load_prompts("coco2017-calib:2")
    calls, counting = counting_scorer()

    base_sched = qs.unwrap_scheduler(flux.pipe.scheduler)
    cfg = _cfg(make_cfg, "tiny-flux", search="grid")
    m = qs.QSched(cfg, scorer=counting)
    m.prepare(flux)
    m.calibrate(flux, prompts)
    m.convert(flux)
    ck = m.ckpt
    cal = ck["calibration"]
    assert m.ckpt_origin == "calibrated" and os.path.exists(m.stored_checkpoint_path())
    # lattice {0.8, 1.0, 1.2}^2 x 2 prompts; the identity baseline (1.0, 1.0) is one of its points
    assert cal["images"] == 3 * 3 * 2 and calls["n"] == cal["images_generated"] == cal["images"]
    assert cal["jaq_after"] >= cal["jaq_before"] and cal["prompt_ids"] == [p.id for p in prompts]
    assert ck["model"] == "tiny-flux" and ck["bits"] == "W4A8" and ck["base"] == BASE and ck["steps"] == 4
    assert ck["scheduler_class"] == "FlowMatchEulerDiscreteScheduler"
    assert isinstance(flux.pipe.scheduler, qs.QSchedSchedulerMixin)
    assert flux.pipe.scheduler.qsched_coefficients == qs.checkpoint_coefficients(ck)
    d = m.describe()
    assert d["coefficients"]["sha"] == qs.checkpoint_coefficients(ck).sha and d["base"]["method"] == BASE
    assert m.report()["calibration"]["jaq_after"] == cal["jaq_after"]

    # a second run finds the stored checkpoint: no image generated, same coefficients
    flux.pipe.scheduler = base_sched
    calls["n"] = 0
    m2 = qs.QSched(_cfg(make_cfg, "tiny-flux", search="grid"), scorer=counting)
    assert m2.describe()["coefficients"]["sha"] == d["coefficients"]["sha"]  # known before calibrating
    m2.prepare(flux)
    m2.calibrate(flux, prompts)
    m2.convert(flux)
    assert calls["n"] == 0 and m2.ckpt_origin == "stored" and m2.ckpt == ck

    # the own search with a budget, resumed from the same cache: nothing recomputed
    flux.pipe.scheduler = base_sched
    m3 = qs.QSched(_cfg(make_cfg, "tiny-flux", search="own", recalibrate=True, max_images=12), scorer=counting)
    m3.prepare(flux)
    m3.calibrate(flux, prompts)
    assert calls["n"] == 0  # every point it needed was on the grid already (same cache file)
    assert m3.ckpt["calibration"]["images"] <= 12 and m3.ckpt["calibration"]["search"] == "own"
    assert os.path.exists(m3.stored_checkpoint_path()[: -len(".json")] + ".own.json")

    # an explicit checkpoint for another model or number of steps is refused in one line
    other = dict(ck, model="tiny-lcm")
    bad_path = os.path.join(cfg.out_dir, "other.json")
    with open(bad_path, "w") as f:
        json.dump(other, f)
    flux.pipe.scheduler = base_sched
    m4 = qs.QSched(_cfg(make_cfg, "tiny-flux", qsched_ckpt=bad_path), scorer=counting)
    m4.prepare(flux)
    with pytest.raises(QBenchError, match="calibrated for model 'tiny-lcm'"):
        m4.calibrate(flux, prompts)
    m5 = qs.QSched(_cfg(make_cfg, "tiny-flux", qsched_ckpt=m.ckpt_path), scorer=counting)
    m5.cfg = m5.cfg.replace(steps=2)
    m5.prepare(flux)
    with pytest.raises(QBenchError, match="4 steps"):
        m5.calibrate(flux, prompts)
    # calibration prompts that overlap the evaluation prompts are refused (by the harness's
    # preflight, the one check every calibrating method goes through)
    from qbench.preflight import calibration_prompts

    flux.pipe.scheduler = base_sched
    m6 = qs.QSched(_cfg(make_cfg, "tiny-flux", recalibrate=True), scorer=counting)
    with pytest.raises(QBenchError, match="also evaluation prompts"):
        calibration_prompts(m6.cfg.replace(calib_prompts="coco2017:3"), m6)
    # a random-weight tiny twin calibrates on its smoke size (2) by default, and says so
    assert [p.id for p in calibration_prompts(m6.cfg, m6)] == [p.id for p in load_prompts("coco2017-calib:2")]
    assert m6.calib_spec == "coco2017-calib:2" and "smoke size" in m6.calib_note and "--calib-prompts coco2017-calib:25" in m6.calib_note
    assert [p.id for p in calibration_prompts(m6.cfg.replace(calib_prompts="coco2017-calib:25"), m6)] == [p.id for p in load_prompts("coco2017-calib:25")]
    assert m6.calib_note is None


def test_killed_calibration_resumes_without_recomputing(make_cfg, tiny_model, tmp_path):
    from qbench.prompts import load_prompts

    lm = tiny_model("tiny-flux")  # shared fixture: base "fp" leaves its weights alone
    base_sched = qs.unwrap_scheduler(lm.pipe.scheduler)
    prompts = load_prompts("coco2017-calib:1")
    seen: list = []

    def dying(images, ps):
        if len(seen) == 3:
            raise KeyboardInterrupt
        seen.append(lm.pipe.scheduler.qsched_coefficients.params)
        return brightness_scorer(images, ps)

    cfg = _cfg(make_cfg, "tiny-flux", base="fp", search="grid", grid_n=2)
    try:
        m = qs.QSched(cfg, scorer=dying)
        m.prepare(lm)
        with pytest.raises(KeyboardInterrupt):
            m.calibrate(lm, prompts)
        lm.pipe.scheduler = base_sched
        m2 = qs.QSched(cfg, scorer=dying)
        seen_before = list(seen)
        seen.clear()
        seen.append(None)  # let two more calls through before the next "kill"
        m2.prepare(lm)
        m2.calibrate(lm, prompts)
        assert len(seen) - 1 == 2  # identity + 4 grid points = 5 images; 3 were cached
        assert not set(seen[1:]) & set(seen_before)
        assert m2.ckpt["calibration"]["images_generated"] == 2 and m2.ckpt["calibration"]["images"] == 5
    finally:
        lm.pipe.scheduler = base_sched


def test_bad_options(make_cfg):
    with pytest.raises(ConfigError, match="option search must be one of grid, own"):
        qs.QSched(_cfg(make_cfg, "tiny-flux", search="bayes"))
    with pytest.raises(ConfigError, match="unknown method 'qsched' option 'serch'; did you mean 'search'"):
        qs.QSched(_cfg(make_cfg, "tiny-flux", serch="grid"))
    with pytest.raises(ConfigError, match="parameterisation"):
        qs.QSched(_cfg(make_cfg, "tiny-flux", parameterisation="cubic"))
    with pytest.raises(ConfigError, match="points"):  # 50^4 start_end grid: infeasible, refused up front
        qs.QSched(_cfg(make_cfg, "tiny-flux", search="grid", parameterisation="start_end", grid_n=50))
    with pytest.raises(ConfigError, match="grid_n must be an integer"):
        qs.QSched(_cfg(make_cfg, "tiny-flux", grid_n="many"))
    with pytest.raises(ConfigError, match="grid range"):
        qs.QSched(_cfg(make_cfg, "tiny-flux", grid_lo=1.2, grid_hi=0.8))
    # no --bits: the paper's W4A8 (qbench run --method qsched --model flux-schnell, as users write it)
    assert qs.QSched(make_cfg(model="tiny-flux", method="qsched", method_options={"base": BASE})).describe()["bits"] == "W4A8"
    with pytest.raises(QBenchError, match="not a Q-Sched checkpoint"):
        bad = os.path.join(make_cfg().out_dir, "x.json")
        os.makedirs(os.path.dirname(bad), exist_ok=True)
        with open(bad, "w") as f:
            f.write("[]")
        qs.QSched(_cfg(make_cfg, "tiny-flux", qsched_ckpt=bad)).describe()


def test_saved_pipeline_reloads_in_plain_diffusers(tiny_model, tmp_path):
    """apply_qsched -> pipe.save_pretrained -> DiffusionPipeline.from_pretrained keeps the coefficients."""
    import diffusers
    import torch

    flux = tiny_model("tiny-flux")  # shared, unquantized: only its scheduler is swapped, then restored

    c = qs.QSchedCoefficients("ramp", (0.9, 1.1))
    base_sched = qs.unwrap_scheduler(flux.pipe.scheduler)
    try:
        flux.pipe.scheduler = base_sched
        qs.apply_qsched(flux.pipe, c)
        flux.pipe.save_pretrained(str(tmp_path / "pipe"))
        again = diffusers.DiffusionPipeline.from_pretrained(str(tmp_path / "pipe"), local_files_only=True)
        assert isinstance(again.scheduler, qs.QSchedSchedulerMixin) and again.scheduler.qsched_coefficients == c
        kw = {"prompt": ["a red cube"], "num_inference_steps": 4, "guidance_scale": 0.0, "height": 32, "width": 32, "output_type": "np", "max_sequence_length": 32}
        a = flux.pipe(generator=torch.Generator().manual_seed(0), **kw).images
        b = again(generator=torch.Generator().manual_seed(0), **kw).images
        assert np.array_equal(a, b)
    finally:
        flux.pipe.scheduler = base_sched


LOAD_IN_FRESH_PROCESS = """
import json, sys
import diffusers
import qbench.methods.qsched_scheduler  # enough for a pipeline saved now
new = diffusers.DiffusionPipeline.from_pretrained(sys.argv[1], local_files_only=True)
assert "qbench.methods.qsched" not in sys.modules
import qbench.methods.qsched  # what loading a pipeline saved before the split needs
old = diffusers.DiffusionPipeline.from_pretrained(sys.argv[2], local_files_only=True)
print(json.dumps([[type(p.scheduler).__name__, list(p.scheduler.qsched_coefficients.params)] for p in (new, old)]))
"""


def test_pipelines_saved_before_and_after_the_split_load_in_a_fresh_process(tiny_model, tmp_path):
    """A pipeline saved now names ``qbench.methods.qsched_scheduler`` in ``model_index.json``; one
    saved by the one-file ``qsched.py`` named ``["qbench.methods.qsched", "QSched<Base>"]`` (so a
    pre-split save was written, checked by hand, and is reproduced here by editing that entry).
    Both load in a fresh interpreter (diffusers imports nothing itself: the module must be
    imported first, as the README says)."""
    import shutil
    import subprocess
    import sys

    flux = tiny_model("tiny-flux")
    c = qs.QSchedCoefficients("ramp", (0.9, 1.1))
    base_sched = qs.unwrap_scheduler(flux.pipe.scheduler)
    try:
        qs.apply_qsched(flux.pipe, c)
        flux.pipe.save_pretrained(str(tmp_path / "new"))
    finally:
        flux.pipe.scheduler = base_sched
    index = json.loads((tmp_path / "new" / "model_index.json").read_text())
    assert index["scheduler"] == ["qbench.methods.qsched_scheduler", "QSchedFlowMatchEulerDiscreteScheduler"]
    shutil.copytree(tmp_path / "new", tmp_path / "old")
    index["scheduler"] = ["qbench.methods.qsched", "QSchedFlowMatchEulerDiscreteScheduler"]
    (tmp_path / "old" / "model_index.json").write_text(json.dumps(index))
    out = subprocess.run([sys.executable, "-c", LOAD_IN_FRESH_PROCESS, str(tmp_path / "new"), str(tmp_path / "old")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [["QSchedFlowMatchEulerDiscreteScheduler", [0.9, 1.1]]] * 2


def test_default_own_budget_keeps_the_whole_calibration_20x_below_the_grid(make_cfg, flux):
    """Default budget: grid images / 20, minus the identity baseline's images, so the images the
    checkpoint records (search + baseline) are at most the grid's / 20."""
    from qbench.prompts import load_prompts

    prompts = load_prompts("coco2017-calib:2")
    calls, counting = counting_scorer()

    base_sched = qs.unwrap_scheduler(flux.pipe.scheduler)
    cfg = _cfg(make_cfg, "tiny-flux", search="own", recalibrate=True, grid_n=10)  # grid: 100 points x 2 prompts
    m = qs.QSched(cfg, scorer=counting)
    m.prepare(flux)
    m.calibrate(flux, prompts)
    flux.pipe.scheduler = base_sched
    cal = m.ckpt["calibration"]
    assert cal["grid"]["images"] == 200 and cal["search_options"]["max_images"] == 200 // 20 - 2
    assert cal["images"] * 20 <= cal["grid"]["images"] and calls["n"] == cal["images_generated"] <= cal["images"]


def test_checkpoints_are_kept_apart_per_base_options_and_base_state(make_cfg, tmp_path):
    """Q-Sched over a base with other options (e.g. another MixDQ allocation) gets its own
    checkpoint file instead of overwriting the first; a stored checkpoint calibrated over another
    state of the base is not offered to the plan (the run will recalibrate, and --dry-run says so)."""
    plain = qs.QSched(make_cfg(model="toy-flux", method="qsched", bits="W4A8", out_dir=str(tmp_path)))
    gs64 = qs.QSched(make_cfg(model="toy-flux", method="qsched", bits="W4A8", out_dir=str(tmp_path),
                              method_options={"base_options": {"group_size": 64}}))
    other = qs.QSched(make_cfg(model="toy-flux", method="qsched", bits="W4A8", out_dir=str(tmp_path),
                               method_options={"base_options": {"group_size": 128}}))
    paths = {m.stored_checkpoint_path() for m in (plain, gs64, other)}
    assert len(paths) == 3
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ckpt = json.load(open(os.path.join(repo, "reports", "baselines", "qsched", "toy-flux_W4A8.json")))
    os.makedirs(os.path.dirname(plain.stored_checkpoint_path()), exist_ok=True)
    ckpt["identity"] = plain.calibration_identity().record()  # what a calibration under plain's inputs records
    with open(plain.stored_checkpoint_path(), "w") as f:
        json.dump(ckpt, f)
    assert plain._peek_checkpoint() is not None and plain.calibration_cost(25) is None  # same inputs: reused
    ckpt["identity"] = gs64.calibration_identity().record()  # calibrated over another base state, copied here
    with open(plain.stored_checkpoint_path(), "w") as f:
        json.dump(ckpt, f)
    assert plain._peek_checkpoint() is None and plain.calibration_cost(25)["images"] > 0
