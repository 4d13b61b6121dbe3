"""PSNR / SSIM / LPIPS against the full-precision images, and the offline NR scores BRISQUE / PIQE."""
from __future__ import annotations

import math

import numpy as np
import pytest
from skimage import data

from qbench.api import MetricContext, Prompt
from qbench.catalog import METRICS
from qbench.errors import ConfigError, MissingWeightsError
from qbench.metrics import standins
from qbench.metrics.fidelity import psnr_per_image, ssim_per_image
from qbench.metrics.quality import brisque_scores, piqe_scores


@pytest.fixture(scope="module")
def photo():
    return np.ascontiguousarray(data.astronaut()[::8, ::8][:64, :64])  # a real photo, 64 px


def noisy(img, sigma, seed=0):
    rng = np.random.default_rng(seed)
    return np.clip(img.astype(np.float64) + rng.normal(0, sigma, img.shape), 0, 255).astype(np.uint8)


def prompts(n):
    return [Prompt(f"p{i}", "x", i) for i in range(n)]


def test_psnr_metric_matches_numpy_and_orders_damage(photo):
    a, b = noisy(photo, 5, 1), noisy(photo, 25, 2)
    m = METRICS.get("psnr")(MetricContext())
    assert m.needs_fp_reference
    m.update([a, b], prompts(2), [photo, photo])
    v = m.compute()
    mse = [((x / 255.0 - photo / 255.0) ** 2).mean() for x in (a, b)]
    expected = [10 * math.log10(1 / e) for e in mse]
    np.testing.assert_allclose(m.scores, expected, rtol=1e-12)
    assert m.scores[0] > m.scores[1] and v.value == pytest.approx(np.mean(expected)) and v.stderr is not None
    with pytest.raises(ConfigError, match="sizes differ"):
        psnr_per_image([photo], [photo[:32]])
    with pytest.raises(ConfigError, match="references"):
        m.update([a], prompts(1), None)


def ssim_reference(x, y):
    """Independent SSIM (Wang et al. 2004, their MATLAB ``ssim.m``): separable 11-tap Gaussian
    (sigma 1.5) by scipy ``correlate1d``, keeping only the windows that fit inside the image
    ('valid'), population variances; mean over the map, then the channels. uint8 in."""
    from scipy.ndimage import correlate1d

    t = np.arange(-5, 6)
    g = np.exp(-0.5 * (t / 1.5) ** 2)
    g /= g.sum()
    valid = lambda z: correlate1d(correlate1d(z, g, axis=0)[5:-5], g, axis=1)[:, 5:-5]
    c1, c2 = 0.01**2, 0.03**2
    out = []
    for c in range(3):
        a, b = x[..., c] / 255.0, y[..., c] / 255.0
        ma, mb = valid(a), valid(b)
        va, vb, cov = valid(a * a) - ma**2, valid(b * b) - mb**2, valid(a * b) - ma * mb
        out.append((((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma**2 + mb**2 + c1) * (va + vb + c2))).mean())
    return float(np.mean(out))


def test_ssim_matches_independent_reference_and_orders_damage(photo):
    a, b = noisy(photo, 20), noisy(photo, 60)
    s = ssim_per_image([photo, a, b], [photo, photo, photo])
    assert s[0] == pytest.approx(1.0, abs=1e-9) and s[0] > s[1] > s[2]
    assert s[1] == pytest.approx(ssim_reference(a, photo), abs=1e-9)
    assert s[2] == pytest.approx(ssim_reference(b, photo), abs=1e-9)


def ssim_pairs(n=50, seed=0):
    """``n`` (image, reference) uint8 pairs: noise, blur, smooth fields; 11..97 px, square and not."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    sizes = [(32, 32), (11, 11), (32, 48), (64, 64), (17, 93), (97, 40), (12, 31)]
    pairs = []
    for i in range(n):
        h, w = sizes[i % len(sizes)]
        kind = i % 3
        if kind == 0:  # random noise against random noise
            x, y = rng.integers(0, 256, (h, w, 3)), rng.integers(0, 256, (h, w, 3))
        else:
            base = gaussian_filter(rng.random((h, w, 3)) * 255, sigma=(2, 2, 0)) if kind == 1 else rng.random((h, w, 3)) * 255
            y = base
            x = gaussian_filter(base, sigma=(rng.uniform(0.5, 2), rng.uniform(0.5, 2), 0))  # blurred copy
            x = x + rng.normal(0, rng.uniform(0, 20), x.shape)
        pairs.append((np.clip(np.rint(x), 0, 255).astype(np.uint8), np.clip(np.rint(y), 0, 255).astype(np.uint8)))
    return pairs


def test_ssim_equals_skimage_standard_settings_on_50_pairs():
    """qbench's SSIM = skimage(gaussian_weights, sigma 1.5, population covariance, data range 1),
    whatever torchmetrics is installed (it is not used), on 50 pairs incl. 32 px and non-square."""
    from skimage.metrics import structural_similarity

    pairs = ssim_pairs()
    ours = np.concatenate([ssim_per_image([x], [y]) for x, y in pairs])
    ref = np.array([structural_similarity(x / 255.0, y / 255.0, channel_axis=-1, gaussian_weights=True, sigma=1.5,
                                          use_sample_covariance=False, data_range=1.0) for x, y in pairs])
    indep = np.array([ssim_reference(x, y) for x, y in pairs])
    worst, worst_indep = float(np.abs(ours - ref).max()), float(np.abs(ours - indep).max())
    assert worst <= 1e-6, f"max |qbench - skimage| over 50 pairs = {worst:.3g}"
    assert worst_indep <= 1e-9, f"max |qbench - independent valid-window SSIM| = {worst_indep:.3g}"
    assert ours.min() < 0.2 and ours.max() > 0.8  # the pairs span the range: not a comparison of constants
    with pytest.raises(ConfigError, match="at least 11x11"):
        ssim_per_image([pairs[0][0][:10]], [pairs[0][1][:10]])


def test_ssim_metric_records_its_convention(photo):
    m = METRICS.get("ssim")(MetricContext())
    m.update([noisy(photo, 20)], prompts(1), [photo])
    d = m.compute().details
    assert "no padded border" in d["convention"] and d["implementation"] == "skimage.metrics.structural_similarity"
    assert d["settings"]["covariance"].startswith("population") and "scikit-image" in d["versions"]


def test_lpips_with_standin_backbone(photo, tmp_path, monkeypatch):
    import torch

    path = standins.lpips_backbone()
    m = METRICS.get("lpips")(MetricContext(options={"lpips_weights": path}))
    m.update([photo, noisy(photo, 40)], prompts(2), [photo, photo])
    v = m.compute()
    assert m.scores[0] == pytest.approx(0.0, abs=1e-6) and m.scores[1] > 0
    assert v.higher_is_better is False and v.details["meaningful"] is False and "random stand-in" in v.details["weights"]
    # the backbone really comes from the file: loaded weights equal the stored ones
    state = torch.load(path, weights_only=True)
    assert torch.equal(m.net.net.slice1[0].weight, state["features.0.weight"])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(MissingWeightsError, match="lpips_weights"):
        METRICS.get("lpips")(MetricContext())


def test_brisque_and_piqe_work_offline_and_rank_noise_worse(photo):
    clean_vs_noisy = [photo, noisy(photo, 40)]
    b = brisque_scores(clean_vs_noisy)
    p = piqe_scores(clean_vs_noisy)
    assert np.isfinite(b).all() and np.isfinite(p).all()
    assert b[1] > b[0] and p[1] > p[0]  # lower is better: noise scores worse
    np.testing.assert_allclose(brisque_scores([photo.astype(np.float32) / 255]), b[:1])  # range handled
    m = METRICS.get("brisque")(MetricContext())
    m.update(clean_vs_noisy, prompts(2))
    assert m.compute().value == pytest.approx(b.mean()) and m.higher_is_better is False
