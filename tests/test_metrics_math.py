"""Pure math of the metrics, checked against independent references (no learned networks)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg

from qbench.errors import ConfigError
from qbench.metrics import common
from qbench.metrics.clip_score import clip_score_from_embeddings
from qbench.metrics.clipiqa import clipiqa_from_logits
from qbench.metrics.fid import (
    FeatureStats,
    check_protocol,
    frechet_distance,
    frechet_terms,
    inception_input,
)
from qbench.metrics.fidelity import psnr_per_image
from qbench.metrics.jaq import jaq_scores
from qbench.metrics.quality import lower_better_to_quality
from qbench.metrics.stats import bootstrap_stderr, mean_and_stderr


def scipy_fid(mu1, s1, mu2, s2):
    """pytorch-fid's formula (scipy sqrtm), the independent reference."""
    covmean = scipy.linalg.sqrtm(s1.dot(s2))
    covmean = covmean.real
    diff = mu1 - mu2
    return float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def random_rotation(d, rng):
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


def test_frechet_distance_closed_form_commuting_covariances():
    # sigma1 = Q diag(a) Q^T, sigma2 = Q diag(b) Q^T commute: FID = |mu1-mu2|^2 + sum (sqrt a - sqrt b)^2
    rng = np.random.default_rng(0)
    d = 32
    q = random_rotation(d, rng)
    a, b = rng.uniform(0.1, 3.0, d), rng.uniform(0.1, 3.0, d)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    s1, s2 = (q * a) @ q.T, (q * b) @ q.T
    expected = float(((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum())
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-10)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_matches_scipy_sqrtm_on_general_covariances():
    rng = np.random.default_rng(1)
    d = 64
    x, y = rng.standard_normal((200, d)), rng.standard_normal((300, d)) @ rng.standard_normal((d, d)) * 0.3 + 1.0
    mu1, s1, mu2, s2 = x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(scipy_fid(mu1, s1, mu2, s2), rel=1e-6)


def test_fid_of_sampled_gaussians_approaches_known_answer():
    rng = np.random.default_rng(2)
    d, n = 8, 200_000
    mu1, mu2 = np.zeros(d), np.full(d, 0.5)
    a, b = np.linspace(0.5, 2.0, d), np.linspace(1.5, 0.2, d)
    known = float(((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum())
    s1, s2 = FeatureStats(d), FeatureStats(d)
    for _ in range(4):  # running sums over several batches
        s1.update(mu1 + rng.standard_normal((n // 4, d)) * np.sqrt(a))
        s2.update(mu2 + rng.standard_normal((n // 4, d)) * np.sqrt(b))
    assert frechet_distance(*s1.mean_cov(), *s2.mean_cov()) == pytest.approx(known, rel=2e-2)


def test_feature_stats_running_sums_equal_numpy_cov_and_are_float64():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((57, 16)).astype(np.float32) * 5 + 3
    st = FeatureStats(16)
    for chunk in np.array_split(x, 5):
        st.update(chunk)
    mu, cov = st.mean_cov()
    assert st.sum.dtype == np.float64 and st.outer.dtype == np.float64 and st.outer.shape == (16, 16)
    np.testing.assert_allclose(mu, x.astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(cov, np.cov(x.astype(np.float64), rowvar=False), rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError):
        st.update(np.zeros((2, 15)))


def test_fid_matches_torchmetrics_given_the_same_features():
    import torch
    from torchmetrics.image.fid import FrechetInceptionDistance

    class Identity(torch.nn.Module):
        num_features = 128

        def forward(self, x):
            return x

    rng = np.random.default_rng(4)
    fake = rng.standard_normal((300, 128))
    real = rng.standard_normal((400, 128)) * 1.3 + 0.2
    tm = FrechetInceptionDistance(feature=Identity(), normalize=True)
    tm.set_dtype(torch.float64)
    tm.update(torch.from_numpy(fake), real=False)
    tm.update(torch.from_numpy(real), real=True)
    s1, s2 = FeatureStats(128), FeatureStats(128)
    s1.update(fake)
    s2.update(real)
    ours = frechet_distance(*s1.mean_cov(), *s2.mean_cov())
    assert ours == pytest.approx(float(tm.compute()), rel=1e-3)
    assert ours == pytest.approx(scipy_fid(*s1.mean_cov(), *s2.mean_cov()), rel=1e-6)


def test_unknown_fid_protocol_is_refused():
    with pytest.raises(ConfigError, match="unknown FID protocol"):
        check_protocol("tensorflow")


def test_inception_input_protocols_differ_and_are_normalised():
    rng = np.random.default_rng(5)
    img = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    outs = {p: inception_input([img], p).numpy() for p in ("clean", "legacy_tensorflow", "legacy_pytorch")}
    for x in outs.values():
        assert x.shape == (1, 3, 299, 299) and x.min() >= -1.0 - 1e-6 and x.max() <= 1.0 + 1e-6
    assert np.abs(outs["clean"] - outs["legacy_tensorflow"]).mean() > 1e-3
    assert np.abs(outs["legacy_pytorch"] - outs["legacy_tensorflow"]).mean() > 1e-3
    # a uint8 picture and its [0,1] float twin reach the network identically
    np.testing.assert_array_equal(inception_input([img.astype(np.float32) / 255], "clean").numpy(), outs["clean"])


def test_bootstrap_stderr_is_deterministic_and_close_to_analytic():
    rng = np.random.default_rng(6)
    x = rng.standard_normal(400) * 2.0
    se = bootstrap_stderr(x)
    assert se == bootstrap_stderr(x)
    assert se == pytest.approx(x.std(ddof=1) / math.sqrt(x.size), rel=0.1)
    assert bootstrap_stderr([1.0]) is None
    assert bootstrap_stderr(np.full(10, 3.0)) == 0.0
    assert mean_and_stderr([1.0, 2.0, 3.0])[0] == 2.0


def test_clip_score_formula():
    img = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    txt = np.array([[2.0, 0.0], [1.0, 0.0], [0.0, -3.0]])
    np.testing.assert_allclose(clip_score_from_embeddings(img, txt), [100.0, 100 / math.sqrt(2), 0.0])


def test_clipiqa_from_logits_is_pairwise_softmax_mean():
    logits = np.array([[2.0, 0.0, 0.0, 1.0]])
    p1 = math.exp(2) / (math.exp(2) + 1)
    p2 = 1 / (1 + math.e)
    assert clipiqa_from_logits(logits)[0] == pytest.approx((p1 + p2) / 2)
    assert clipiqa_from_logits(np.array([[1000.0, 0.0]]))[0] == pytest.approx(1.0)


def test_jaq_formula_sign_and_floor():
    clip = np.array([30.0, 30.0, 0.0])
    q = np.array([0.5, 0.8, 0.5])
    out = jaq_scores(clip, q, k=2.0, eps=1e-6)
    assert out[0] == pytest.approx(math.log(0.3) + 1.0)
    assert out[1] > out[0]  # better quality -> higher JAQ
    assert out[2] == pytest.approx(math.log(1e-6) + 1.0)  # cos <= 0 is floored, stays finite
    assert jaq_scores([60.0], [0.5], k=0.0)[0] > jaq_scores([30.0], [0.5], k=0.0)[0]  # better alignment -> higher
    with pytest.raises(ValueError):
        jaq_scores([1.0, 2.0], [1.0], k=2)


def test_lower_better_quality_mapping_reverses_order():
    q = lower_better_to_quality([0.0, 20.0, 100.0])
    np.testing.assert_allclose(q, [1.0, 0.8, 0.0])


def test_psnr_exact_and_capped():
    a = np.zeros((4, 4, 3), np.uint8)
    b = a.copy()
    b[0, 0, 0] = 255  # mse = 1/48 in [0,1] units
    assert psnr_per_image([a], [b])[0] == pytest.approx(10 * math.log10(48))
    assert psnr_per_image([a], [a])[0] == pytest.approx(100.0)


def test_image_range_handling():
    img = np.arange(48, dtype=np.uint8).reshape(4, 4, 3) * 5
    np.testing.assert_array_equal(common.to_uint8_array(img.astype(np.float32) / 255), img)
    np.testing.assert_array_equal(common.to_uint8_array(np.transpose(img, (2, 0, 1))), img)
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        common.to_unit_float_array(img.astype(np.float32))  # float in [0, 255]: the mis-scaling bug


def test_fid_of_a_set_with_itself_is_exactly_zero_at_2048_dims():
    """Rank-deficient covariances (n=2) of random 2048-d features: the old route (eigh of
    S1h S2 S1h, only negative eigenvalues clipped) gave -2.378 here, -0.0027 at scale 1."""
    n, scale = 2, 30.0
    rng = np.random.default_rng(n)
    st = FeatureStats()
    st.update(np.abs(rng.standard_normal((n, 2048)) * scale + 0.3))  # non-negative like pool3 features
    mu, sigma = st.mean_cov()
    terms = frechet_terms(mu, sigma, mu, sigma)
    assert terms["value"] == 0.0
    assert abs(terms["raw"]) <= 1e-14 * (terms["trace1"] + terms["trace2"])  # measured round-off, 1e5 below the snap
    assert terms["dropped_eigenvalues"] == [2047, 2047] and terms["trace1"] > 1e5  # large features, rank 1


def test_fid_refuses_a_negative_distance_beyond_round_off(monkeypatch):
    from qbench.errors import QBenchError
    from qbench.metrics import frechet

    s = np.diag([1.0, 2.0, 3.0])
    monkeypatch.setattr(frechet, "_trace_sqrt", lambda e1, e2: 6.0 + 1e-6)  # exact tr sqrtm(S S) = tr S = 6
    with pytest.raises(QBenchError, match="negative"):
        frechet.frechet_distance(np.zeros(3), s, np.zeros(3), s)
    monkeypatch.setattr(frechet, "_trace_sqrt", lambda e1, e2: 6.0 + 1e-13)  # round-off sized: 0.0
    assert frechet.frechet_distance(np.zeros(3), s, np.zeros(3), s) == 0.0
    with pytest.raises(QBenchError, match="NaN"):
        frechet.frechet_distance(np.zeros(3), s * np.nan, np.zeros(3), s)
