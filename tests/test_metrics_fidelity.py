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
    """Independent SSIM (Wang et al. 2004): scipy Gaussian filters (sigma 1.5, radius 5, mirror
    borders = torch 'reflect'), per channel, mean over the full map and the channels."""
    from scipy.ndimage import gaussian_filter

    c1, c2 = 0.01**2, 0.03**2
    out = []
    for c in range(3):
        a, b = x[..., c] / 255.0, y[..., c] / 255.0
        f = lambda z: gaussian_filter(z, sigma=1.5, truncate=3.5, mode="mirror")
        ma, mb = f(a), f(b)
        va, vb, cov = np.maximum(f(a * a) - ma**2, 0), np.maximum(f(b * b) - mb**2, 0), f(a * b) - ma * mb
        out.append((((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma**2 + mb**2 + c1) * (va + vb + c2))).mean())
    return float(np.mean(out))


def test_ssim_matches_independent_reference_and_orders_damage(photo):
    a, b = noisy(photo, 20), noisy(photo, 60)
    s = ssim_per_image([photo, a, b], [photo, photo, photo])
    assert s[0] == pytest.approx(1.0, abs=1e-9) and s[0] > s[1] > s[2]
    assert s[1] == pytest.approx(ssim_reference(a, photo), abs=1e-6)
    assert s[2] == pytest.approx(ssim_reference(b, photo), abs=1e-6)


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
