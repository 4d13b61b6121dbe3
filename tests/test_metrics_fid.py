"""FID end to end with a random stand-in Inception loaded through feature_extractor_weights_path."""
from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from qbench.api import MetricContext, Prompt
from qbench.errors import ConfigError, MissingWeightsError
from qbench.metrics import fid, standins


@pytest.fixture(scope="module")
def inception_path():
    return standins.inception_weights()


def smooth_images(seed: int, n: int, size: int = 32) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray((rng.random((6, 6, 3)) * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC) for _ in range(n)]


def prompts(n: int) -> list[Prompt]:
    return [Prompt(f"p{i}", f"prompt {i}", i) for i in range(n)]


def test_fid_fp_equals_torchmetrics_end_to_end(inception_path):
    """legacy_tensorflow protocol == torchmetrics FrechetInceptionDistance(antialias=False) on the same net.

    Inception at 299 px is the slow part of the suite: keep the image count minimal.
    """
    import torch
    from torchmetrics.image.fid import FrechetInceptionDistance

    gen, ref = smooth_images(0, 2), smooth_images(1, 2)
    ctx = MetricContext(options={"inception_weights": inception_path, "fid_protocol": "legacy_tensorflow"})
    m = fid.FIDvsFP(ctx)
    m.update(gen[:1], prompts(1), ref[:1])  # two batches: running sums
    m.update(gen[1:], prompts(1), ref[1:])
    v = m.compute()

    tm = FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=inception_path, antialias=False)
    assert tm.fake_features_cov_sum.dtype == torch.float64  # torchmetrics keeps float64 sums, like ours
    as_tensor = lambda ims: torch.from_numpy(np.stack([np.asarray(i) for i in ims])).permute(0, 3, 1, 2).contiguous()
    tm.update(as_tensor(gen), real=False)
    tm.update(as_tensor(ref), real=True)
    expected = float(tm.compute())
    assert expected > 1.0  # features are informative, the comparison is not 0 == 0
    assert v.value == pytest.approx(expected, rel=1e-3)
    assert v.n == 2 and v.higher_is_better is False
    d = v.details
    assert d["protocol"] == "legacy_tensorflow" and d["meaningful"] is False and "random stand-in" in d["weights"]
    assert d["inception_weights"]["sha256"] and d["resolution"] == [32, 32]
    m.reset()
    assert m.gen.n == 0 and m.ref.n == 0


def test_fid_of_a_set_with_itself_is_exactly_zero_with_the_standin_network(inception_path):
    """2 images against themselves: rank-deficient covariances (the old code printed -2.61)."""
    images = smooth_images(5, 2)
    m = fid.FIDvsFP(MetricContext(options={"inception_weights": inception_path}))
    m.update(images, prompts(2), images)
    v = m.compute()
    assert v.value == 0.0
    t = v.details["distance_terms"]
    assert t["trace1"] > 1.0 and t["dropped_eigenvalues"] == [2047, 2047]  # the features are not all zero
    assert "round-off" in v.details["distance"] and "reported as 0.0" in v.details["distance"]


def test_fid_against_folder_is_cached_and_npz_gives_the_same_value(inception_path, tmp_path):
    folder = tmp_path / "real"
    folder.mkdir()
    for i, im in enumerate(smooth_images(2, 2, size=48)):  # larger than generated: centre-crop + resize path
        im.save(folder / f"{i:03d}.png")
    (folder / "notes.txt").write_text("not an image")
    opts = {"inception_weights": inception_path, "fid_reference": str(folder), "fid_protocol": "clean"}
    ctx = MetricContext(options=opts, prompt_set="coco2017:2", resolution=32, cache_dir=str(tmp_path / "cache"))
    m = fid.FID(ctx)
    m.update(smooth_images(3, 2), prompts(2))
    v1 = m.compute()
    assert v1.value > 0 and v1.details["reference"]["cache"].startswith("written")
    cached = v1.details["reference"]["cache"].split(": ", 1)[1]
    assert os.path.isfile(cached) and os.path.basename(cached).startswith("coco2017-2-n2-r32-clean-")
    mu1, sig1, _ = m.reference_stats()

    # a new run: statistics come from the cache (no Inception pass), keyed by (set, n, resolution, protocol, ...)
    mu2, sig2, meta2 = fid.FID(ctx).reference_stats()
    assert meta2["cache"].startswith("hit") and meta2["protocol"] == "clean" and meta2["n"] == 2
    np.testing.assert_array_equal(mu1, mu2)
    np.testing.assert_array_equal(sig1, sig2)
    # the cached file is a pytorch-fid / clean-fid style .npz (mu, sigma) usable as a reference
    mu3, sig3, meta3 = fid.FID(MetricContext(options={**opts, "fid_reference": cached})).reference_stats()
    assert meta3["kind"] == "npz" and meta3["protocol"] == "clean"
    np.testing.assert_array_equal(mu1, mu3)
    np.testing.assert_array_equal(sig1, sig3)
    assert len(os.listdir(tmp_path / "cache" / "fid_stats")) == 1
    with pytest.raises(ConfigError, match="fid_ref_n=5"):
        fid.FID(MetricContext(options={**opts, "fid_ref_n": 5}, resolution=32, cache_dir=str(tmp_path / "cache"))).reference_stats()


def test_fid_option_errors(inception_path, tmp_path):
    with pytest.raises(ConfigError, match="fid_reference"):
        fid.FID(MetricContext(options={"inception_weights": inception_path}))
    with pytest.raises(ConfigError, match="unknown FID protocol"):
        fid.FIDvsFP(MetricContext(options={"inception_weights": inception_path, "fid_protocol": "tf"}))
    with pytest.raises(MissingWeightsError, match="inception_weights"):
        fid.FIDvsFP(MetricContext(options={"inception_weights": str(tmp_path / "nope.pth")}))
    m = fid.FIDvsFP(MetricContext(options={"inception_weights": inception_path}))
    with pytest.raises(ConfigError, match="references"):
        m.update(smooth_images(0, 1), prompts(1), None)


def test_offline_without_inception_weights_fails_clearly(tmp_path, monkeypatch):
    import torch

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))  # an empty hub cache
    with pytest.raises(MissingWeightsError, match="offline.*inception_weights"):
        fid.FIDvsFP(MetricContext())
