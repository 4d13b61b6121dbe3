"""Fidelity to the full-precision model: same prompt and seed, pixel/perceptual distance.

* ``psnr``: per image ``10 log10(1 / max(MSE, 1e-10))`` on RGB in [0, 1] (so identical images
  give the cap, 100 dB, not inf); mean over images. Higher is better.
* ``ssim``: per image, SSIM (Wang et al. 2004) as ``skimage.metrics.structural_similarity``
  computes it with the paper's settings (``SSIM_CALL``): Gaussian window 11x11, sigma 1.5,
  k1 0.01, k2 0.03, population (not sample) covariance, data range 1, on RGB in [0, 1] in
  float64; the SSIM map is averaged over the windows that fit inside the image only (skimage
  crops the 5-pixel border, as Wang et al.'s MATLAB ``ssim.m`` filters with ``'valid'``), then
  over the 3 channels; mean over images. Higher is better, max 1. Not torchmetrics: since late
  2024 (1.6+) it averages the map including reflect-padded borders, which on small images (on
  32 px the border is half the map) gives a different number than its own 1.4 and than skimage.
* ``lpips``: LPIPS v0.1 (Zhang et al. 2018) via torchmetrics: the linear heads ship inside the
  torchmetrics wheel; the backbone (``lpips_net``: ``alex`` default, ``vgg``, ``squeeze``) needs
  torchvision's ImageNet weights: ``lpips_weights=PATH`` (a torchvision state dict; only the
  ``features.*`` keys are read) or torch's hub cache / download; offline without them:
  MissingWeightsError. Lower is better. SVDQuant's regression tests use it against cached
  16-bit images.
"""
from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from qbench.api import MetricContext
from qbench.errors import ConfigError
from qbench.metrics import common
from qbench.metrics.base import PerImageMetric

PSNR_MSE_FLOOR = 1e-10  # caps PSNR at 100 dB
#: the skimage call (``structural_similarity(a, b, **SSIM_CALL)``); K1/K2 are skimage's defaults
SSIM_CALL = {"channel_axis": -1, "gaussian_weights": True, "sigma": 1.5, "use_sample_covariance": False, "data_range": 1.0,
             "K1": 0.01, "K2": 0.03}
SSIM_SETTINGS = {"kernel": "gaussian", "kernel_size": 11, "sigma": 1.5, "k1": 0.01, "k2": 0.03, "data_range": 1.0,
                 "covariance": "population (1/N)", "border": "mean over windows inside the image (5 px border cropped)"}
SSIM_CONVENTION = ("skimage / Wang et al. 2004: Gaussian 11x11 sigma 1.5, K1 0.01, K2 0.03, population covariance, "
                   "data range 1, float64; mean over the windows that fit inside the image (no padded border), then over RGB")
SSIM_MIN_SIZE = 11  # the window must fit inside the image


def _pairs(images, references, metric: str):
    common.check_pairs(images, references, metric)
    a = np.stack([common.to_unit_float_array(im, np.float64) for im in images])
    b = np.stack([common.to_unit_float_array(im, np.float64) for im in references])
    if a.shape != b.shape:
        raise ConfigError(f"{metric}: image and reference sizes differ: {a.shape} vs {b.shape}")
    return a, b


def psnr_per_image(images, references) -> np.ndarray:
    """Pure function: per-image PSNR (dB) of paired RGB images, data range 1, capped at 100 dB."""
    a, b = _pairs(images, references, "psnr")
    mse = ((a - b) ** 2).reshape(a.shape[0], -1).mean(axis=1)
    return 10.0 * np.log10(1.0 / np.maximum(mse, PSNR_MSE_FLOOR))


def ssim_per_image(images, references) -> np.ndarray:
    """Per-image SSIM (float64, shape ``(N,)``) of paired RGB images (``SSIM_CONVENTION``).

    Images: PIL, uint8 or float in [0, 1] arrays/tensors (HxWx3 or 3xHxW), each pair the same
    size, both sides at least ``SSIM_MIN_SIZE`` px. Calls ``skimage.metrics.structural_similarity``
    with ``SSIM_CALL`` (~0.5 s per 1024 px image on one CPU core). Raises :class:`ConfigError`
    for missing or mismatched references and images smaller than the window."""
    from skimage.metrics import structural_similarity

    a, b = _pairs(images, references, "ssim")
    if a.size and min(a.shape[1:3]) < SSIM_MIN_SIZE:
        raise ConfigError(f"ssim: images must be at least {SSIM_MIN_SIZE}x{SSIM_MIN_SIZE} px (the Gaussian window), got {a.shape[2]}x{a.shape[1]}")
    return np.array([structural_similarity(x, y, **SSIM_CALL) for x, y in zip(a, b)], dtype=np.float64)


class PSNR(PerImageMetric):
    name: ClassVar[str] = "psnr"
    description: ClassVar[str] = "PSNR (dB) vs the full-precision model's image of the same prompt and seed"
    higher_is_better: ClassVar[bool] = True
    needs_fp_reference: ClassVar[bool] = True
    formula: ClassVar[str] = "10*log10(1/max(MSE,1e-10)) per image on RGB in [0,1] (cap 100 dB), mean over images"

    def score_batch(self, images, prompts, references=None) -> np.ndarray:
        return psnr_per_image(images, references)

    def describe(self) -> dict[str, Any]:
        return {"reference": "full-precision model, same prompts and seeds", "range": "[0, 100] dB"}


class SSIM(PerImageMetric):
    name: ClassVar[str] = "ssim"
    description: ClassVar[str] = "SSIM vs the full-precision model's image of the same prompt and seed"
    higher_is_better: ClassVar[bool] = True
    needs_fp_reference: ClassVar[bool] = True
    formula: ClassVar[str] = ("SSIM per image (Gaussian 11, sigma 1.5, k1 .01, k2 .03, population covariance, RGB in [0,1], "
                              "mean over interior windows and channels), mean over images")

    def score_batch(self, images, prompts, references=None) -> np.ndarray:
        return ssim_per_image(images, references)

    def describe(self) -> dict[str, Any]:
        return {"reference": "full-precision model, same prompts and seeds", "settings": SSIM_SETTINGS, "range": "[-1, 1]",
                "convention": SSIM_CONVENTION, "implementation": "skimage.metrics.structural_similarity",
                "versions": common.versions("scikit-image")}


LPIPS_BACKBONES = {"alex": ("alexnet", "AlexNet_Weights"), "vgg": ("vgg16", "VGG16_Weights"), "squeeze": ("squeezenet1_1", "SqueezeNet1_1_Weights")}
_LPIPS_NETS: dict[tuple[str, str, str], Any] = {}


def resolve_lpips_weights(ctx: MetricContext, net: str) -> tuple[str, dict[str, Any]]:
    path = common.opt(ctx, "lpips_weights")
    if path is not None:
        path = common.local_file(path, f"LPIPS backbone ({net})", "lpips_weights")
        return path, common.weights_provenance(path, "local file (metric option lpips_weights)")
    if common.opt_bool(ctx, "standin"):
        if net != "alex":
            raise ConfigError("the LPIPS stand-in exists for lpips_net=alex only")
        from qbench.metrics import standins

        path = standins.lpips_backbone(standins.standin_dir(ctx))
        return path, common.weights_provenance(path, "qbench stand-in (metric option standin)")
    import torchvision

    url = getattr(torchvision.models, LPIPS_BACKBONES[net][1]).DEFAULT.url
    path = common.fetch_weights(url, f"LPIPS backbone {LPIPS_BACKBONES[net][0]} (torchvision ImageNet)", "lpips_weights")
    return path, common.weights_provenance(path, url)


def build_lpips(net: str, backbone_path: str, device: str):
    """torchmetrics' LPIPS with the shipped v0.1 linear heads and the backbone from ``backbone_path``."""
    from torchmetrics.functional.image.lpips import _LPIPS

    key = (net, backbone_path, device)
    if key not in _LPIPS_NETS:
        model = _LPIPS(pretrained=True, net=net, pnet_rand=True)  # random backbone, then load ours below
        state = common.load_tensor_file(backbone_path, f"LPIPS backbone ({net})", "lpips_weights")
        features = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
        if not features:
            raise ConfigError(f"{backbone_path}: no 'features.*' tensors (expected a torchvision {LPIPS_BACKBONES[net][0]} state dict)")
        loaded = set()
        for name in [n for n in dir(model.net) if n.startswith("slice")]:
            for idx, module in getattr(model.net, name).named_children():
                sub = {k.split(".", 1)[1]: v for k, v in features.items() if k.split(".", 1)[0] == idx}
                if sub:
                    module.load_state_dict(sub)
                    loaded.update(f"{idx}.{k}" for k in sub)
        expected = {f"{i}.{k}" for s in dir(model.net) if s.startswith("slice") for i, m in getattr(model.net, s).named_children() for k in m.state_dict()}
        if expected - loaded:
            raise ConfigError(f"{backbone_path}: backbone tensors missing for LPIPS-{net}: {sorted(expected - loaded)[:4]}")
        _LPIPS_NETS[key] = model.eval().to(device)
    return _LPIPS_NETS[key]


def _lpips_options() -> tuple:
    from qbench.options import Opt

    return (
        Opt("lpips_net", "str", None, "LPIPS backbone", choices=tuple(LPIPS_BACKBONES)),
        Opt("lpips_weights", "str", None, "local torchvision state dict of the backbone (features.* tensors)", path=True),
    )


class LPIPS(PerImageMetric):
    name: ClassVar[str] = "lpips"
    description: ClassVar[str] = "LPIPS v0.1 (AlexNet) vs the full-precision model's image of the same prompt and seed"
    higher_is_better: ClassVar[bool] = False
    needs_fp_reference: ClassVar[bool] = True
    formula: ClassVar[str] = "LPIPS v0.1 distance per image (inputs scaled to [-1,1]), mean over images"
    OPTIONS = _lpips_options()

    @classmethod
    def preflight(cls, ctx: MetricContext, prompts) -> None:
        net = str(common.opt(ctx, "lpips_net", "alex"))
        if net not in LPIPS_BACKBONES:
            raise ConfigError(f"unknown lpips_net {net!r}; expected one of {', '.join(LPIPS_BACKBONES)}")
        resolve_lpips_weights(ctx, net)

    def __init__(self, ctx: MetricContext):
        super().__init__(ctx)
        self.net_name = str(common.opt(ctx, "lpips_net", "alex"))
        if self.net_name not in LPIPS_BACKBONES:
            raise ConfigError(f"unknown lpips_net {self.net_name!r}; expected one of {', '.join(LPIPS_BACKBONES)}")
        self.device = common.resolve_device(ctx.device)
        self.weights_path, self.weights_info = resolve_lpips_weights(ctx, self.net_name)
        self.net = build_lpips(self.net_name, self.weights_path, self.device)
        self.batch_size = common.opt_int(ctx, "metric_batch_size", 16)

    def score_batch(self, images, prompts, references=None) -> np.ndarray:
        import torch

        a, b = _pairs(images, references, "lpips")
        out = []
        with torch.inference_mode():
            for i in range(0, a.shape[0], self.batch_size):
                ta = torch.from_numpy(a[i : i + self.batch_size]).permute(0, 3, 1, 2).float().to(self.device)
                tb = torch.from_numpy(b[i : i + self.batch_size]).permute(0, 3, 1, 2).float().to(self.device)
                out.append(self.net(ta, tb, normalize=True).reshape(-1).double().cpu().numpy())
        return np.concatenate(out)

    def describe(self) -> dict[str, Any]:
        d = {"network": f"LPIPS v0.1 {self.net_name} (torchmetrics; linear heads shipped with torchmetrics)",
             "reference": "full-precision model, same prompts and seeds", "versions": common.versions("torchmetrics", "torchvision")}
        common.merge_provenance(d, "lpips_backbone", self.weights_info)
        return d
