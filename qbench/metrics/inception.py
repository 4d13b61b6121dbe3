"""Inception-v3 pool3 features as FID uses them: the network, its input per protocol.

Network: Inception-v3 pool3 (2048-d) as ported from TensorFlow's 2015-12-05 graph by
torch-fidelity (``FeatureExtractorInceptionV3``; the same network pytorch-fid, clean-fid,
torchmetrics and the original TF code use), built from a state dict read with
``torch.load(weights_only=True)`` (or safetensors), never unpickled (:func:`build_inception`).
Which weights file is used is decided in ``qbench.metrics.fid`` (``resolve_inception_weights``);
``qbench.metrics.standins`` builds a random stand-in through :func:`pool3`. Both import this
module, which imports neither.

Protocols (how an image reaches 299x299 and how it is normalised):

* ``clean`` (default; clean-fid): each channel resized as a float image with PIL bicubic
  (antialiased), clipped to [0, 255], no re-quantization; ``(x - 128) / 128``.
* ``legacy_tensorflow`` (TF1 FID, torch-fidelity, torchmetrics ``FrechetInceptionDistance(
  antialias=False)``): uint8 pixels, TF1-compatible bilinear resize, ``(x - 128) / 128``.
* ``legacy_pytorch`` (pytorch-fid 0.3.0, operation for operation): torchvision's ``ToTensor``
  (``uint8 -> float32 / 255``), ``torch.nn.functional.interpolate(bilinear, align_corners=False)``
  to 299x299 without antialiasing (``InceptionV3(resize_input=True)``), ``2 * x - 1``
  (``normalize_input=True``).

Named presets (:data:`FID_PRESETS`, metric option ``fid_preset``) fix a protocol together with
what a published number was computed against, so a user knows what else to supply.
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import numpy as np

from qbench.errors import ConfigError
from qbench.metrics import common

PROTOCOLS: dict[str, str] = {
    "clean": "clean-fid: per-channel PIL bicubic float resize to 299x299 (antialiased), no quantization, (x-128)/128",
    "legacy_tensorflow": "TF1 FID / torch-fidelity / torchmetrics(antialias=False): uint8, TF1 bilinear resize to 299x299, (x-128)/128",
    "legacy_pytorch": "pytorch-fid 0.3.0: x/255, torch bilinear resize to 299x299 (align_corners=False, no antialias), 2*x-1",
}
#: ``{preset: {"protocol", "description", "weights", "reference"}}``. ``pytorch-fid-0.3.0``: the
#: FID of mseitzer/pytorch-fid 0.3.0 (pinned in enyac-group/q-sched's ``env.yml``):
#: ``pytorch_fid/fid_score.py`` loads each image with PIL ``convert("RGB")`` and ``ToTensor``;
#: ``pytorch_fid/inception.py`` resizes and normalises as ``legacy_pytorch``; pool3 of the TF
#: 2015-12-05 Inception (its ``pt_inception-2015-12-05-6726825d.pth``: the checkpoint torch-fidelity
#: ports as ``weights-inception-2015-12-05-6726825d.pth``, which qbench loads); statistics
#: ``np.mean`` / ``np.cov(rowvar=False)`` (ddof 1) of all images' features; the reference side
#: is a folder of real images or an ``.npz`` written by ``python -m pytorch_fid --save-stats``.
FID_PRESETS: dict[str, dict[str, str]] = {
    "pytorch-fid-0.3.0": {
        "protocol": "legacy_pytorch",
        "description": "pytorch-fid 0.3.0: ToTensor (x/255), bilinear resize to 299 (align_corners=False, no antialias), 2x-1, "
                       "Inception-v3 pool3 (TF 2015-12-05), mean and covariance (ddof 1)",
        "weights": "the TF 2015-12-05 Inception-v3 (pytorch-fid's pt_inception-2015-12-05-6726825d.pth; qbench loads "
                   "torch-fidelity's port of the same checkpoint, weights-inception-2015-12-05-6726825d.pth)",
        "reference": "the real images the published number used (their folder, or pytorch-fid's --save-stats .npz of them), "
                     "at the published image count",
    },
}
DEFAULT_PROTOCOL = "clean"
INCEPTION_SIZE = 299
FEATURE_DIM = 2048


def check_protocol(protocol: str) -> str:
    if protocol not in PROTOCOLS:
        raise ConfigError(f"unknown FID protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}")
    return protocol


def resolve_protocol(protocol: str | None, preset: str | None) -> str:
    """The protocol of metric options ``fid_protocol`` / ``fid_preset`` (default ``clean``).
    Raises :class:`ConfigError` for an unknown preset or a protocol that contradicts the preset."""
    if preset is None:
        return check_protocol(protocol or DEFAULT_PROTOCOL)
    if preset not in FID_PRESETS:
        raise ConfigError(f"unknown FID preset {preset!r}; expected one of {', '.join(FID_PRESETS)}")
    want = FID_PRESETS[preset]["protocol"]
    if protocol is not None and protocol != want:
        raise ConfigError(f"fid_preset={preset} uses fid_protocol={want}; drop fid_protocol={protocol} or the preset")
    return want


# -- resizing per protocol ----------------------------------------------------------------------
def inception_input(images: Iterable[Any], protocol: str):
    """Images -> ``N x 3 x 299 x 299`` float32 tensor, normalised as ``protocol`` prescribes."""
    import torch
    import torch.nn.functional as F
    from PIL import Image

    check_protocol(protocol)
    arrays = [common.to_uint8_array(im) for im in images]
    if protocol == "clean":
        out = []
        for a in arrays:
            chans = [
                np.asarray(Image.fromarray(a[..., c].astype(np.float32)).resize((INCEPTION_SIZE, INCEPTION_SIZE), resample=Image.BICUBIC)).clip(0, 255)
                for c in range(3)
            ]
            out.append(np.stack(chans, axis=0))
        x = torch.from_numpy(np.stack(out).astype(np.float32))
        return (x - 128.0) / 128.0
    sizes = {a.shape for a in arrays}
    if len(sizes) > 1:
        raise ConfigError(f"images of different sizes in one batch: {sorted(sizes)}")
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).to(torch.float32)
    if protocol == "legacy_tensorflow":
        from torch_fidelity.interpolate_compat_tensorflow import (
            interpolate_bilinear_2d_like_tensorflow1x,
        )

        x = interpolate_bilinear_2d_like_tensorflow1x(x, size=(INCEPTION_SIZE, INCEPTION_SIZE), align_corners=False)
        return (x - 128.0) / 128.0
    x = F.interpolate(x.div(255), size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", align_corners=False)  # ToTensor, resize_input
    return 2 * x - 1  # normalize_input


# -- the network --------------------------------------------------------------------------------
def pool3(net, x):
    """torch-fidelity's Inception forward from the normalised 299x299 input to the 2048-d pool."""
    import torch

    for name in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "MaxPool_1", "Conv2d_3b_1x1", "Conv2d_4a_3x3", "MaxPool_2",
                 "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e",
                 "Mixed_7a", "Mixed_7b", "Mixed_7c", "AvgPool"):
        x = getattr(net, name)(x)
    return torch.flatten(x, 1)




_NETS: dict[tuple[str, str], Any] = {}

def build_inception(weights_path: str):
    """torch-fidelity's ``FeatureExtractorInceptionV3`` with the state dict in ``weights_path``.

    The file is read by :func:`common.load_tensor_file` (``torch.load(weights_only=True)`` or
    safetensors): torch-fidelity's own loader unpickles with ``weights_only=False``, which runs
    any code a crafted file carries, so the dict is handed to torch-fidelity's constructor in
    place of its URL download instead. Raises :class:`QBenchError` for a file that is not a plain
    state dict, :class:`ConfigError` for one that is not torch-fidelity's Inception-v3 layout.
    """
    from unittest import mock

    from torch_fidelity import feature_extractor_inceptionv3 as fe

    state = common.load_tensor_file(weights_path, "Inception-v3 (FID)", "inception_weights")
    try:
        with mock.patch.object(fe, "load_state_dict_from_url", lambda *a, **k: state):
            return fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    except RuntimeError as e:  # load_state_dict: missing / unexpected keys or wrong shapes
        raise ConfigError(f"{weights_path}: not torch-fidelity's Inception-v3 state dict ({str(e).splitlines()[0][:160]})") from None


class InceptionFeatures:
    """Callable: images -> ``(N, 2048)`` float64 pool3 features under one protocol."""

    def __init__(self, weights_path: str, protocol: str = DEFAULT_PROTOCOL, device: str = "cpu", batch_size: int = 16):
        self.protocol = check_protocol(protocol)
        self.device = common.resolve_device(device)
        self.batch_size = int(batch_size)
        self.weights_path = weights_path
        key = (os.path.realpath(weights_path), self.device)
        if key not in _NETS:
            _NETS[key] = build_inception(weights_path).to(self.device)
        self.net = _NETS[key]

    def __call__(self, images: list[Any]) -> np.ndarray:
        import torch

        feats = []
        with torch.inference_mode():
            for i in range(0, len(images), self.batch_size):
                x = inception_input(images[i : i + self.batch_size], self.protocol).to(self.device)
                feats.append(pool3(self.net, x).double().cpu().numpy())
        return np.concatenate(feats) if feats else np.zeros((0, FEATURE_DIM))
