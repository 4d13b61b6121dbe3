"""The ImageReward network in-tree: BLIP's ViT-L image encoder, BLIP's text encoder with
cross-attention (the "MED" BERT), and ImageReward's MLP head; the ``ImageReward.pt`` name map.

Sources: Xu et al., "ImageReward: Learning and Evaluating Human Preferences for Text-to-Image
Generation" (NeurIPS 2023, arXiv:2304.05977); THUDM/ImageReward (``ImageReward/ImageReward.py``:
``BLIP_Pretrain(image_size=224, vit='large')``, ``MLP(768)``, mean/std; ``med_config.json``) and
BLIP (Li et al., arXiv:2201.12086; salesforce/BLIP ``models/vit.py``, ``models/med.py``).

The building blocks are transformers' port of BLIP: ``BlipVisionModel`` is BLIP's timm-style ViT
(fused ``qkv`` projection, pre-norm blocks, final LayerNorm) and ``BlipTextModel`` is BLIP's MED
BERT (self-attention, cross-attention to the image tokens, feed-forward; no token-type
embeddings). ImageReward's published configuration (the numbers below):

* ViT-L/16 at 224 px: width 1024, 24 blocks, 16 heads, MLP 4096, LayerNorm eps 1e-6, GELU;
* MED BERT: bert-base (768 wide, 12 layers, 12 heads, 3072 MLP, LayerNorm eps 1e-12, 512
  positions), vocabulary 30524 (bert-base-uncased + ``[DEC]`` + ``[ENC]``), cross-attention width
  1024 (``encoder_width`` = the ViT's width, set by ``BLIP_Pretrain``);
* MLP head 768 -> 1024 -> 128 -> 64 -> 16 -> 1, linear layers with dropout between the first four
  (``nn.Sequential`` indices 0, 2, 4, 6, 7) and no activation;
* reward = (MLP(h_[CLS]) - 0.16717362830052426) / 1.0333394966054072.
"""
from __future__ import annotations

import itertools
import re
from dataclasses import asdict, dataclass
from typing import Any

import torch

REWARD_MEAN = 0.16717362830052426
REWARD_STD = 1.0333394966054072
#: ImageReward.pt names that the reward does not use (BLIP's contrastive projections, a buffer)
UNUSED = re.compile(r"^blip\.(vision_proj|text_proj)\.|^blip\.text_encoder\.embeddings\.position_ids$")


@dataclass(frozen=True)
class ImageRewardConfig:
    """Sizes of the network; the defaults are ImageReward v1.0's."""

    image_size: int = 224
    patch_size: int = 16
    vision_width: int = 1024
    vision_layers: int = 24
    vision_heads: int = 16
    vision_mlp: int = 4096
    text_vocab: int = 30524
    text_width: int = 768
    text_layers: int = 12
    text_heads: int = 12
    text_mlp: int = 3072
    text_positions: int = 512
    mlp_dims: tuple[int, ...] = (1024, 128, 64, 16)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ImageRewardNet(torch.nn.Module):
    """``forward(pixel_values (N,3,H,W) float32, input_ids (N,L) int64, attention_mask (N,L) int64)
    -> (N,)`` float32 normalised rewards. Build under ``torch.device("meta")`` for names and shapes
    without memory."""

    def __init__(self, cfg: ImageRewardConfig):
        from transformers import (
            BlipTextConfig,
            BlipTextModel,
            BlipVisionConfig,
            BlipVisionModel,
        )

        super().__init__()
        self.cfg = cfg
        self.vision = BlipVisionModel(BlipVisionConfig(
            hidden_size=cfg.vision_width, intermediate_size=cfg.vision_mlp, num_hidden_layers=cfg.vision_layers,
            num_attention_heads=cfg.vision_heads, image_size=cfg.image_size, patch_size=cfg.patch_size,
            layer_norm_eps=1e-6, hidden_act="gelu"))
        self.text = BlipTextModel(BlipTextConfig(
            vocab_size=cfg.text_vocab, hidden_size=cfg.text_width, encoder_hidden_size=cfg.vision_width,
            intermediate_size=cfg.text_mlp, num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.text_heads,
            max_position_embeddings=cfg.text_positions, layer_norm_eps=1e-12, hidden_act="gelu", pad_token_id=0,
            bos_token_id=cfg.text_vocab - 2,  # [DEC], added after the WordPiece vocabulary
            is_decoder=True),  # builds the cross-attention layers; forward() keeps self-attention bidirectional
            add_pooling_layer=False)
        dims = (cfg.text_width, *cfg.mlp_dims)
        layers: list[torch.nn.Module] = []
        for i, (a, b) in enumerate(itertools.pairwise(dims)):
            layers.append(torch.nn.Linear(a, b))
            if i < 3:  # ImageReward: Dropout(0.2), Dropout(0.2), Dropout(0.1) after the first three
                layers.append(torch.nn.Dropout((0.2, 0.2, 0.1)[i]))
        layers.append(torch.nn.Linear(dims[-1], 1))
        self.mlp = torch.nn.Sequential(*layers)
        for name, p in self.mlp.named_parameters():  # ImageReward's MLP init (overwritten by the checkpoint)
            torch.nn.init.normal_(p, 0.0, 1.0 / (cfg.text_width + 1)) if name.endswith("weight") else torch.nn.init.zeros_(p)

    def raw_reward(self, pixel_values, input_ids, attention_mask):
        """The MLP output on the text encoder's [CLS] state, before normalisation, ``(N,)``."""
        image_embeds = self.vision(pixel_values=pixel_values).last_hidden_state
        image_atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
        out = self.text(input_ids=input_ids, attention_mask=attention_mask, encoder_hidden_states=image_embeds,
                        encoder_attention_mask=image_atts, return_dict=True)
        return self.mlp(out.last_hidden_state[:, 0, :].float()).squeeze(-1)

    def forward(self, pixel_values, input_ids, attention_mask):
        return normalise_reward(self.raw_reward(pixel_values, input_ids, attention_mask))


def normalise_reward(raw):
    """Pure: ImageReward's published normalisation ``(raw - 0.16717362830052426) / 1.0333394966054072``."""
    return (raw - REWARD_MEAN) / REWARD_STD


_VISION_BLOCK = {"norm1": "layer_norm1", "attn.qkv": "self_attn.qkv", "attn.proj": "self_attn.projection",
                 "norm2": "layer_norm2", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
_VISION_TOP = {"cls_token": "vision.embeddings.class_embedding", "pos_embed": "vision.embeddings.position_embedding",
               "patch_embed.proj.weight": "vision.embeddings.patch_embedding.weight",
               "patch_embed.proj.bias": "vision.embeddings.patch_embedding.bias",
               "norm.weight": "vision.post_layernorm.weight", "norm.bias": "vision.post_layernorm.bias"}


def map_key(name: str) -> str | None:
    """In-tree parameter name of an ``ImageReward.pt`` name; None for one the reward does not use
    (:data:`UNUSED`); raises ``KeyError`` for a name of no known part."""
    if UNUSED.search(name):
        return None
    if name.startswith("blip.visual_encoder."):
        rest = name[len("blip.visual_encoder."):]
        if rest in _VISION_TOP:
            return _VISION_TOP[rest]
        m = re.fullmatch(r"blocks\.(\d+)\.(.+)\.(weight|bias)", rest)
        if m and m.group(2) in _VISION_BLOCK:
            return f"vision.encoder.layers.{m.group(1)}.{_VISION_BLOCK[m.group(2)]}.{m.group(3)}"
    elif name.startswith("blip.text_encoder."):  # transformers' BlipTextModel keeps BLIP's MED names
        return "text." + name[len("blip.text_encoder."):]
    elif name.startswith("mlp.layers."):
        return "mlp." + name[len("mlp.layers."):]
    raise KeyError(name)


def map_checkpoint(state: dict[str, Any]) -> tuple[dict[str, Any], list[str], list[str]]:
    """``(in-tree state dict, unused names, unknown names)`` of an ``ImageReward.pt`` state dict."""
    mapped, unused, unknown = {}, [], []
    for k, v in state.items():
        try:
            new = map_key(k)
        except KeyError:
            unknown.append(k)
            continue
        if new is None:
            unused.append(k)
        else:
            mapped[new] = v
    return mapped, unused, unknown


def unmap_key(name: str) -> str:
    """Inverse of :func:`map_key` (in-tree name -> ``ImageReward.pt`` name); writes stand-ins."""
    for old, new in _VISION_TOP.items():
        if name == new:
            return "blip.visual_encoder." + old
    m = re.fullmatch(r"vision\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)", name)
    if m:
        old = {v: k for k, v in _VISION_BLOCK.items()}[m.group(2)]
        return f"blip.visual_encoder.blocks.{m.group(1)}.{old}.{m.group(3)}"
    if name.startswith("text."):
        return "blip.text_encoder." + name[len("text."):]
    if name.startswith("mlp."):
        return "mlp.layers." + name[len("mlp."):]
    raise KeyError(name)
