"""JAQ's set-level form and its second variant mean(AQ-Map) + k*mean(HPSv2.1); AQ-Map's parts."""
from __future__ import annotations

import math

import numpy as np
import prefmetric_fixtures as fx
import pytest
import torch

from qbench.api import MetricContext
from qbench.catalog import METRICS
from qbench.errors import MissingWeightsError, QBenchError
from qbench.metrics import aqmap, standins
from qbench.metrics.jaq import jaq_scores, jaq_set, jaq_set_stderr

prompts = fx.prompts
images, standin_folder = fx.images, fx.standin_folder  # fixtures of this module

TEXTS = ["a red cube on a table", "two cats", "a blue circle", "a photo of a dog"]
STOP = frozenset({"a", "an", "the", "on", "of", "with"})
POS = {"a": "DET", "red": "ADJ", "cube": "NOUN", "on": "ADP", "table": "NOUN", "two": "NUM", "cats": "NOUN",
       "blue": "ADJ", "circle": "NOUN", "photo": "NOUN", "of": "ADP", "dog": "NOUN"}
CHUNKS = {"a red cube on a table": ["a red cube", "a table"], "two cats": ["two cats"], "a blue circle": ["a blue circle"],
          "a photo of a dog": ["a photo", "a dog"]}


def fake_parse(text):
    """A spaCy-style parse (noun chunks, coarse tags) of these prompts, written by hand (spaCy is not installed here)."""
    return CHUNKS[text], POS


# -- set-level vs per-image ---------------------------------------------------------------------------
def test_one_blank_image_per_image_vs_set_level():
    """25 images of CLIP score 30 and quality 0.5; one replaced by a blank (CLIP 0, same quality)."""
    a, q = np.full(25, 30.0), np.full(25, 0.5)
    blank = a.copy()
    blank[0] = 0.0
    per_image = jaq_scores(blank, q).mean() - jaq_scores(a, q).mean()
    set_level = jaq_set(blank, q) - jaq_set(a, q)
    assert per_image == pytest.approx((math.log(1e-6) - math.log(0.3)) / 25)  # -0.504
    assert set_level == pytest.approx(math.log(28.8 / 30))  # -0.041
    assert jaq_set(a, q) == pytest.approx(jaq_scores(a, q).mean())  # equal scores: the forms agree
    assert jaq_set([0.0, 0.0], [0.0, 0.0], eps=1e-6) == pytest.approx(math.log(1e-6))
    assert jaq_set([1.0, 3.0], [0.2, 0.4], k=3, log=False) == pytest.approx(2.0 + 3 * 0.3)
    assert jaq_set_stderr([30.0], [0.5], 2, 1e-6, True) is None


def test_jaq_set_form_metric(images):
    opts = {"standin": True}
    per = METRICS.get("jaq")(MetricContext(options=opts))
    st = METRICS.get("jaq")(MetricContext(options={**opts, "jaq_form": "set"}))
    for m in (per, st):
        m.update(images, prompts(TEXTS))
    v_per, v_set = per.compute(), st.compute()
    a, q = np.concatenate(st._align), np.concatenate(st._qual)
    assert v_set.value == pytest.approx(jaq_set(a, q, 2.0, 1e-6))
    assert v_per.value == pytest.approx(jaq_scores(a, q).mean())
    assert v_set.per_image is None and v_set.stderr is not None and v_set.n == 4
    assert "set level" in v_set.details["aggregate"] and v_set.details["meaningful"] is False
    with pytest.raises(QBenchError, match="jaq_form"):
        METRICS.get("jaq")(MetricContext(options={**opts, "jaq_form": "sets"}))


# -- AQ-Map ------------------------------------------------------------------------------------------
def test_noun_parts_follow_the_reference_partition():
    assert aqmap.partition("a red cube on a table", ["a red cube", "a table"]) == ["a red cube on", "a table"]
    assert aqmap.partition("two cats", ["two cats"]) == ["two cats"]
    assert aqmap.partition("x y z w", ["x", "y", "w"]) == ["x", "y z", "w"]
    assert aqmap.noun_parts("a red cube on a table", fake_parse("a red cube on a table"), STOP) == ["cube", "table"]
    assert aqmap.noun_parts("a photo of a dog", fake_parse("a photo of a dog"), STOP) == ["photo", "dog"]
    assert aqmap.noun_parts("red , blue", ([], {"red": "ADJ"}), STOP) == [""]  # no noun: the empty part
    with pytest.raises(QBenchError, match="not found"):
        aqmap.partition("a cat", ["a cat", "a dog"])


def test_aq_formula_by_hand():
    tokens = np.array([[3.0, 0.0], [4.0, 2.0]])  # token-axis norms: 5 and 2 -> CLS feature (0.6, 0)
    parts = np.array([[1.0, 0.0], [0.0, 1.0]])
    red = np.array([0.5, 0.0])
    s = np.array([0.6 * 0.5, 0.6 * -0.5])
    np.testing.assert_allclose(aqmap.aq_from_features(tokens, parts, red), np.exp(10 * s) / (np.exp(10 * s) + 1))
    assert len(aqmap.TEMPLATES) == 85 and aqmap.TEMPLATES[0] == "a bad photo of a {}." and all("{}" in t for t in aqmap.TEMPLATES)


def test_surgery_cls_token_is_the_plain_clip_embedding():
    """CLIP Surgery keeps the original path for the CLS token: its projected CLS equals open_clip's
    encode_image; the patch tokens come from the v-v path and differ from the plain ones."""
    from qbench.metrics.clip_models import load_open_clip

    clip = load_open_clip(*standins.open_clip_model())
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        tokens = aqmap.surgery_tokens(clip.model.visual, x)
        plain = clip.model.encode_image(x)
    assert tokens.shape == (2, 1 + 16, plain.shape[-1])
    torch.testing.assert_close(tokens[:, 0], plain, rtol=1e-5, atol=1e-5)


def test_jaq_second_variant_is_mean_aqmap_plus_k_mean_hps(images):
    from qbench.metrics.hpsv2 import HPSScorer

    ctx = MetricContext(options={"standin": True, "jaq_k": 3})
    m = METRICS.get("jaq-hps")(ctx)
    m.update(images[:3], prompts(TEXTS[:3]))
    m.update(images[3:], prompts(TEXTS[3:], 3))
    v = m.compute()
    aq = aqmap.AQMapScorer(MetricContext(options={"standin": True})).score(images, TEXTS)
    hps = HPSScorer(MetricContext(options={"standin": True})).score(images, TEXTS)
    assert ((aq > 0) & (aq < 1)).all()
    assert v.value == pytest.approx(aq.mean() + 3 * (hps / 100).mean(), abs=1e-6)
    assert v.details["formula"].startswith("JAQ = mean(AQ-Map) + k * mean(HPSv2.1/100)")
    assert v.details["alignment"]["term"] == "aqmap" and v.details["quality"]["term"] == "hpsv2"
    assert v.details["alignment"]["jpeg_roundtrip"] is True and v.details["meaningful"] is False
    assert v.details["alignment"]["noun_parser"] == "standin_parse"
    # the same variant through the jaq metric's option; set form = per-image form (no log)
    m2 = METRICS.get("jaq")(MetricContext(options={"standin": True, "jaq_k": 3, "jaq_quality": "hpsv2", "jaq_form": "set"}))
    m2.update(images, prompts(TEXTS))
    assert m2.compute().value == pytest.approx(v.value, abs=1e-6)


def test_standin_parser():
    assert aqmap.standin_parse("a red cube on a table") == (["red cube", "table"], {"a": "DET", "red": "NOUN", "cube": "NOUN", "on": "DET", "table": "NOUN"})
    parts = aqmap.noun_parts("a red cube on a table", aqmap.standin_parse("a red cube on a table"), aqmap.STANDIN_STOPWORDS)
    assert parts == ["cube", "table"]


def test_aqmap_without_spacy_is_refused_in_one_line(monkeypatch):
    from qbench.metrics.jaq import JAQHPSMetric

    JAQHPSMetric.preflight(MetricContext(options={"standin": True}), [])  # the stand-in parser needs neither

    monkeypatch.setitem(aqmap._NLP, "stop", STOP)
    monkeypatch.setitem(__import__("sys").modules, "spacy", None)  # as on a machine without spaCy
    aqmap._NLP.pop("spacy", None)
    with pytest.raises(MissingWeightsError, match=r"pip install spacy && python -m spacy download en_core_web_sm") as e:
        aqmap.AQMapScorer(MetricContext(options={"standin": False, "aqmap_clip_model": standins.open_clip_model()[0],
                                                 "aqmap_clip_pretrained": standins.open_clip_model()[1]}))
    assert "\n" not in str(e.value)
    with pytest.raises(QBenchError, match="en_core_web_sm") as e:  # preflight: with every other problem of the run
        JAQHPSMetric.preflight(MetricContext(options={"hps_weights": __file__}), [])
    assert "AQ-Map open_clip weights ViT-B-16/openai" in str(e.value) and "-M aqmap_clip_pretrained=" in str(e.value)
