"""HPSv2.1: Human Preference Score v2.1 (Wu et al., "Human Preference Score v2", arXiv:2306.09341).

A CLIP ViT-H-14 (open_clip architecture) fine-tuned on human preference pairs (HPD v2). Per image
``i`` with prompt ``t_i``::

    HPS_i = 100 * cos(E_img(x_i), E_txt(t_i))

Source: tgxs002/HPSv2. ``hpsv2.score`` (``hpsv2/img_score.py``) returns the diagonal of
``image_features @ text_features.T`` on the model's L2-normalised features, i.e. ``cos`` (this is
the unit Q-Sched's ``mean(AQ-Map) + k * mean(HPSv2.1)`` adds up, see :mod:`qbench.metrics.jaq`);
its benchmark (``hpsv2/evaluation.py``) uses ``100 * cos``, the unit HPSv2's published tables
use, which this metric reports. No clamp at 0 (unlike CLIP score).

Weights: ``xswu/HPSv2`` on the hub, file ``HPS_v2.1_compressed.pt`` (``hps_version=v2.0``:
``HPS_v2_compressed.pt``), a ``{"state_dict": ...}`` of open_clip ``ViT-H-14`` names that the
reference loads strictly, so qbench builds ``open_clip.create_model("ViT-H-14")`` without
pretrained weights and loads that state dict (strict: a missing or extra name is an error, one
line). ``-M hps_weights=PATH`` takes a local copy (read with ``torch.load(weights_only=True)``).

Preprocessing as HPSv2's ``image_transform(is_train=False)``: RGB -> ``ToTensor`` -> bicubic
resize of the shortest side to 224 (on the tensor; ``antialias=True``, the current torchvision
default) -> centre crop 224 -> OpenAI CLIP mean/std. Prompts: open_clip's tokenizer (77 tokens,
truncated). The reference runs under CUDA autocast (fp16); qbench runs the model in float32.

Shapes and dtypes: images are PIL / HxWx3 uint8 / float in [0, 1] (any size); scores a float64
``(N,)`` array, unit "100 x cosine", range [-100, 100].
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from qbench.api import MetricContext
from qbench.errors import ConfigError
from qbench.metrics import common
from qbench.metrics.preference import ScorerMetric, paired_cosine

HPS_REPO = "xswu/HPSv2"
HPS_FILES = {"v2.1": "HPS_v2.1_compressed.pt", "v2.0": "HPS_v2_compressed.pt"}
ARCH = "ViT-H-14"
FORMULA = "HPS = 100 * cos(E_img, E_txt) per image (open_clip ViT-H-14 + HPS checkpoint; tgxs002/HPSv2 evaluation.py), mean over images"


def hps_from_features(image_emb, text_emb) -> np.ndarray:
    """Pure function: ``100 * cos`` row-wise for paired embeddings ``(N, d)`` -> ``(N,)`` float64."""
    return 100.0 * paired_cosine(image_emb, text_emb)


def _options() -> tuple:
    from qbench.options import Opt

    return (
        Opt("hps_version", "str", None, "HPS checkpoint on the hub (default v2.1)", choices=tuple(HPS_FILES)),
        Opt("hps_weights", "str", None, f"local HPS checkpoint (e.g. {HPS_FILES['v2.1']} from huggingface.co/{HPS_REPO})"),
        Opt("hps_model", "str", None, f"open_clip architecture of hps_weights: a model name or config JSON (default {ARCH})"),
    )


HPS_OPTIONS = _options()


def hps_spec(ctx: MetricContext) -> tuple[str, str, str]:
    """``(open_clip model name or config JSON, weights path, origin)``; downloads when allowed.

    Raises :class:`MissingWeightsError` offline without the checkpoint (naming its URL and
    ``-M hps_weights``), :class:`ConfigError` for an unknown version.
    """
    version = str(common.opt(ctx, "hps_version", "v2.1"))
    if version not in HPS_FILES:
        raise ConfigError(f"hps_version={version!r}; expected one of {', '.join(HPS_FILES)}")
    given = common.opt(ctx, "hps_weights")
    if given is not None:
        return str(common.opt(ctx, "hps_model", ARCH)), common.local_file(given, "HPS", "hps_weights"), "metric option hps_weights"
    if common.opt_bool(ctx, "standin"):
        from qbench.metrics import standins

        cfg, weights = standins.hps_model(standins.standin_dir(ctx))
        return cfg, weights, "qbench stand-in (metric option standin)"
    from qbench.metrics.preference import hub_file

    path = hub_file(HPS_REPO, HPS_FILES[version], f"HPS{version}", "hps_weights")
    return str(common.opt(ctx, "hps_model", ARCH)), path, f"hub {HPS_REPO}/{HPS_FILES[version]}"


@dataclass
class LoadedHPS:
    model: Any
    tokenizer: Any
    name: str
    image_size: int
    device: str
    info: dict[str, Any] = field(default_factory=dict)


_CACHE: dict[tuple[str, str, str], LoadedHPS] = {}


def load_hps(model: str, weights: str, device: str = "cpu", origin: str = "metric option hps_weights") -> LoadedHPS:
    """Build (once per process) the open_clip model ``model`` and load the HPS state dict ``weights``."""
    import open_clip

    from qbench.metrics.clip_models import _model_name
    from qbench.metrics.preference import load_state_strict

    device = common.resolve_device(device)
    key = (model, weights, device)
    if key not in _CACHE:
        name, info = _model_name(model)
        state = common.load_tensor_file(weights, "HPS", "hps_weights")
        net = open_clip.create_model(name, pretrained=None)
        load_state_strict(net, {k: v.float() if v.is_floating_point() else v for k, v in state.items()}, f"HPS checkpoint {weights}", "hps_weights")
        size = open_clip.get_model_config(name)["vision_cfg"]["image_size"]
        info.update(model=name, weights=common.weights_provenance(weights, origin))
        _CACHE[key] = LoadedHPS(net.to(device).eval(), open_clip.get_tokenizer(name), name, int(size), device, info)
    return _CACHE[key]


def hps_preprocess(images: Sequence[Any], size: int) -> Any:
    """HPSv2's eval transform as a ``(N, 3, size, size)`` float32 tensor (see the module docstring)."""
    import torch
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as F

    out = []
    for im in images:
        x = torch.from_numpy(common.to_unit_float_array(im)).permute(2, 0, 1)
        x = F.resize(x, size, interpolation=InterpolationMode.BICUBIC, antialias=True)
        x = F.center_crop(x, [size, size])
        out.append(F.normalize(x, OPENAI_DATASET_MEAN, OPENAI_DATASET_STD))
    return torch.stack(out)


class HPSScorer:
    """Reusable scorer: ``score(images, texts) -> (N,)`` float64 HPS (``100 * cos``)."""

    def __init__(self, ctx: MetricContext):
        model, weights, origin = hps_spec(ctx)
        self.hps = load_hps(model, weights, ctx.device, origin)
        self.batch_size = common.opt_int(ctx, "metric_batch_size", 16)

    def score(self, images: Sequence[Any], texts: Sequence[str]) -> np.ndarray:
        import torch

        if len(images) != len(texts):
            raise ConfigError(f"HPS: {len(images)} images but {len(texts)} texts")
        img, txt = [], []
        with torch.inference_mode():
            for i in range(0, len(images), self.batch_size):
                x = hps_preprocess(images[i : i + self.batch_size], self.hps.image_size).to(self.hps.device)
                img.append(self.hps.model.encode_image(x).float().cpu().numpy())
                tokens = self.hps.tokenizer(list(texts[i : i + self.batch_size])).to(self.hps.device)
                txt.append(self.hps.model.encode_text(tokens).float().cpu().numpy())
        if not img:
            return np.zeros(0)
        return hps_from_features(np.concatenate(img), np.concatenate(txt))

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"hps_model": self.hps.name, "versions": common.versions("torch", "open_clip_torch"),
                             "preprocess": "ToTensor, bicubic resize (antialias) + centre crop to 224, OpenAI CLIP mean/std",
                             "precision": "float32"}
        if "config" in self.hps.info:
            d["hps_config"] = self.hps.info["config"]
        common.merge_provenance(d, "hps_weights", self.hps.info["weights"])
        return d


def preflight_hps(ctx: MetricContext) -> None:
    """The checks of :class:`HPSScorer` without building the network (weights present, names known)."""
    from qbench.metrics.clip_models import _model_name

    model, _, _ = hps_spec(ctx)
    _model_name(model)


class HPSv2(ScorerMetric):
    name: ClassVar[str] = "hpsv2"
    description: ClassVar[str] = "HPSv2.1 human preference score, 100*cos of open_clip ViT-H-14 + HPS v2.1 embeddings"
    higher_is_better: ClassVar[bool] = True
    formula: ClassVar[str] = FORMULA
    OPTIONS = HPS_OPTIONS
    SCORER = HPSScorer
    RANGE = "[-100, 100] (100 x cosine)"

    @classmethod
    def preflight(cls, ctx: MetricContext, prompts) -> None:
        preflight_hps(ctx)
