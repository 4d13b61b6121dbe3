"""CLIP score, CLIP-IQA and JAQ end to end with tiny local stand-ins (real loading paths)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from qbench.api import MetricContext, Prompt
from qbench.catalog import METRICS
from qbench.errors import ConfigError, MissingWeightsError
from qbench.metrics import standins
from qbench.metrics.clip_score import CLIPScorer, clip_score_from_embeddings
from qbench.metrics.clipiqa import CLIPIQAScorer
from qbench.metrics.jaq import JAQ, jaq_scores

TEXTS = ["a red cube on a table", "two cats", "a blue circle", "a photo of a dog"]


@pytest.fixture(scope="module")
def clip_files():
    return standins.open_clip_model()


@pytest.fixture(scope="module")
def backbone():
    return standins.clipiqa_backbone()


@pytest.fixture(scope="module")
def options(clip_files, backbone):
    cfg, weights = clip_files
    return {"clip_model": cfg, "clip_pretrained": weights, "clipiqa_backbone": backbone}


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return [Image.fromarray((rng.random((8, 8, 3)) * 255).astype(np.uint8)).resize((48, 48), Image.BICUBIC) for _ in range(4)]


def prompts(texts):
    return [Prompt(f"p{i}", t, i) for i, t in enumerate(texts)]


def test_clip_score_metric_equals_direct_open_clip_computation(options, clip_files, images):
    import open_clip
    import torch
    from safetensors.torch import load_file

    m = METRICS.get("clip")(MetricContext(options=options))
    m.update(images[:2], prompts(TEXTS[:2]))
    m.update(images[2:], prompts(TEXTS[2:]))
    v = m.compute()

    # independent path: build the same model by hand, load the safetensors, embed, cosine
    cfg, weights = clip_files
    open_clip.add_model_config(cfg)
    name = cfg.rsplit("/", 1)[1][: -len(".json")]
    model = open_clip.create_model(name)
    model.load_state_dict(load_file(weights))
    model.eval()
    _, _, preprocess = open_clip.create_model_and_transforms(name)
    with torch.no_grad():
        e_img = model.encode_image(torch.stack([preprocess(im) for im in images]))
        e_txt = model.encode_text(open_clip.get_tokenizer(name)(TEXTS))
        cos = torch.nn.functional.cosine_similarity(e_img, e_txt).numpy()
    expected = 100 * np.maximum(cos, 0)
    np.testing.assert_allclose(m.scores, expected, rtol=1e-4, atol=1e-4)
    assert v.value == pytest.approx(expected.mean(), rel=1e-4, abs=1e-4) and v.n == 4 and v.stderr is not None
    d = v.details
    assert d["clip_model"] == name and d["clip_weights"]["file"].endswith(".safetensors")
    assert d["meaningful"] is False and "random stand-in" in d["weights"]
    m.reset()
    assert m.scores.size == 0


def test_clip_scorer_is_reusable_and_checks_lengths(options, images):
    s = CLIPScorer.from_context(MetricContext(options=options))
    a = s.score(images, TEXTS)
    np.testing.assert_array_equal(a, s.score(images, TEXTS))
    np.testing.assert_allclose(a, clip_score_from_embeddings(s.image_embeddings(images), s.text_embeddings(TEXTS)))
    assert ((a >= 0) & (a <= 100)).all()
    with pytest.raises(ConfigError):
        s.score(images, TEXTS[:2])


def test_clip_weights_missing_offline_is_one_clear_error(monkeypatch, empty_hf_cache):
    import huggingface_hub.constants as hfc

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hfc, "HF_HUB_OFFLINE", True)
    with pytest.raises(MissingWeightsError, match="clip_pretrained"):
        METRICS.get("clip")(MetricContext())  # default: OpenAI ViT-L/14, not cached here
    with pytest.raises(ConfigError, match="unknown open_clip model"):
        METRICS.get("clip")(MetricContext(options={"clip_model": "ViT-Q-99", "clip_pretrained": "openai"}))


def test_clipiqa_same_score_for_uint8_and_unit_float(options, images):
    s = CLIPIQAScorer(MetricContext(options=options))
    u8 = [np.asarray(im) for im in images]
    f01 = [a.astype(np.float32) / 255.0 for a in u8]
    chw = [np.transpose(a, (2, 0, 1)) for a in f01]
    a = s.score(images)
    np.testing.assert_allclose(a, s.score(u8), rtol=0, atol=1e-7)
    np.testing.assert_allclose(a, s.score(f01), rtol=0, atol=1e-7)
    np.testing.assert_allclose(a, s.score(chw), rtol=0, atol=1e-7)
    assert ((a > 0) & (a < 1)).all() and np.ptp(a) > 0
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        s.score([a.astype(np.float32) for a in u8])  # float in [0, 255]: refused, not silently mis-scaled


def test_clipiqa_open_clip_impl_and_missing_backbone(options, images, tmp_path, monkeypatch):
    import torch

    s = CLIPIQAScorer(MetricContext(options={**options, "clipiqa_impl": "open_clip"}))
    a = s.score(images)
    assert a.shape == (4,) and ((a > 0) & (a < 1)).all()
    np.testing.assert_allclose(a, s.score([np.asarray(im).astype(np.float32) / 255 for im in images]), atol=1e-7)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(MissingWeightsError, match="clipiqa_backbone"):
        CLIPIQAScorer(MetricContext())  # default RN50, not cached, offline


def test_jaq_metric_combines_clip_and_clipiqa_exactly(options, images):
    ctx = MetricContext(options={**options, "jaq_k": 3.0})
    m = METRICS.get("jaq")(ctx)
    m.update(images, prompts(TEXTS))
    v = m.compute()
    clip = CLIPScorer.from_context(ctx).score(images, TEXTS)
    iqa = CLIPIQAScorer(ctx).score(images)
    expected = jaq_scores(clip, iqa, k=3.0)
    np.testing.assert_allclose(m.scores, expected, rtol=1e-6)
    assert v.value == pytest.approx(expected.mean(), rel=1e-6) and v.higher_is_better
    assert v.details["k"] == 3.0 and v.details["quality"]["term"] == "clipiqa" and v.details["meaningful"] is False
    assert v.details["n_floored"] == int((clip <= 1e-4).sum())


def test_jaq_reusable_scorer_with_pluggable_terms(options, images):
    jaq = JAQ.from_options({**options, "jaq_quality": "brisque"})
    comp = jaq.components(images, TEXTS)
    from qbench.metrics.quality import brisque_scores

    np.testing.assert_allclose(comp["quality"], 1 - brisque_scores(images) / 100)
    np.testing.assert_allclose(jaq.score(images, TEXTS), comp["jaq"])
    const = JAQ.from_options(options, alignment=lambda ims, txts: np.full(len(ims), 50.0), quality=lambda ims: np.full(len(ims), 0.25), k=2)
    np.testing.assert_allclose(const.score(images, TEXTS), np.log(0.5) + 0.5)
    with pytest.raises(ConfigError, match="quality term"):
        JAQ.from_options({**options, "jaq_quality": "hps"})


def test_standin_option_runs_clip_without_paths(tmp_path, images):
    m = METRICS.get("clip")(MetricContext(options={"standin": True}, cache_dir=str(tmp_path)))
    m.update(images[:2], prompts(TEXTS[:2]))
    v = m.compute()
    assert v.details["meaningful"] is False and v.n == 2


def test_explicit_clip_options_win_over_family_defaults(options):
    from qbench.metrics.clip_models import clip_spec

    ctx = MetricContext(options=options, model_family="toy-lcm")  # no toy-CLIP lookup when both options are given
    assert clip_spec(ctx) == (options["clip_model"], options["clip_pretrained"])
    with pytest.raises(ConfigError, match="needs clip_pretrained"):
        clip_spec(MetricContext(options={"clip_model": "ViT-B-32"}))
