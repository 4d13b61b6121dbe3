"""The image cache never serves a stale image: every input that changes pixels changes the key.

Each scenario runs the real harness twice on the toy world (2-4 prompts, seconds) and checks how
many images the second run generated.
"""
import pytest

from qbench import harness
from qbench.config import RunConfig


def _cfg(tmp_path, **kw):
    base = dict(model="toy-flux", method="fp", prompts="toy:2", batch_size=2, out_dir=str(tmp_path / "r"),
                latency_warmup=0, latency_repeats=1, metrics=[])
    base.update(kw)
    return RunConfig(**base)


def _run(cfg):
    return harness.run(cfg, show_progress=False)


def test_same_command_reuses_every_image(tmp_path):
    assert _run(_cfg(tmp_path)).n_generated == 2
    assert _run(_cfg(tmp_path)).n_generated == 0


def test_edited_prompt_file_regenerates_the_edited_rows(tmp_path):
    f = tmp_path / "mine.txt"
    f.write_text("a red circle on a white background\na blue square on a black background\n")
    assert _run(_cfg(tmp_path, prompts=str(f), batch_size=1)).n_generated == 2
    f.write_text("a red circle on a white background\na green triangle on a gray background\n")
    res = _run(_cfg(tmp_path, prompts=str(f), batch_size=1))
    assert res.n_generated == 1, "the unchanged row is reused, the edited row is regenerated"


def test_same_file_name_in_another_folder_is_not_reused(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "mine.txt").write_text("a red circle on a white background\n")
    (tmp_path / "b" / "mine.txt").write_text("a blue square on a black background\n")
    assert _run(_cfg(tmp_path, prompts=str(tmp_path / "a" / "mine.txt"))).n_generated == 1
    assert _run(_cfg(tmp_path, prompts=str(tmp_path / "b" / "mine.txt"))).n_generated == 1


@pytest.mark.parametrize("change", [dict(steps=2), dict(seed=7), dict(batch_size=1), dict(method="naive", bits="W8A8"),
                                    dict(method="naive", bits="W4A8", method_options={"group_size": 16})])
def test_a_changed_setting_regenerates(tmp_path, change):
    base = dict(method="naive", bits="W4A8") if "method_options" in change else {}
    assert _run(_cfg(tmp_path, **base)).n_generated == 2
    assert _run(_cfg(tmp_path, **change)).n_generated == 2


def test_a_code_change_regenerates(tmp_path, monkeypatch):
    """An edit to code on the pixel path (here the quantizer's primitives, which the naive method
    imports) regenerates; full precision's images, which do not go through it, are reused."""
    import shutil

    from qbench import identity

    naive, fp = _cfg(tmp_path, method="naive", bits="W4A8"), _cfg(tmp_path)
    assert _run(naive).n_generated == 2 and _run(fp).n_generated == 2
    real = identity._module_file
    edited = tmp_path / "primitives.py"
    shutil.copy(real("qbench.quant.primitives"), edited)
    edited.write_text(edited.read_text() + "\n# an edit\n")
    monkeypatch.setattr(identity, "_module_file", lambda n: str(edited) if n == "qbench.quant.primitives" else real(n))
    identity._closure.cache_clear()
    try:
        assert _run(naive).n_generated == 2
        assert _run(fp).n_generated == 0  # full precision does not run the quantizer: its images stand
        assert "qbench.quant.primitives" in identity.code_modules(["qbench.methods.naive"])
    finally:
        identity._closure.cache_clear()


def test_changed_weights_regenerate(tmp_path):
    import shutil

    import qbench

    src = qbench.__file__.replace("__init__.py", "zoo/weights/toy-flux")
    mine = tmp_path / "w"
    shutil.copytree(src, mine)
    assert _run(_cfg(tmp_path, model_path=str(mine))).n_generated == 2
    cfg_file = mine / "scheduler" / "scheduler_config.json"
    cfg_file.write_text(cfg_file.read_text().replace("{", '{"_note": "edited",', 1))
    assert _run(_cfg(tmp_path, model_path=str(mine))).n_generated == 2


def test_resume_regenerates_a_partial_batch_whole(tmp_path):
    """Images of a batch are only reused by a run that generates them in that same batch."""
    assert _run(_cfg(tmp_path, prompts="toy:3", batch_size=2)).n_generated == 3  # batches [0,1] [2]
    # toy:4 re-forms the second batch as [2,3]: image 2 must come from that batch, so both are generated
    assert _run(_cfg(tmp_path, prompts="toy:4", batch_size=2)).n_generated == 2
    assert _run(_cfg(tmp_path, prompts="toy:4", batch_size=2)).n_generated == 0
