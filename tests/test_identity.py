"""qbench.identity: one key scheme for every artefact, and what goes into it.

Per artefact kind (images, FID reference statistics, Q-Sched checkpoints, score caches, runs /
sweep cells): each declared input is perturbed (file content, option, component code, library
version) and the key must change; an undeclared one (another method's file) is perturbed and the
key must not. Keys are computed from the real functions the pipeline uses, on the toy world's
located model (nothing is generated here; the end-to-end scenarios are in test_identity_scenarios.py).
"""
import importlib.metadata
import os
import shutil

import pytest

from qbench import identity
from qbench.config import RunConfig


# -- the building blocks ---------------------------------------------------------------------------
def test_file_digest_is_the_content_not_the_size(tmp_path):
    a = tmp_path / "a.bin"
    a.write_bytes(b"x" * 100)
    d1 = identity.file_digest(str(a))
    a.write_bytes(b"y" * 100)  # same size, same name
    assert identity.file_digest(str(a)) != d1


def test_large_file_digest_is_remembered_and_invalidated_by_a_write(tmp_path, monkeypatch):
    monkeypatch.setattr(identity, "_MEMO_MIN", 10)
    monkeypatch.setenv("QBENCH_CACHE", str(tmp_path / "cache"))
    f = tmp_path / "w.bin"
    f.write_bytes(b"a" * 64)
    d1 = identity.file_digest(str(f))
    assert os.listdir(tmp_path / "cache" / "digests")
    f.write_bytes(b"b" * 64)
    assert identity.file_digest(str(f)) != d1


def test_tree_digest_reports_what_it_skips(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "x.png").write_bytes(b"1")
    (tmp_path / "a.png").write_bytes(b"1")
    (tmp_path / "b.tif").write_bytes(b"2")
    (tmp_path / "notes.txt").write_bytes(b"3")
    os.symlink(tmp_path / "a.png", tmp_path / "link.png")
    t = identity.tree_digest(str(tmp_path), suffixes=(".png", ".tif"), recursive=False)
    assert [r for r, _ in t.files] == ["a.png", "b.tif"]
    assert set(t.skipped) == {"sub/", "notes.txt", "link.png"}


def _edited_copy(tmp_path, module: str) -> str:
    src = identity._module_file(module)
    dst = tmp_path / (module.replace(".", "_") + ".py")
    shutil.copy(src, dst)
    with open(dst, "a", encoding="utf-8") as f:
        f.write("\n# an edit\n")
    return str(dst)


@pytest.fixture
def edit_module(tmp_path, monkeypatch):
    """``edit_module(name)``: from now on the code digest reads an edited copy of that module."""
    real = identity._module_file

    def edit(name: str) -> None:
        path = _edited_copy(tmp_path, name)
        monkeypatch.setattr(identity, "_module_file", lambda n, _p=path, _n=name, _r=real: _p if n == _n else _r(n))
        identity._closure.cache_clear()

    yield edit
    identity._closure.cache_clear()


@pytest.fixture
def bump_library(monkeypatch):
    """``bump_library(dist)``: that distribution now reports another version."""
    real = importlib.metadata.version

    def bump(dist: str) -> None:
        monkeypatch.setattr(importlib.metadata, "version", lambda n, _d=dist, _r=real: "999.0" if n == _d else _r(n))

    return bump


def test_code_digest_follows_imports_but_not_the_registry():
    mods = identity.code_modules(["qbench.methods.naive"])
    assert "qbench.quant.primitives" in mods  # imported (transitively): its code makes the pixels
    assert "qbench.catalog" not in mods and "qbench.cli" not in mods
    assert not any(m.startswith("qbench.methods.") and m != "qbench.methods.naive" for m in mods)


# -- images ------------------------------------------------------------------------------------------
def _ref(**kw):
    from qbench.models.loader import locate_model

    return locate_model(kw.pop("model", "toy-flux"), device="cpu", **kw)


def _method(cfg):
    from qbench.catalog import METHODS

    return METHODS.get(cfg.method)(cfg)


def _image_key(cfg, ref=None):
    from qbench.generation import image_identity

    return image_identity(ref or _ref(model_path=cfg.model_path), _method(cfg), cfg).key


def test_image_key_perturbations(tmp_path, edit_module, bump_library):
    naive = RunConfig(model="toy-flux", method="naive", bits="W4A8", out_dir=str(tmp_path))
    fp = RunConfig(model="toy-flux", out_dir=str(tmp_path))
    k_naive, k_fp = _image_key(naive), _image_key(fp)
    # an option
    assert _image_key(naive.replace(method_options={"group_size": 16})) != k_naive
    # a file an option names (its content, not its name)
    layers = tmp_path / "layers.yaml"
    layers.write_text("transformer_blocks.0.ff.net.2: 8\n")
    k_file = _image_key(naive.replace(method_options={"layers": str(layers)}))
    layers.write_text("transformer_blocks.0.ff.net.2: 4\n")
    assert _image_key(naive.replace(method_options={"layers": str(layers)})) != k_file
    # another method's file: neither key moves (scenario 5: adding a method regenerates nothing)
    edit_module("qbench.methods.mixdq")
    assert _image_key(naive) == k_naive and _image_key(fp) == k_fp
    # the method's own code: its key moves, full precision's does not
    edit_module("qbench.methods.naive")
    assert _image_key(naive) != k_naive and _image_key(fp) == k_fp
    # code every method's pixels go through
    edit_module("qbench.generation")
    assert _image_key(fp) != k_fp
    identity._closure.cache_clear()
    # a library version that changes pixels
    bump_library("diffusers")
    assert _image_key(fp.replace()) != k_fp


def test_image_key_follows_the_weights_content(tmp_path):
    import qbench

    src = os.path.join(os.path.dirname(qbench.__file__), "zoo", "weights", "toy-flux")
    mine = tmp_path / "w"
    shutil.copytree(src, mine)
    cfg = RunConfig(model="toy-flux", model_path=str(mine), out_dir=str(tmp_path))
    k = _image_key(cfg)
    f = next(p for p in sorted(mine.rglob("*.safetensors")))
    data = bytearray(f.read_bytes())
    data[-1] ^= 1  # one bit of one weight, same size
    f.write_bytes(bytes(data))
    assert _image_key(cfg) != k


# -- Q-Sched checkpoints -----------------------------------------------------------------------------
def _qsched_key(**kw):
    from qbench.methods.qsched import QSched

    cfg = RunConfig(model="toy-flux", method="qsched", bits="W4A8", out_dir=kw.pop("out_dir"), **kw)
    return QSched(cfg).calibration_identity().key


def test_qsched_checkpoint_key_perturbations(tmp_path, edit_module, bump_library):
    out = str(tmp_path)
    base = dict(out_dir=out, calib_prompts="toy-calib:2", method_options={"search": "grid", "grid_n": 3})
    k = _qsched_key(**base)
    assert _qsched_key(**base) == k
    for change in ({"calib_prompts": "toy-calib:6"},
                   {"method_options": {"search": "grid", "grid_n": 5}},
                   {"method_options": {"search": "grid", "grid_n": 3, "grid_lo": 0.9}},
                   {"method_options": {"search": "grid", "grid_n": 3, "scorer_options": {"jaq_k": 5}}},
                   {"method_options": {"search": "grid", "grid_n": 3, "base_options": {"group_size": 16}}},
                   {"metric_options": {"jaq_k": 3}},
                   {"seed": 7}, {"steps": 2}):
        assert _qsched_key(**{**base, **change}) != k, change
    # a prompt file's text, not its name
    f = tmp_path / "calib.txt"
    f.write_text("a red circle\na blue square\n")
    kf = _qsched_key(**{**base, "calib_prompts": str(f)})
    f.write_text("a red circle\na green square\n")
    assert _qsched_key(**{**base, "calib_prompts": str(f)}) != kf
    edit_module("qbench.methods.mixdq")  # another method: reused
    assert _qsched_key(**base) == k
    edit_module("qbench.methods.naive")  # the base method's code: recalibrated
    assert _qsched_key(**base) != k
    identity._closure.cache_clear()
    bump_library("torch")
    assert _qsched_key(**base) != k


def test_stored_checkpoint_path_carries_the_key(tmp_path):
    from qbench.methods.qsched import QSched

    a = QSched(RunConfig(model="toy-flux", method="qsched", bits="W4A8", out_dir=str(tmp_path), calib_prompts="toy-calib:2"))
    b = QSched(RunConfig(model="toy-flux", method="qsched", bits="W4A8", out_dir=str(tmp_path), calib_prompts="toy-calib:6"))
    assert a.stored_checkpoint_path() != b.stored_checkpoint_path()
    assert a.calibration_identity().key[:12] in a.stored_checkpoint_path()


# -- runs and sweep cells ------------------------------------------------------------------------------
def _run_key(cfg):
    from qbench.phases import run_identity
    from qbench.preflight import plan_run

    return run_identity(plan_run(cfg)).key


def test_run_key_perturbations(tmp_path, edit_module, bump_library):
    f = tmp_path / "mine.txt"
    f.write_text("a red circle on a white background\n")
    cfg = RunConfig(model="toy-flux", method="naive", bits="W4A8", prompts=str(f), metrics=["psnr"], out_dir=str(tmp_path))
    k = _run_key(cfg)
    assert _run_key(cfg.replace(out_dir=str(tmp_path / "elsewhere"))) == k  # where results go is not an input
    f.write_text("a blue square on a black background\n")  # scenario 1: the prompt file's text
    k2 = _run_key(cfg)
    assert k2 != k
    assert _run_key(cfg.replace(metrics=["ssim"])) != k2
    edit_module("qbench.methods.mixdq")
    assert _run_key(cfg) == k2
    edit_module("qbench.metrics.fidelity")  # the metric's code
    assert _run_key(cfg) != k2
    identity._closure.cache_clear()
    bump_library("transformers")
    assert _run_key(cfg) != k2


# -- score caches ----------------------------------------------------------------------------------------
def test_score_cache_key_perturbations(tmp_path, edit_module):
    from qbench.calibctx import CalibrationContext
    from qbench.models.loader import load_model

    cfg = RunConfig(model="toy-flux", method="mixdq", bits="W4A8", out_dir=str(tmp_path))
    model = load_model("toy-flux", device="cpu")
    ctx = CalibrationContext(model, cfg, [], method_name="mixdq")
    p1 = ctx.score_cache("s", {"a": 1}, batch_size=2).path
    assert ctx.score_cache("s", {"a": 1}, batch_size=2).path == p1
    assert ctx.score_cache("s", {"a": 2}, batch_size=2).path != p1
    assert ctx.score_cache("s", {"a": 1}, batch_size=1).path != p1  # batch-mates change pixels, so the scores
    assert "qbench.methods.qsched" not in identity.code_modules(["qbench.methods.mixdq"])
    edit_module("qbench.methods.qsched")  # another method's file
    assert ctx.score_cache("s", {"a": 1}, batch_size=2).path == p1
    edit_module("qbench.methods.mixdq")
    assert ctx.score_cache("s", {"a": 1}, batch_size=2).path != p1


# -- one phase sequence for run, export, calibrate and sweep -----------------------------------------
def test_phase_sequences_are_well_formed_and_checked():
    from qbench.phases import PHASES, SEQUENCES, check_sequence

    assert SEQUENCES["run"] == ("plan", "load", "references", "apply", "generate", "measure", "score", "store")
    for seq in SEQUENCES.values():
        check_sequence(seq)
    with pytest.raises(ValueError, match="needs"):
        check_sequence(("plan", "generate"))  # generate needs what apply makes
    assert set(PHASES) == {p for seq in SEQUENCES.values() for p in seq}  # every phase is in a sequence


def test_run_export_calibrate_and_sweep_go_through_the_phases():
    """The entry points call qbench.phases (by AST): none writes the sequence out again."""
    import ast
    import inspect

    from qbench import export, harness, sweep
    from qbench.methods import qsched_search

    def calls(fn) -> set[str]:
        tree = ast.parse(inspect.getsource(fn).lstrip())  # a function's own source
        return {n.func.id if isinstance(n.func, ast.Name) else getattr(n.func, "attr", "") for n in ast.walk(tree) if isinstance(n, ast.Call)}

    assert "run_phases" in calls(harness.run)
    assert "run_phases" in calls(export.export)
    assert "calibrate" in calls(qsched_search.run_calibration)  # qbench.phases.calibrate
    assert "run" in calls(sweep.run_sweep) and "run_phases" not in calls(sweep.run_sweep)  # every cell through harness.run
    for fn in (export.export, qsched_search.run_calibration, sweep.run_sweep):
        assert not {"prepare", "convert", "load_model", "generate_cached"} & calls(fn), fn.__name__


# -- MixDQ allocations ---------------------------------------------------------------------------------
def _mixdq_key(tmp_path, **kw):
    from qbench.methods.mixdq import MixDQ
    from qbench.methods.mixdq_alloc import allocation_identity

    cfg = RunConfig(model="toy-flux", method="mixdq", bits="W4A8", out_dir=str(tmp_path), **kw)
    return allocation_identity(MixDQ(cfg)).key


def test_mixdq_allocation_key_perturbations(tmp_path, edit_module, bump_library):
    k = _mixdq_key(tmp_path)
    assert _mixdq_key(tmp_path) == k
    assert _mixdq_key(tmp_path, calib_prompts="toy-calib:5") != k
    assert _mixdq_key(tmp_path, method_options={"k_sweep": [1.0]}) != k
    assert _mixdq_key(tmp_path, seed=7) != k
    edit_module("qbench.methods.qsched")  # another method: reused
    assert _mixdq_key(tmp_path) == k
    edit_module("qbench.methods.mixdq_calib")  # its own calibration code
    assert _mixdq_key(tmp_path) != k
    identity._closure.cache_clear()
    bump_library("scikit-image")  # SSIM of the content layers
    assert _mixdq_key(tmp_path) != k


# -- FID reference statistics ------------------------------------------------------------------------------
class _Pixels:
    """A stand-in extractor on the real ``folder_stats`` path (features from pixels)."""

    protocol = "clean"
    batch_size = 4

    def __call__(self, images):
        import numpy as np

        return np.stack([np.resize(np.asarray(im, dtype=np.float64).ravel() / 255.0, 2048) for im in images])


def test_fid_reference_statistics_key_perturbations(tmp_path, edit_module, bump_library):
    from PIL import Image

    from qbench.metrics.fid import folder_stats

    ref = tmp_path / "ref"
    ref.mkdir()
    for i in range(3):
        Image.new("RGB", (8, 8), (40 * i, 90, 200 - 30 * i)).save(ref / f"{i}.png")
    cache = str(tmp_path / "cache")

    def status(**kw):
        args = dict(resolution=8, n=None, prompt_set="toy:3", weights_id="w")
        args.update(kw)
        return folder_stats(str(ref), _Pixels(), args["resolution"], args["n"], cache, args["prompt_set"], args["weights_id"])[2]["cache"].split(":")[0]

    assert status() == "written" and status() == "hit"
    assert status(weights_id="other-inception") == "written"  # an input: the network's weights
    assert status(n=2) == "written"  # an option
    edit_module("qbench.methods.naive")  # not the metric's code: reused
    assert status() == "hit"
    edit_module("qbench.metrics.fid")  # the metric's code
    assert status() == "written"
    identity._closure.cache_clear()
    bump_library("pillow")  # decodes and resizes the images
    assert status() == "written"
