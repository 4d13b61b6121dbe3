"""CLIP-IQA (Wang, Chan & Loy, "Exploring CLIP for Assessing the Look and Feel of Images", AAAI 2023).

No-reference quality from one antonym prompt pair. Per image (range [0, 1], higher is better)::

    CLIPIQA = mean over pairs p of softmax(100 * [cos(f(x), t(pos_p)), cos(f(x), t(neg_p))])[pos]

* ``f``: the image tower of OpenAI's CLIP RN50 (the paper's backbone), with the positional
  embedding of its attention pool left out, so an image of any size >= 32 px is scored at its
  native resolution (paper, Sec. 3.1; IceClear/CLIP-IQA and pyiqa's ``clipiqa`` arch do the same);
* ``t``: CLIP's text tower on the prompts, tokenized with CLIP's BPE (77 tokens);
* ``100``: the logit scale of OpenAI's CLIP (``exp(logit_scale)``, trained up to its cap of 100);
  :data:`LOGIT_SCALE` is used whatever the checkpoint holds (recorded in ``details``);
* prompts (``clipiqa_prompts``): ``photo`` = the paper's ``("Good photo.", "Bad photo.")``
  (default); ``pyiqa`` = pyiqa's five-pair ensemble (good/bad image, sharp/blurry image, sharp/
  blurry edges, high/low resolution image, noise-free/noisy image).

Preprocessing (:func:`preprocess`): every image becomes float RGB in [0, 1] through
:func:`qbench.metrics.common.to_unit_float_array` (uint8 / 255; floats must already lie in [0, 1],
else a :class:`ConfigError`; never guessed from the values), then ``(x - mean) / std`` with
OpenAI's CLIP mean/std; no resize and no crop (pyiqa's ``clipiqa`` behaves the same). The range
matters: Q-Sched's calibration code (enyac-group/q-sched, ``src/qsched_optimize.py``) hands uint8
tensors (``pil_to_tensor``, 0..255) to torchmetrics' ``CLIPImageQualityAssessment``, whose
``data_range`` defaults to 1, i.e. images 255x over range; qbench does not copy that.

Implementations (``clipiqa_impl``):

* ``qbench`` (default): the above, written here on open_clip's CLIP modules (no pyiqa). The
  backbone (``clipiqa_backbone``) is an OpenAI ResNet CLIP name (``RN50``; OpenAI's TorchScript
  archive, fetched into torch's hub cache ``clip/`` when online) or a local file: a state dict in
  OpenAI's layout (``torch.save``'d, read with ``weights_only=True``, or safetensors) or one of
  OpenAI's own archives, opened only if its SHA-256 is one OpenAI publishes (in the download URLs
  open_clip lists), and only to read its tensors. The architecture is read off the tensors' shapes
  (as OpenAI's ``build_model`` does), loaded in float32, every key checked (``strict``).
* ``pyiqa``: pyiqa's own ``clipiqa`` network on the same weights (needs ``pip install
  'qbench[pyiqa]'``; :mod:`qbench.metrics.clipiqa_pyiqa`), for cross-checks and ViT backbones.
* ``open_clip``: the formula on the open_clip model of ``clip_model`` / ``clip_pretrained`` with
  its eval preprocessing (resize + centre crop) and its own logit scale: the toy world's default.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from qbench.api import MetricContext
from qbench.errors import ConfigError
from qbench.metrics import common
from qbench.metrics.base import PerImageMetric
from qbench.metrics.clip_models import build_resnet_clip, openai_resnet_urls, read_backbone

PROMPT_SETS: dict[str, tuple[tuple[str, str], ...]] = {
    "photo": (("Good photo.", "Bad photo."),),
    "pyiqa": (
        ("Good image", "bad image"),
        ("Sharp image", "blurry image"),
        ("sharp edges", "blurry edges"),
        ("High resolution image", "low resolution image"),
        ("Noise-free image", "noisy image"),
    ),
}
IMPLS = ("qbench", "pyiqa", "open_clip")
DEFAULT_BACKBONE = "RN50"
#: exp(logit_scale) of OpenAI's CLIP checkpoints (the training cap), as CLIP-IQA uses it
LOGIT_SCALE = 100.0
#: OpenAI CLIP's normalisation (openai/CLIP ``clip/clip.py`` ``_transform``), RGB
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
#: a ResNet CLIP downsamples 32x; a smaller image leaves its attention pool nothing to pool
MIN_SIDE = 32
FORMULA = "mean over antonym prompt pairs of softmax(100 * [cos(img, pos), cos(img, neg)])[pos]"


def clipiqa_from_logits(logits) -> np.ndarray:
    """Pure function: logits ``(N, 2P)`` ordered (pos, neg) per pair -> ``(N,)`` float64 scores in [0, 1].

    Raises ``ValueError`` for any other shape."""
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2 or z.shape[1] % 2:
        raise ValueError(f"expected logits of shape (N, 2P), got {z.shape}")
    z = z.reshape(z.shape[0], -1, 2)
    z = z - z.max(axis=-1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=-1, keepdims=True)
    return p[..., 0].mean(axis=1)


def preprocess(x):
    """Pure function: float tensor ``(N, 3, H, W)`` in [0, 1] -> ``(x - mean) / std`` (OpenAI CLIP's
    statistics), same shape and dtype; no resize, no crop."""
    import torch

    mean = torch.tensor(OPENAI_CLIP_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_CLIP_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def attention_pool_without_position(pool, x):
    """CLIP's attention pool (open_clip ``AttentionPool2d``) minus its positional embedding.

    ``x``: ``(N, C, H, W)`` features of the last ResNet stage -> ``(N, output_dim)``: multi-head
    attention of the mean token over ``[mean token, H*W tokens]`` with the pool's q/k/v/c
    projections (CLIP-IQA, Sec. 3.1: no positional embedding, so any H, W works).
    """
    import torch
    import torch.nn.functional as F

    tokens = x.flatten(2).permute(2, 0, 1)  # (HW, N, C)
    tokens = torch.cat([tokens.mean(dim=0, keepdim=True), tokens], dim=0)
    out, _ = F.multi_head_attention_forward(
        query=tokens[:1], key=tokens, value=tokens, embed_dim_to_check=tokens.shape[-1], num_heads=pool.num_heads,
        q_proj_weight=pool.q_proj.weight, k_proj_weight=pool.k_proj.weight, v_proj_weight=pool.v_proj.weight,
        in_proj_weight=None, in_proj_bias=torch.cat([pool.q_proj.bias, pool.k_proj.bias, pool.v_proj.bias]),
        bias_k=None, bias_v=None, add_zero_attn=False, dropout_p=0.0,
        out_proj_weight=pool.c_proj.weight, out_proj_bias=pool.c_proj.bias,
        use_separate_proj_weight=True, training=False, need_weights=False,
    )
    return out[0]


def _prompt_set(name: str) -> tuple[tuple[str, str], ...]:
    if name not in PROMPT_SETS:
        raise ConfigError(f"unknown clipiqa_prompts {name!r}; expected one of {', '.join(PROMPT_SETS)}")
    return PROMPT_SETS[name]


def resolve_backbone(ctx: MetricContext) -> tuple[str, dict[str, Any]]:
    """(local path, provenance) of the CLIP-IQA backbone (``qbench`` and ``pyiqa`` implementations).

    Raises :class:`ConfigError` for a name that is neither a file nor an OpenAI ResNet CLIP and
    :class:`MissingWeightsError` (naming ``clipiqa_backbone``) offline without the file."""
    given = common.opt(ctx, "clipiqa_backbone")
    if given is None and common.opt_bool(ctx, "standin"):
        from qbench.metrics import standins

        path = standins.clipiqa_backbone(standins.standin_dir(ctx))
        return path, common.weights_provenance(path, "qbench stand-in (metric option standin)")
    given = str(given or DEFAULT_BACKBONE)
    if os.path.isfile(os.path.expanduser(given)):
        path = os.path.expanduser(given)
        return path, common.weights_provenance(path, "local file (metric option clipiqa_backbone)")
    urls = openai_resnet_urls()
    if given not in urls:
        raise ConfigError(f"clipiqa_backbone {given!r} is neither a file nor an OpenAI ResNet CLIP name ({', '.join(urls)})")
    path = common.fetch_weights(urls[given], f"CLIP-IQA backbone {given}", "clipiqa_backbone", subdir="clip")
    return path, {**common.weights_provenance(path, urls[given]), "backbone": given}


_NETS: dict[tuple[str, str], Any] = {}


def _impl(ctx: MetricContext) -> str:
    toy = (ctx.model_family or "").startswith("toy")  # toy world: its own CLIP via open_clip
    impl = str(common.opt(ctx, "clipiqa_impl", "open_clip" if toy else "qbench"))
    if impl not in IMPLS:
        raise ConfigError(f"unknown clipiqa_impl {impl!r}; expected one of {', '.join(IMPLS)}")
    return impl


def preflight_clipiqa(ctx: MetricContext) -> None:
    """The checks of :class:`CLIPIQAScorer` without building a network."""
    _prompt_set(str(common.opt(ctx, "clipiqa_prompts", "photo")))
    impl = _impl(ctx)
    if impl == "pyiqa":
        from qbench.metrics.clipiqa_pyiqa import require_pyiqa

        require_pyiqa("-M clipiqa_impl=pyiqa", clip=True)
    if impl in ("qbench", "pyiqa"):
        resolve_backbone(ctx)
    else:
        from qbench.metrics.clip_models import preflight_clip

        preflight_clip(ctx)


def _clipiqa_options() -> tuple:
    from qbench.metrics.clip_models import CLIP_OPTIONS
    from qbench.options import Opt

    return (
        Opt("clipiqa_backbone", "str", None, "CLIP-IQA backbone: a local file (OpenAI-layout state dict or OpenAI's TorchScript archive) or an OpenAI ResNet CLIP name (RN50)", path=True),
        Opt("clipiqa_prompts", "str", None, "antonym prompt set", choices=tuple(PROMPT_SETS)),
        Opt("clipiqa_impl", "str", None, "implementation (qbench; pyiqa needs qbench[pyiqa]; open_clip for the toy world)", choices=tuple(IMPLS)),
    ) + CLIP_OPTIONS


class CLIPIQAScorer:
    """Reusable scorer: ``score(images) -> np.ndarray`` (float64, one per image) of CLIP-IQA in [0, 1].

    ``images``: PIL images, uint8 arrays/tensors or float arrays/tensors in [0, 1], HWC or CHW."""

    def __init__(self, ctx: MetricContext):
        self.impl = _impl(ctx)
        self.prompts_name = str(common.opt(ctx, "clipiqa_prompts", "photo"))
        self.prompts = _prompt_set(self.prompts_name)
        self.device = common.resolve_device(ctx.device)
        self.batch_size = common.opt_int(ctx, "metric_batch_size", 16)
        self.details: dict[str, Any] = {
            "impl": self.impl,
            "prompts": [list(p) for p in self.prompts],
            "input_range": "uint8 /255 or float in [0,1] (checked), fed as float [0,1]",
        }
        if self.impl == "qbench":
            self._init_qbench(ctx)
        elif self.impl == "pyiqa":
            from qbench.metrics.clipiqa_pyiqa import PyiqaCLIPIQA

            self._pyiqa = PyiqaCLIPIQA(ctx, [t for pair in self.prompts for t in pair], self.device, resolve_backbone(ctx))
            self.details.update(self._pyiqa.details)
        else:
            self._init_open_clip(ctx)

    # -- qbench (in-tree) ------------------------------------------------------------------------
    def _init_qbench(self, ctx: MetricContext) -> None:
        import open_clip
        import torch

        path, prov = resolve_backbone(ctx)
        key = (os.path.realpath(path), self.device)
        if key not in _NETS:
            state, how = read_backbone(path)
            scale = float(state["logit_scale"].float().exp()) if "logit_scale" in state else None
            model, cfg = build_resnet_clip(state)
            _NETS[key] = (model.to(self.device), cfg, how, scale)
        self._model, cfg, how, ckpt_scale = _NETS[key]
        flat = [t for pair in self.prompts for t in pair]
        with torch.inference_mode():
            tokens = open_clip.tokenize(flat, context_length=cfg["context_length"]).to(self.device)
            self._text = torch.nn.functional.normalize(self._model.encode_text(tokens).float(), dim=-1)
        self.details.update(
            network=f"OpenAI ResNet CLIP (layers {list(cfg['vision_layers'])}, width {cfg['vision_width']}, embed {cfg['embed_dim']}) "
                    "on open_clip modules, attention pool without positional embedding",
            preprocess="no resize, no crop; (x - OpenAI CLIP mean) / std on float [0,1] RGB",
            logit_scale=LOGIT_SCALE, checkpoint_logit_scale=ckpt_scale,
            versions=common.versions("torch", "open_clip_torch"),
        )
        common.merge_provenance(self.details, "clipiqa_backbone", {**prov, "read_as": how})

    def image_embeddings(self, x):
        """``(N, 3, H, W)`` float [0, 1] tensor -> ``(N, D)`` L2-normalised image embeddings (qbench impl)."""
        import torch

        visual = self._model.visual
        h = visual.stem(preprocess(x))
        h = visual.layer4(visual.layer3(visual.layer2(visual.layer1(h))))
        return torch.nn.functional.normalize(attention_pool_without_position(visual.attnpool, h).float(), dim=-1)

    def _by_size(self, images: Sequence[Any], score_chunk) -> np.ndarray:
        """Scores images grouped by size (native resolution: no resize), ``batch_size`` at a time."""
        import torch

        arrays = [common.to_unit_float_array(im) for im in images]
        small = [a.shape[:2] for a in arrays if min(a.shape[:2]) < MIN_SIDE]
        if small:
            raise ConfigError(f"CLIP-IQA needs images of at least {MIN_SIDE}x{MIN_SIDE} px (its ResNet downsamples 32x), got {small[0][0]}x{small[0][1]}")
        out = np.zeros(len(arrays))
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, a in enumerate(arrays):
            groups.setdefault(a.shape, []).append(i)
        with torch.inference_mode():
            for idx in groups.values():
                for j in range(0, len(idx), self.batch_size):
                    chunk = idx[j : j + self.batch_size]
                    x = torch.from_numpy(np.stack([arrays[i] for i in chunk])).permute(0, 3, 1, 2).contiguous().to(self.device)
                    out[chunk] = score_chunk(x)
        return out

    def _score_qbench(self, images: Sequence[Any]) -> np.ndarray:
        return self._by_size(images, lambda x: clipiqa_from_logits((LOGIT_SCALE * self.image_embeddings(x) @ self._text.T).cpu().numpy()))

    # -- open_clip ------------------------------------------------------------------------------
    def _init_open_clip(self, ctx: MetricContext) -> None:
        import torch

        from qbench.metrics.clip_models import clip_details, load_for

        self._clip = load_for(ctx)
        flat = [t for pair in self.prompts for t in pair]
        with torch.inference_mode():
            t = self._clip.model.encode_text(self._clip.tokenizer(flat).to(self._clip.device)).float()
            self._text = torch.nn.functional.normalize(t, dim=-1)
            self._scale = float(self._clip.model.logit_scale.exp())
        self.details.update(
            network=f"open_clip {self._clip.name}",
            preprocess="open_clip eval transform of the model (resize, centre crop, normalise)",
            logit_scale=self._scale,
        )
        self.details.update(clip_details(self._clip))

    def _score_open_clip(self, images: Sequence[Any]) -> np.ndarray:
        import torch
        from PIL import Image

        out = []
        with torch.inference_mode():
            for i in range(0, len(images), self.batch_size):
                pil = [Image.fromarray(common.to_uint8_array(im)) for im in images[i : i + self.batch_size]]
                x = torch.stack([self._clip.preprocess(p) for p in pil]).to(self._clip.device)
                e = torch.nn.functional.normalize(self._clip.model.encode_image(x).float(), dim=-1)
                out.append(clipiqa_from_logits((self._scale * e @ self._text.T).cpu().numpy()))
        return np.concatenate(out)

    def score(self, images: Sequence[Any]) -> np.ndarray:
        if not len(images):
            return np.zeros(0)
        if self.impl == "qbench":
            return self._score_qbench(images)
        if self.impl == "pyiqa":
            return self._by_size(images, lambda x: self._pyiqa.score_tensor(x))
        return self._score_open_clip(images)

    def describe(self) -> dict[str, Any]:
        return dict(self.details)


class CLIPIQA(PerImageMetric):
    name: ClassVar[str] = "clipiqa"
    description: ClassVar[str] = 'CLIP-IQA no-reference quality in [0,1] ("Good photo."/"Bad photo."), in-tree RN50 (pyiqa or open_clip by option)'
    higher_is_better: ClassVar[bool] = True
    formula: ClassVar[str] = FORMULA
    OPTIONS = _clipiqa_options()

    def __init__(self, ctx: MetricContext):
        super().__init__(ctx)
        self.scorer = CLIPIQAScorer(ctx)

    @classmethod
    def preflight(cls, ctx: MetricContext, prompts) -> None:
        preflight_clipiqa(ctx)

    def score_batch(self, images, prompts, references=None) -> np.ndarray:
        return self.scorer.score(images)

    def describe(self) -> dict[str, Any]:
        return {**self.scorer.describe(), "range": "[0, 1]"}
