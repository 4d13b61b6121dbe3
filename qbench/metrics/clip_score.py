"""CLIP score: ``100 * max(cos(image embedding, text embedding), 0)`` per image, mean over images.

The same definition as torchmetrics' ``CLIPScore`` (which transformers 5 breaks), computed with
open_clip: default OpenAI CLIP ViT-L/14 (``clip_model`` / ``clip_pretrained`` options, see
:mod:`qbench.metrics.clip_models`); images go through the model's own eval preprocessing
(resize shortest side, centre crop, CLIP mean/std), prompts through its tokenizer (truncated at
the context length, 77 tokens incl. start/end; ``details["prompt_truncation"]`` says how many
prompts were cut and the longest prompt's token count).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from qbench.api import MetricContext
from qbench.errors import ConfigError
from qbench.metrics import common
from qbench.metrics.base import PerImageMetric
from qbench.metrics.clip_models import CLIP_OPTIONS, LoadedClip, clip_details, load_for, preflight_clip

FORMULA = "100 * max(cos(E_img, E_txt), 0) per image (open_clip embeddings), mean over images"


def clip_score_from_embeddings(image_emb, text_emb) -> np.ndarray:
    """Pure function: ``100 * max(cos, 0)`` row-wise for paired embeddings ``(N, d)``."""
    a = np.asarray(image_emb, dtype=np.float64)
    b = np.asarray(text_emb, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"paired embeddings must have one shape (N, d), got {a.shape} and {b.shape}")
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return 100.0 * np.maximum(cos, 0.0)


def open_clip_token_counts(tokenizer: Any, texts: Sequence[str]) -> list[int] | None:
    """Tokens per text before truncation, start/end tokens included, for open_clip's BPE
    ``SimpleTokenizer`` (``encode`` + 2) or its ``HFTokenizer`` (the wrapped transformers
    tokenizer); None for a tokenizer of another kind."""
    from qbench.models.truncation import hf_token_counts

    if hasattr(tokenizer, "encode") and hasattr(tokenizer, "sot_token_id"):
        return [len(tokenizer.encode(t)) + 2 for t in texts]
    if getattr(tokenizer, "tokenizer", None) is not None:
        return hf_token_counts(tokenizer.tokenizer, texts)
    return None


class CLIPScorer:
    """Reusable scorer: ``score(images, texts) -> np.ndarray`` of per-image CLIP scores."""

    def __init__(self, clip: LoadedClip, batch_size: int = 32):
        self.clip = clip
        self.batch_size = int(batch_size)
        self.token_counts: list[int] | None = []  # per text embedded since reset_counts(); None: unknown

    @classmethod
    def from_context(cls, ctx: MetricContext) -> CLIPScorer:
        return cls(load_for(ctx), common.opt_int(ctx, "metric_batch_size", 32))

    def image_embeddings(self, images: Sequence[Any]) -> np.ndarray:
        import torch
        from PIL import Image

        out = []
        with torch.inference_mode():
            for i in range(0, len(images), self.batch_size):
                pil = [im if isinstance(im, Image.Image) else Image.fromarray(common.to_uint8_array(im)) for im in images[i : i + self.batch_size]]
                x = torch.stack([self.clip.preprocess(im.convert("RGB")) for im in pil]).to(self.clip.device)
                out.append(self.clip.model.encode_image(x).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 0))

    def text_embeddings(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        counts = open_clip_token_counts(self.clip.tokenizer, texts)
        self.token_counts = None if counts is None or self.token_counts is None else self.token_counts + counts
        out = []
        with torch.inference_mode():
            for i in range(0, len(texts), self.batch_size):
                tokens = self.clip.tokenizer(list(texts[i : i + self.batch_size])).to(self.clip.device)
                out.append(self.clip.model.encode_text(tokens).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 0))

    def score(self, images: Sequence[Any], texts: Sequence[str]) -> np.ndarray:
        if len(images) != len(texts):
            raise ConfigError(f"CLIP score: {len(images)} images but {len(texts)} texts")
        if not images:
            return np.zeros(0)
        return clip_score_from_embeddings(self.image_embeddings(images), self.text_embeddings(texts))

    def describe(self) -> dict[str, Any]:
        return {**clip_details(self.clip), "preprocess": "open_clip eval transform of the model (resize, centre crop, normalise)"}

    def truncation(self) -> dict[str, Any]:
        """How many texts embedded since :meth:`reset_counts` exceeded the context length."""
        from qbench.models.truncation import summarize

        limit = int(getattr(self.clip.tokenizer, "context_length", None) or 77)
        if self.token_counts is None:
            return {"limit": limit, "n_truncated": "unknown (tokenizer of another kind)"}
        return {**summarize(self.token_counts, limit), "note": "token counts include the start and end tokens"}

    def reset_counts(self) -> None:
        self.token_counts = []


class CLIPScore(PerImageMetric):
    name: ClassVar[str] = "clip"
    description: ClassVar[str] = "CLIP score 100*max(cos,0) of image and prompt, open_clip (default OpenAI ViT-L/14)"
    higher_is_better: ClassVar[bool] = True
    formula: ClassVar[str] = FORMULA
    OPTIONS = CLIP_OPTIONS

    def __init__(self, ctx: MetricContext):
        super().__init__(ctx)
        self.scorer = CLIPScorer.from_context(ctx)

    @classmethod
    def preflight(cls, ctx: MetricContext, prompts) -> None:
        preflight_clip(ctx)

    def score_batch(self, images, prompts, references=None) -> np.ndarray:
        return self.scorer.score(images, [p.text for p in prompts])

    def describe(self) -> dict[str, Any]:
        return {**self.scorer.describe(), "range": "[0, 100]", "prompt_truncation": self.scorer.truncation()}

    def reset(self) -> None:
        super().reset()
        self.scorer.reset_counts()
