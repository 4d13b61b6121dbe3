"""ImageReward (Xu et al., arXiv:2304.05977): a BLIP-based reward model of human preference for
text-to-image generation, written in-tree (:mod:`qbench.metrics.blip`) because the
``image-reward`` package pins ``timm==0.6.13`` and ``fairscale==0.4.13``.

Per image ``i`` with prompt ``t_i`` (THUDM/ImageReward ``ImageReward.score``)::

    h_i = MED-BERT(tokens(t_i), cross-attending to ViT-L(x_i))[CLS]
    ImageReward_i = (MLP(h_i) - 0.16717362830052426) / 1.0333394966054072

Inputs as the reference: image -> bicubic resize of the shortest side to 224 (PIL), centre crop
224, RGB, ``ToTensor``, OpenAI CLIP mean/std; prompt -> bert-base-uncased WordPiece with
``[DEC]`` (bos) and ``[ENC]`` added (vocabulary 30524), padded / truncated to 35 tokens.
Rewards are roughly standard normal over the ImageReward training set (its README); higher is
better. Shapes: images PIL / HxWx3 uint8 / float in [0, 1]; scores a float64 ``(N,)`` array.

Weights: ``THUDM/ImageReward`` file ``ImageReward.pt`` (a state dict with BLIP's names, read with
``torch.load(weights_only=True)``), renamed by :func:`qbench.metrics.blip.map_checkpoint`; every
parameter of the network must be present (a missing one is an error), the names the reward does
not use (``blip.vision_proj``, ``blip.text_proj``) are listed in ``details``. Options:
``-M imagereward_weights=PATH``, ``-M imagereward_tokenizer=FOLDER|HUB_ID`` (default
``bert-base-uncased``), ``-M imagereward_config=JSON`` (network sizes; default ImageReward v1.0's).
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from qbench.api import MetricContext
from qbench.errors import ConfigError, MissingWeightsError, QBenchError
from qbench.metrics import common
from qbench.metrics.preference import ScorerMetric

IR_REPO = "THUDM/ImageReward"
IR_FILE = "ImageReward.pt"
TOKENIZER = "bert-base-uncased"
MAX_TOKENS = 35
FORMULA = "ImageReward = (MLP(BLIP text encoder [CLS] | ViT-L image) - 0.16717362830052426) / 1.0333394966054072 per image (THUDM/ImageReward), mean over images"


def _options() -> tuple:
    from qbench.options import Opt

    return (
        Opt("imagereward_weights", "str", None, f"local {IR_FILE} (huggingface.co/{IR_REPO})"),
        Opt("imagereward_tokenizer", "str", None, f"BERT tokenizer folder or hub id (default {TOKENIZER})"),
        Opt("imagereward_config", "str", None, "JSON of the network sizes (default ImageReward v1.0's)"),
    )


IR_OPTIONS = _options()


def imagereward_spec(ctx: MetricContext) -> tuple[str, str, str | None, str]:
    """``(weights path, tokenizer folder or hub id, config JSON or None, origin)``."""
    given = common.opt(ctx, "imagereward_weights")
    tok, cfg = common.opt(ctx, "imagereward_tokenizer"), common.opt(ctx, "imagereward_config")
    if given is not None:
        return common.local_file(given, "ImageReward", "imagereward_weights"), str(tok or TOKENIZER), cfg, "metric option imagereward_weights"
    if common.opt_bool(ctx, "standin"):
        from qbench.metrics import standins

        weights, s_tok, s_cfg = standins.imagereward_model(standins.standin_dir(ctx))
        return weights, str(tok or s_tok), cfg or s_cfg, "qbench stand-in (metric option standin)"
    from qbench.metrics.preference import hub_file

    return hub_file(IR_REPO, IR_FILE, "ImageReward", "imagereward_weights"), str(tok or TOKENIZER), cfg, f"hub {IR_REPO}/{IR_FILE}"


def read_config(path: str | None):
    """:class:`~qbench.metrics.blip.ImageRewardConfig` from a JSON file (None: the published one)."""
    from qbench.metrics.blip import ImageRewardConfig

    if path is None:
        return ImageRewardConfig()
    path = common.local_file(path, "ImageReward config", "imagereward_config")
    try:
        with open(path) as f:
            raw = json.load(f)
        if "mlp_dims" in raw:
            raw["mlp_dims"] = tuple(raw["mlp_dims"])
        return ImageRewardConfig(**raw)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"imagereward_config {path}: not a JSON of ImageRewardConfig fields ({common._first_line(e)})") from None


def load_tokenizer(source: str) -> Any:
    """bert-base-uncased's WordPiece tokenizer with ImageReward's added ``[DEC]`` / ``[ENC]``."""
    from transformers import BertTokenizer

    try:
        tok = BertTokenizer.from_pretrained(os.path.expanduser(source), local_files_only=common.is_offline())
    except OSError:
        raise MissingWeightsError(
            f"ImageReward tokenizer {source!r} is neither a folder with vocab.txt nor cached (offline or unreachable); "
            f"download huggingface.co/google-bert/{TOKENIZER} (vocab.txt, tokenizer_config.json) and pass -M imagereward_tokenizer=FOLDER"
        ) from None
    tok.add_special_tokens({"bos_token": "[DEC]"})
    tok.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tok


@dataclass
class LoadedIR:
    net: Any
    tokenizer: Any
    device: str
    info: dict[str, Any] = field(default_factory=dict)


_CACHE: dict[tuple[str, str, str | None, str], LoadedIR] = {}


def load_imagereward(weights: str, tokenizer: str, config: str | None, device: str = "cpu", origin: str = "") -> LoadedIR:
    """Build (once per process) the network, load ``weights`` through the name map, and the tokenizer."""
    from qbench.metrics.blip import ImageRewardNet, map_checkpoint
    from qbench.metrics.preference import load_state_strict

    device = common.resolve_device(device)
    key = (weights, tokenizer, config, device)
    if key in _CACHE:
        return _CACHE[key]
    cfg = read_config(config)
    tok = load_tokenizer(tokenizer)
    if len(tok) != cfg.text_vocab:
        raise ConfigError(f"ImageReward tokenizer {tokenizer!r} has {len(tok)} tokens with [DEC]/[ENC], the network {cfg.text_vocab}")
    state = common.load_tensor_file(weights, "ImageReward", "imagereward_weights")
    mapped, unused, unknown = map_checkpoint(state)
    if unknown:
        raise QBenchError(f"ImageReward: {weights} holds {len(unknown)} names of no known part, e.g. {unknown[:3]} (option imagereward_weights)")
    net = ImageRewardNet(cfg)
    load_state_strict(net, {k: v.float() if v.is_floating_point() else v for k, v in mapped.items()}, f"ImageReward checkpoint {weights}", "imagereward_weights")
    info = {"config": cfg.to_dict(), "unused_checkpoint_names": sorted(unused),
            "weights": common.weights_provenance(weights, origin), "tokenizer": tokenizer}
    loaded = LoadedIR(net.to(device).eval(), tok, device, info)
    _CACHE[key] = loaded
    return loaded


def ir_preprocess(images: Sequence[Any], size: int) -> Any:
    """ImageReward's ``_transform(224)`` as a ``(N, 3, size, size)`` float32 tensor."""
    import torch
    from PIL import Image
    from torchvision import transforms as T

    tf = T.Compose([T.Resize(size, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(size), T.ToTensor(),
                    T.Normalize((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))])
    return torch.stack([tf(Image.fromarray(common.to_uint8_array(im))) for im in images])


class ImageRewardScorer:
    """Reusable scorer: ``score(images, texts) -> (N,)`` float64 rewards."""

    def __init__(self, ctx: MetricContext):
        weights, tok, cfg, origin = imagereward_spec(ctx)
        self.ir = load_imagereward(weights, tok, cfg, ctx.device, origin)
        self.batch_size = common.opt_int(ctx, "metric_batch_size", 16)

    def score(self, images: Sequence[Any], texts: Sequence[str]) -> np.ndarray:
        import torch

        if len(images) != len(texts):
            raise ConfigError(f"ImageReward: {len(images)} images but {len(texts)} texts")
        out = []
        with torch.inference_mode():
            for i in range(0, len(images), self.batch_size):
                x = ir_preprocess(images[i : i + self.batch_size], self.ir.net.cfg.image_size).to(self.ir.device)
                t = self.ir.tokenizer(list(texts[i : i + self.batch_size]), padding="max_length", truncation=True,
                                      max_length=MAX_TOKENS, return_tensors="pt")
                r = self.ir.net(x, t["input_ids"].to(self.ir.device), t["attention_mask"].to(self.ir.device))
                out.append(r.float().cpu().numpy())
        return np.concatenate(out).astype(np.float64) if out else np.zeros(0)

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"network": "BLIP ViT-L/16 + MED BERT cross-attention + MLP (in-tree, qbench.metrics.blip)",
                             "config": self.ir.info["config"], "tokenizer": self.ir.info["tokenizer"], "max_tokens": MAX_TOKENS,
                             "unused_checkpoint_names": self.ir.info["unused_checkpoint_names"],
                             "versions": common.versions("torch", "transformers")}
        common.merge_provenance(d, "imagereward_weights", self.ir.info["weights"])
        return d


def preflight_imagereward(ctx: MetricContext) -> None:
    """Weights present (or downloadable), the config readable; nothing is built."""
    _, _, cfg, _ = imagereward_spec(ctx)
    read_config(cfg)


class ImageReward(ScorerMetric):
    name: ClassVar[str] = "imagereward"
    description: ClassVar[str] = "ImageReward v1.0: BLIP-based human preference reward (in-tree), ~N(0,1), higher is better"
    higher_is_better: ClassVar[bool] = True
    formula: ClassVar[str] = FORMULA
    OPTIONS = IR_OPTIONS
    SCORER = ImageRewardScorer
    RANGE = "unbounded, ~N(0, 1) on ImageReward's data"

    @classmethod
    def preflight(cls, ctx: MetricContext, prompts) -> None:
        preflight_imagereward(ctx)
