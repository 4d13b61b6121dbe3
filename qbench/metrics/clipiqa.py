"""CLIP-IQA (Wang, Chan & Loy, AAAI 2023): no-reference quality from antonym prompts.

Per image: ``mean over prompt pairs of softmax(s * [cos(img, good), cos(img, bad)])[good]`` with
``s = exp(logit_scale)`` of the CLIP model; range [0, 1], higher is better.

Implementation (``clipiqa_impl``):

* ``pyiqa`` (default): pyiqa's ``clipiqa`` network (its default backbone is OpenAI CLIP RN50;
  images at their native resolution, CLIP mean/std, no positional embedding in the attention
  pool) with the paper's antonym pair ``"Good photo." / "Bad photo."`` (``clipiqa_prompts=photo``,
  default) or pyiqa's own five-pair ensemble (``clipiqa_prompts=pyiqa``). Backbone
  (``clipiqa_backbone``): an OpenAI CLIP name (``RN50``; downloaded into torch's hub cache
  ``clip/`` when online) or a local file - a state dict in OpenAI's layout (``torch.save``'d,
  read with ``weights_only=True``, or safetensors), or one of OpenAI's own TorchScript archives
  (``RN50.pt``). A TorchScript archive is a program, so only those whose SHA-256 OpenAI publishes
  (in their download URLs, as listed by pyiqa) are opened, and only to read their tensors; any
  other archive is refused. pyiqa's CLIP is rebuilt from the tensors (pyiqa never reads the file).
* ``open_clip``: the same formula on the open_clip model of ``clip_model`` / ``clip_pretrained``
  (shared with CLIP score), through that model's eval preprocessing (resize + centre crop).

Input range: every image is turned into float [0, 1] by :func:`qbench.metrics.common.to_unit_float_array`
(uint8 / 255; floats must already lie in [0, 1], else an error) - never guessed from the values.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from qbench.api import MetricContext
from qbench.errors import ConfigError, QBenchError
from qbench.metrics import common
from qbench.metrics.base import PerImageMetric

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
IMPLS = ("pyiqa", "open_clip")
DEFAULT_BACKBONE = "RN50"
FORMULA = "mean over antonym prompt pairs of softmax(exp(logit_scale) * [cos(img, pos), cos(img, neg)])[pos]"


def clipiqa_from_logits(logits) -> np.ndarray:
    """Pure function: logits ``(N, 2P)`` ordered (pos, neg) per pair -> ``(N,)`` scores in [0, 1]."""
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2 or z.shape[1] % 2:
        raise ValueError(f"expected logits of shape (N, 2P), got {z.shape}")
    z = z.reshape(z.shape[0], -1, 2)
    z = z - z.max(axis=-1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=-1, keepdims=True)
    return p[..., 0].mean(axis=1)


def _prompt_set(name: str) -> tuple[tuple[str, str], ...]:
    if name not in PROMPT_SETS:
        raise ConfigError(f"unknown clipiqa_prompts {name!r}; expected one of {', '.join(PROMPT_SETS)}")
    return PROMPT_SETS[name]


def resolve_backbone(ctx: MetricContext) -> tuple[str, dict[str, Any]]:
    """(local path, provenance) of the pyiqa CLIP-IQA backbone."""
    given = common.opt(ctx, "clipiqa_backbone")
    if given is None and common.opt_bool(ctx, "standin"):
        from qbench.metrics import standins

        path = standins.clipiqa_backbone(standins.standin_dir(ctx))
        return path, common.weights_provenance(path, "qbench stand-in (metric option standin)")
    given = str(given or DEFAULT_BACKBONE)
    if os.path.isfile(os.path.expanduser(given)):
        path = os.path.expanduser(given)
        return path, common.weights_provenance(path, "local file (metric option clipiqa_backbone)")
    from pyiqa.archs.clip_model import _MODELS

    if given not in _MODELS:
        raise ConfigError(f"clipiqa_backbone {given!r} is neither a file nor an OpenAI CLIP name ({', '.join(_MODELS)})")
    path = common.fetch_weights(_MODELS[given], f"CLIP-IQA backbone {given}", "clipiqa_backbone", subdir="clip")
    return path, {**common.weights_provenance(path, _MODELS[given]), "backbone": given}


def openai_archives() -> dict[str, str]:
    """SHA-256 -> name of OpenAI's published CLIP TorchScript archives (the hash is the second
    to last part of each download URL in pyiqa's ``_MODELS``, which OpenAI's ``clip.load`` checks)."""
    from pyiqa.archs.clip_model import _MODELS

    return {url.rstrip("/").split("/")[-2]: name for name, url in _MODELS.items()}


def read_backbone(path: str) -> tuple[dict[str, Any], str]:
    """(state dict in OpenAI's CLIP layout, how it was read) from a backbone file, running no code
    from it: a state dict through :func:`common.load_tensor_file`; a TorchScript archive only if
    its SHA-256 is one of :func:`openai_archives` (else :class:`QBenchError`)."""
    if common.is_torchscript(path):
        sha = common.file_sha256(path)
        known = openai_archives()
        if sha not in known:
            raise QBenchError(
                f"CLIP-IQA backbone: {path} is a TorchScript archive (a program) and not one of OpenAI's published CLIP archives "
                f"(sha256 {sha[:16]}...); qbench runs no other programs. Pass a state dict instead: "
                "torch.save(torch.jit.load(f).state_dict(), 'backbone.pt') (option clipiqa_backbone)"
            )
        import torch

        return torch.jit.load(path, map_location="cpu").state_dict(), f"OpenAI TorchScript archive {known[sha]} (sha256 verified), tensors only"
    return common.load_tensor_file(path, "CLIP-IQA backbone", "clipiqa_backbone"), "state dict, torch.load(weights_only=True) / safetensors"


_PYIQA: dict[tuple[str, str, str], Any] = {}


def _impl(ctx: MetricContext) -> str:
    toy = (ctx.model_family or "").startswith("toy")  # toy world: its own CLIP via open_clip
    impl = str(common.opt(ctx, "clipiqa_impl", "open_clip" if toy else "pyiqa"))
    if impl not in IMPLS:
        raise ConfigError(f"unknown clipiqa_impl {impl!r}; expected one of {', '.join(IMPLS)}")
    return impl


def preflight_clipiqa(ctx: MetricContext) -> None:
    """The checks of :class:`CLIPIQAScorer` without building a network."""
    _prompt_set(str(common.opt(ctx, "clipiqa_prompts", "photo")))
    if _impl(ctx) == "pyiqa":
        resolve_backbone(ctx)
    else:
        from qbench.metrics.clip_models import preflight_clip

        preflight_clip(ctx)


def _clipiqa_options() -> tuple:
    from qbench.metrics.clip_models import CLIP_OPTIONS
    from qbench.options import Opt

    return (
        Opt("clipiqa_backbone", "str", None, "pyiqa CLIP-IQA backbone: a local file (TorchScript or OpenAI state dict) or an OpenAI CLIP name", path=True),
        Opt("clipiqa_prompts", "str", None, "antonym prompt set", choices=tuple(PROMPT_SETS)),
        Opt("clipiqa_impl", "str", None, "implementation (pyiqa; open_clip for the toy world)", choices=tuple(IMPLS)),
    ) + CLIP_OPTIONS


class CLIPIQAScorer:
    """Reusable scorer: ``score(images) -> np.ndarray`` of per-image CLIP-IQA in [0, 1]."""

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
        if self.impl == "pyiqa":
            self._init_pyiqa(ctx)
        else:
            self._init_open_clip(ctx)

    # -- pyiqa ----------------------------------------------------------------------------------
    def _init_pyiqa(self, ctx: MetricContext) -> None:
        import torch

        path, prov = resolve_backbone(ctx)
        key = (os.path.realpath(path), self.prompts_name, self.device)
        if key not in _PYIQA:
            from unittest import mock

            import pyiqa
            from pyiqa.archs import clipiqa_arch
            from pyiqa.archs.clip_imports import clip
            from pyiqa.archs.clip_model import build_model

            state, how = read_backbone(path)
            # pyiqa's CLIPIQA calls clip_model.load(backbone, "cpu"), which would open the file itself
            # (torch.jit.load, then torch.load): hand it the CLIP rebuilt from the tensors read above
            with mock.patch.object(clipiqa_arch, "load", lambda name, device="cpu", **kw: build_model(state).to(device).float()):
                metric = pyiqa.create_metric("clipiqa", device=torch.device(self.device), backbone=path)
            flat = [t for pair in self.prompts for t in pair]
            metric.net.prompt_pairs = clip.tokenize(flat)  # pyiqa reads this attribute in forward()
            _PYIQA[key] = (metric, how)
        self._metric, how = _PYIQA[key]
        self.details.update(
            network="pyiqa CLIPIQA (model_type clipiqa, native resolution, pos_embedding=False)",
            preprocess="no resize; (x - OpenAI CLIP mean) / std",
            versions=common.versions("torch", "pyiqa"),
        )
        common.merge_provenance(self.details, "clipiqa_backbone", {**prov, "read_as": how})

    def _score_pyiqa(self, images: Sequence[Any]) -> np.ndarray:
        import torch

        arrays = [common.to_unit_float_array(im) for im in images]
        out = np.zeros(len(arrays))
        by_size: dict[tuple[int, ...], list[int]] = {}
        for i, a in enumerate(arrays):
            by_size.setdefault(a.shape, []).append(i)
        with torch.inference_mode():
            for idx in by_size.values():
                for j in range(0, len(idx), self.batch_size):
                    chunk = idx[j : j + self.batch_size]
                    x = torch.from_numpy(np.stack([arrays[i] for i in chunk])).permute(0, 3, 1, 2).contiguous().to(self.device)
                    out[chunk] = self._metric(x).reshape(-1).double().cpu().numpy()
        return out

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
        return self._score_pyiqa(images) if self.impl == "pyiqa" else self._score_open_clip(images)

    def describe(self) -> dict[str, Any]:
        return dict(self.details)


class CLIPIQA(PerImageMetric):
    name: ClassVar[str] = "clipiqa"
    description: ClassVar[str] = 'CLIP-IQA no-reference quality in [0,1] ("Good photo."/"Bad photo."), pyiqa (RN50) or open_clip'
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
