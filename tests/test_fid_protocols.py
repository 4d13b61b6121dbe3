"""FID protocols against the libraries that define them, bit for bit, and the named presets.

* ``clean`` = clean-fid 0.1.35's ``make_resizer("PIL", quantize_after=False, "bicubic", (299, 299))``
  (``cleanfid/resize.py``: each channel as a PIL float image of mode ``F``, bicubic resize, clip to
  [0, 255], channels stacked as float32) followed by its Inception wrapper's ``(x - 128) / 128``
  (``cleanfid/inception_torchscript.py``), written down here from that source;
* ``legacy_pytorch`` = pytorch-fid 0.3.0: torchvision's ``to_tensor`` of the RGB picture, then
  ``InceptionV3(resize_input=True, normalize_input=True)``'s bilinear resize and ``2x - 1``
  (``pytorch_fid/inception.py``), with torchvision's own ``to_tensor``.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from qbench.api import MetricContext
from qbench.errors import ConfigError
from qbench.metrics import fid
from qbench.metrics.inception import (
    FID_PRESETS,
    PROTOCOLS,
    inception_input,
    resolve_protocol,
)

SIZES = (32, 64, 100, 256, 299, 512, 1024)


def _images(size: int, seed: int) -> list[np.ndarray]:
    """A noise picture (every code, sharp edges: PIL's bicubic overshoots and clips) and a smooth one."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    smooth = np.stack([xx * 255, yy * 255, (xx * yy) * 255], -1).round().astype(np.uint8)
    return [noise, smooth]


def _cleanfid_clean(img: np.ndarray) -> np.ndarray:
    """clean-fid's clean resize + normalisation of one HxWx3 uint8 image -> 3x299x299 float32."""
    planes = []
    for c in range(3):
        f = Image.fromarray(img[:, :, c].astype(np.float32), mode="F").resize((299, 299), resample=Image.BICUBIC)
        planes.append(np.asarray(f).clip(0, 255).reshape(299, 299, 1))
    x = np.concatenate(planes, axis=2).astype(np.float32).transpose(2, 0, 1)
    t = torch.from_numpy(np.ascontiguousarray(x))
    return ((t - 128) / 128).numpy()


def _pytorch_fid(img: np.ndarray) -> np.ndarray:
    """pytorch-fid 0.3.0's input path of one RGB picture -> 3x299x299 float32."""
    from torchvision.transforms.functional import to_tensor

    x = to_tensor(Image.fromarray(img).convert("RGB"))[None]
    x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
    return (2 * x - 1)[0].numpy()


@pytest.mark.parametrize("size", SIZES)
def test_clean_resize_equals_clean_fid_bit_for_bit(size):
    imgs = _images(size, size)
    ours = inception_input(imgs, "clean").numpy()
    for i, img in enumerate(imgs):
        np.testing.assert_array_equal(ours[i], _cleanfid_clean(img))


def test_clean_resize_non_square():
    img = np.random.default_rng(1).integers(0, 256, (48, 80, 3), dtype=np.uint8)
    np.testing.assert_array_equal(inception_input([img], "clean").numpy()[0], _cleanfid_clean(img))


@pytest.mark.parametrize("size", (32, 256, 512, 1024))
def test_legacy_pytorch_equals_pytorch_fid_0_3_0_bit_for_bit(size):
    imgs = _images(size, size + 1)
    ours = inception_input(imgs, "legacy_pytorch").numpy()
    for i, img in enumerate(imgs):
        np.testing.assert_array_equal(ours[i], _pytorch_fid(img))


def test_presets_set_the_protocol_and_refuse_contradictions():
    assert FID_PRESETS["pytorch-fid-0.3.0"]["protocol"] == "legacy_pytorch" in PROTOCOLS
    assert resolve_protocol(None, None) == "clean"
    assert resolve_protocol(None, "pytorch-fid-0.3.0") == "legacy_pytorch"
    assert resolve_protocol("legacy_pytorch", "pytorch-fid-0.3.0") == "legacy_pytorch"
    with pytest.raises(ConfigError, match="fid_preset=pytorch-fid-0.3.0 uses fid_protocol=legacy_pytorch"):
        resolve_protocol("clean", "pytorch-fid-0.3.0")
    with pytest.raises(ConfigError, match="unknown FID preset"):
        resolve_protocol(None, "q-sched")
    ctx = MetricContext(options={"fid_preset": "pytorch-fid-0.3.0"})
    assert fid._protocol(ctx) == "legacy_pytorch"
    for key in ("description", "weights", "reference"):
        assert FID_PRESETS["pytorch-fid-0.3.0"][key]


def test_preset_is_recorded_with_the_number(tmp_path):
    """The FID metrics built under the preset extract features with its protocol and record the
    preset (what it needs: weights, reference) in every value's details (stand-in network)."""
    ctx = MetricContext(options={"fid_preset": "pytorch-fid-0.3.0", "standin": True}, cache_dir=str(tmp_path))
    m = fid.FIDvsFP(ctx)
    assert m.protocol == m.extractor.protocol == "legacy_pytorch"
    terms = dict.fromkeys(("raw", "mean_term", "trace1", "trace2", "trace_sqrt", "tolerance", "dropped_eigenvalues", "min_eigenvalue_rel"), 0.0)
    d = m._details({"kind": "test"}, terms)
    assert d["protocol"] == "legacy_pytorch" and d["preset"]["name"] == "pytorch-fid-0.3.0" and "reference" in d["preset"]
    with pytest.raises(ConfigError, match="drop fid_protocol=clean"):
        fid.FIDvsFP(MetricContext(options={"fid_preset": "pytorch-fid-0.3.0", "fid_protocol": "clean", "standin": True}, cache_dir=str(tmp_path)))
