"""qbench's in-tree CLIP-IQA: the formula on an independent path, pyiqa's numbers on the same
weights (where pyiqa is installed), OpenAI's RN50 key list, input checks, and the pyiqa extra's gate."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest
from PIL import Image

from qbench.api import MetricContext, Prompt
from qbench.catalog import METRICS
from qbench.errors import ConfigError, QBenchError
from qbench.metrics import clip_models, standins
from qbench.metrics.clipiqa import LOGIT_SCALE, PROMPT_SETS, CLIPIQAScorer, clipiqa_from_logits

def _pyiqa_clip_missing() -> str | None:
    """Why pyiqa's CLIP-IQA cannot run here (None where it can)."""
    try:  # pyiqa is the optional extra qbench[pyiqa]; `make setup` installs it
        import pyiqa  # noqa: F401
    except ImportError:
        return "pyiqa (the optional extra qbench[pyiqa]) is not installed: nothing to compare with"
    try:
        from pyiqa.archs import clip_imports  # noqa: F401
    except ImportError as e:
        return f"pyiqa is installed but its CLIP cannot be imported ({e}; its `clip` needs setuptools<81)"
    return None


PYIQA_MISSING = _pyiqa_clip_missing()
HAVE_PYIQA = PYIQA_MISSING is None
needs_pyiqa = pytest.mark.skipif(not HAVE_PYIQA, reason=str(PYIQA_MISSING))

KEYS = os.path.join(os.path.dirname(__file__), "data", "openai_clip_rn50_keys.txt")


@pytest.fixture(scope="module")
def backbone():
    return standins.clipiqa_backbone()


def smooth_images(sizes, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray((rng.random((7, 9, 3)) * 255).astype(np.uint8)).resize((w, h), Image.BICUBIC) for h, w in sizes]


def test_in_tree_equals_open_clips_own_forward_at_native_32px(backbone):
    """At the stand-in's native 32 px the attention pool's positional embedding has one slot per
    token; zeroed, open_clip's own forward is CLIP-IQA's: the same scores by an independent path."""
    import open_clip
    import torch

    images = smooth_images([(32, 32)] * 5)
    got = CLIPIQAScorer(MetricContext(options={"clipiqa_backbone": backbone})).score(images)
    model = open_clip.model.build_model_from_openai_state_dict(torch.load(backbone, weights_only=True)).float().eval()
    with torch.no_grad():
        model.visual.attnpool.positional_embedding.zero_()
        x = torch.from_numpy(np.stack([np.asarray(im) for im in images])).permute(0, 3, 1, 2).float() / 255
        mean, std = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1), torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
        img = torch.nn.functional.normalize(model.encode_image((x - mean) / std), dim=-1)
        txt = torch.nn.functional.normalize(model.encode_text(open_clip.tokenize(["Good photo.", "Bad photo."])), dim=-1)
        logits = (100.0 * img @ txt.T).numpy()
    np.testing.assert_allclose(got, clipiqa_from_logits(logits), atol=1e-6)
    assert LOGIT_SCALE == 100.0 and np.ptp(got) > 1e-3  # the images are told apart


@needs_pyiqa
@pytest.mark.parametrize("prompts", sorted(PROMPT_SETS))
def test_in_tree_matches_pyiqa_on_the_same_weights_and_images(backbone, prompts):
    import open_clip
    from pyiqa.archs.clip_imports import clip

    images = smooth_images([(48, 48), (48, 48), (64, 96), (33, 40)], seed=1) + [np.full((40, 40, 3), 0.5, np.float32)]
    opts = {"clipiqa_backbone": backbone, "clipiqa_prompts": prompts}
    ours = CLIPIQAScorer(MetricContext(options=opts)).score(images)
    theirs = CLIPIQAScorer(MetricContext(options={**opts, "clipiqa_impl": "pyiqa"})).score(images)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5)
    flat = [t for pair in PROMPT_SETS[prompts] for t in pair]
    assert open_clip.tokenize(flat).equal(clip.tokenize(flat))  # the same BPE, the same 77 tokens


def _rn50_shapes() -> dict[str, tuple[int, ...]]:
    out = {}
    with open(KEYS) as f:
        for line in f:
            if line.strip() and not line.startswith("#"):
                name, shape = line.split()
                out[name] = () if shape == "-" else tuple(int(d) for d in shape.split("x"))
    return out


def test_openai_rn50_key_list_loads_strictly_into_the_network():
    """Every tensor of OpenAI's RN50 checkpoint maps by name and shape; nothing is left over."""
    import torch

    shapes = _rn50_shapes()
    state = {k: torch.zeros(s, dtype=torch.long if k == "visual.bn1.num_batches_tracked" or k.endswith("num_batches_tracked") else torch.float16)
             for k, s in shapes.items()}
    cfg = clip_models.resnet_clip_config(state)
    assert cfg == {"embed_dim": 1024, "vision_layers": (3, 4, 6, 3), "vision_width": 64, "image_size": 224, "context_length": 77,
                   "vocab_size": 49408, "text_width": 512, "text_heads": 8, "text_layers": 12}
    model, _ = clip_models.build_resnet_clip(state)
    assert set(model.state_dict()) == set(shapes) - set(clip_models.OPENAI_METADATA_KEYS)
    assert sum(p.numel() for p in model.parameters()) == 102_007_137
    assert {v.dtype for v in model.state_dict().values() if v.is_floating_point()} == {torch.float32}
    del state["visual.attnpool.c_proj.bias"]
    with pytest.raises(QBenchError, match="do not fit an OpenAI ResNet CLIP"):
        clip_models.build_resnet_clip(state)
    with pytest.raises(ConfigError, match="clipiqa_impl=pyiqa"):
        clip_models.resnet_clip_config({"visual.proj": torch.zeros(1)})  # a ViT CLIP


def test_openai_archive_hashes_come_from_the_published_urls():
    archives = clip_models.openai_archives()
    assert archives["afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762"] == "RN50"
    assert set(clip_models.openai_resnet_urls()) >= {"RN50", "RN101", "RN50x4"}


def test_input_range_size_and_prompt_checks(backbone):
    s = CLIPIQAScorer(MetricContext(options={"clipiqa_backbone": backbone}))
    u8 = np.asarray(smooth_images([(40, 56)])[0])
    a = s.score([u8])
    np.testing.assert_allclose(a, s.score([u8.astype(np.float32) / 255]), atol=1e-6)
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        s.score([u8.astype(np.float32)])  # 0..255 floats: the Q-Sched mis-scaling, refused
    with pytest.raises(ConfigError, match="at least 32x32"):
        s.score([u8[:20]])
    with pytest.raises(ConfigError, match="clipiqa_impl"):
        CLIPIQAScorer(MetricContext(options={"clipiqa_backbone": backbone, "clipiqa_impl": "magic"}))
    with pytest.raises(ConfigError, match="neither a file nor an OpenAI ResNet CLIP"):
        CLIPIQAScorer(MetricContext(options={"clipiqa_backbone": "ViT-B-32"}))
    d = s.describe()
    assert d["impl"] == "qbench" and d["meaningful"] is False and d["logit_scale"] == 100.0
    assert d["checkpoint_logit_scale"] == pytest.approx(100.0, rel=1e-5)


def test_standin_option_runs_clipiqa_without_paths(tmp_path):
    m = METRICS.get("clipiqa")(MetricContext(options={"standin": True}, cache_dir=str(tmp_path)))
    m.update(smooth_images([(32, 48)] * 2), [Prompt("p0", "a", 0), Prompt("p1", "b", 1)])
    v = m.compute()
    assert v.n == 2 and v.details["meaningful"] is False and "random stand-in" in v.details["weights"]


def _hide_pyiqa(monkeypatch):
    for name in [n for n in sys.modules if n == "pyiqa" or n.startswith("pyiqa.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "pyiqa", None)  # `import pyiqa` now fails as if not installed


def test_without_pyiqa_its_uses_are_refused_in_one_line(monkeypatch, backbone):
    from qbench.metrics.jaq import JAQ
    from qbench.metrics.quality import piqe_scores

    _hide_pyiqa(monkeypatch)
    with pytest.raises(ConfigError, match=r"qbench\[pyiqa\]") as e:
        CLIPIQAScorer(MetricContext(options={"clipiqa_backbone": backbone, "clipiqa_impl": "pyiqa"}))
    assert "\n" not in str(e.value)
    for build in (lambda: METRICS.get("piqe")(MetricContext()), lambda: piqe_scores([np.zeros((32, 32, 3), np.uint8)]),
                  lambda: JAQ.from_options({"standin": True, "jaq_quality": "piqe"})):
        with pytest.raises(ConfigError, match=r"pip install 'qbench\[pyiqa\]'"):
            build()
    # the default CLIP-IQA needs no pyiqa at all
    assert CLIPIQAScorer(MetricContext(options={"clipiqa_backbone": backbone})).score(smooth_images([(32, 32)])).shape == (1,)


def test_without_pkg_resources_pyiqa_is_refused_naming_setuptools(monkeypatch):
    """pyiqa's CLIP imports OpenAI's `clip`, which imports pkg_resources (gone in setuptools 81)."""
    from qbench.metrics.clipiqa_pyiqa import require_pyiqa

    for name in [n for n in sys.modules if n in ("clip", "pkg_resources") or n.startswith(("clip.", "pyiqa.archs.clip", "pkg_resources."))]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "pkg_resources", None)
    if not HAVE_PYIQA:
        pytest.skip(PYIQA_MISSING)
    with pytest.raises(ConfigError, match=r"setuptools<81"):
        require_pyiqa("-M clipiqa_impl=pyiqa", clip=True)
    require_pyiqa("PIQE")  # PIQE needs no CLIP: fine without pkg_resources


def test_cli_run_with_piqe_but_no_pyiqa_stops_before_generating(monkeypatch, tmp_path, capsys):
    from qbench.cli import main

    _hide_pyiqa(monkeypatch)
    code = main(["run", "--model", "tiny-lcm", "--prompts", "coco2017:2", "--out-dir", str(tmp_path / "out"), "--metrics", "piqe"])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("qbench: error:")]
    assert code != 0 and len(errors) == 1 and "Traceback" not in err, err
    assert "qbench[pyiqa]" in errors[0]
    assert not (tmp_path / "out" / "images").exists()
