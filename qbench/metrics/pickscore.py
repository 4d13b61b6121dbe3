"""PickScore (Kirstain et al., "Pick-a-Pic", arXiv:2305.01569): a CLIP-H fine-tuned on Pick-a-Pic
human preferences. Per image ``i`` with prompt ``t_i``::

    PickScore_i = exp(logit_scale) * cos(E_img(x_i), E_txt(t_i))

Source: the model card of ``yuvalkirstain/PickScore_v1`` and yuvalkirstain/PickScore's inference
code: transformers ``AutoModel`` (a ``CLIPModel``) from ``yuvalkirstain/PickScore_v1``, inputs
from the ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K`` processor (images: resize shortest side 224
bicubic, centre crop 224, OpenAI CLIP mean/std; prompts: CLIP BPE, truncated at 77 tokens), then
``model.logit_scale.exp() * text_embs @ image_embs.T`` on L2-normalised features; the card's
``calc_probs`` softmaxes those scores over the candidate images of one prompt, qbench keeps the
score itself, one per (image, own prompt); ``exp(logit_scale)`` is the checkpoint's own (CLIP
training caps it at 100) and is recorded in ``details``. (Q-Sched's ``src/metrics/pickscore.py`` calls
``calc_probs(captions, images)`` with all captions at once and keeps row 0, i.e. scores every image
against the first caption; qbench does not copy that.)

Options: ``-M pickscore_model=`` a hub id or a local folder (``config.json`` + weights, as
``save_pretrained`` writes), ``-M pickscore_processor=`` the same for the processor. Shapes:
images PIL / HxWx3 uint8 / float in [0, 1]; scores a float64 ``(N,)`` array.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from qbench.api import MetricContext
from qbench.errors import ConfigError, MissingWeightsError, QBenchError
from qbench.metrics import common
from qbench.metrics.preference import ScorerMetric, paired_cosine

PICK_MODEL = "yuvalkirstain/PickScore_v1"
PICK_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
#: a processor folder written by transformers 5 holds processor_config.json instead
PROC_FILES = ("processor_config.json",)
FORMULA = "PickScore = exp(logit_scale) * cos(E_img, E_txt) per image (PickScore_v1 CLIPModel, model card), mean over images"


def pickscore_from_features(image_emb, text_emb, logit_scale: float) -> np.ndarray:
    """Pure function: ``exp(logit_scale) * cos`` row-wise for paired ``(N, d)`` embeddings.

    ``logit_scale`` is the model's stored (log) parameter; returns ``(N,)`` float64.
    """
    return float(np.exp(logit_scale)) * paired_cosine(image_emb, text_emb)


def _options() -> tuple:
    from qbench.options import Opt

    return (
        Opt("pickscore_model", "str", None, f"hub id or local folder of the PickScore CLIPModel (default {PICK_MODEL})"),
        Opt("pickscore_processor", "str", None, f"hub id or local folder of its processor (default {PICK_PROCESSOR})"),
    )


PICK_OPTIONS = _options()


def pickscore_spec(ctx: MetricContext) -> tuple[str, str, str]:
    """``(model folder or hub id, processor folder or hub id, origin)``."""
    model, proc = common.opt(ctx, "pickscore_model"), common.opt(ctx, "pickscore_processor")
    if model is None and proc is None and common.opt_bool(ctx, "standin"):
        from qbench.metrics import standins

        model, proc = standins.pickscore_model(standins.standin_dir(ctx))
        return model, proc, "qbench stand-in (metric option standin)"
    origin = "metric option pickscore_model" if model is not None else f"hub {PICK_MODEL}"
    return str(model or PICK_MODEL), str(proc or PICK_PROCESSOR), origin


def _check_source(source: str, marker: str, what: str, option: str, also: tuple[str, ...] = ()) -> None:
    """A local folder must hold ``marker`` (or one of ``also``); a hub id must have ``marker``
    cached when offline (one line else)."""
    import re

    path = os.path.expanduser(source)
    if os.path.exists(path):
        if not any(os.path.isfile(os.path.join(path, m)) for m in (marker, *also)):
            raise ConfigError(f"{what}: {path} is not a folder holding {marker} (option {option}; a save_pretrained folder)")
        return
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", source):
        raise MissingWeightsError(f"{what}: folder not found: {path} (option {option})")
    from qbench.metrics.preference import hub_file

    try:
        hub_file(source, marker, what, option)
    except MissingWeightsError:
        raise MissingWeightsError(
            f"{what} files are not cached ({'offline' if common.is_offline() else 'download failed'}); download the hub repository "
            f"https://huggingface.co/{source} into a folder (save_pretrained layout) and pass -M {option}=FOLDER"
        ) from None


def preflight_pickscore(ctx: MetricContext) -> None:
    from qbench.errors import gather

    model, proc, _ = pickscore_spec(ctx)
    gather(lambda: _check_source(model, "config.json", "PickScore model", "pickscore_model"),
           lambda: _check_source(proc, "preprocessor_config.json", "PickScore processor", "pickscore_processor", PROC_FILES))


@dataclass
class LoadedPick:
    model: Any
    processor: Any
    device: str
    info: dict[str, Any] = field(default_factory=dict)


_CACHE: dict[tuple[str, str, str], LoadedPick] = {}


def load_pickscore(model: str, processor: str, device: str = "cpu", origin: str = "") -> LoadedPick:
    """Build (once per process) the CLIPModel and processor; missing files are one clear line."""
    from transformers import CLIPModel, CLIPProcessor

    device = common.resolve_device(device)
    key = (model, processor, device)
    if key in _CACHE:
        return _CACHE[key]
    _check_source(model, "config.json", "PickScore model", "pickscore_model")
    _check_source(processor, "preprocessor_config.json", "PickScore processor", "pickscore_processor", PROC_FILES)
    offline = common.is_offline()
    try:
        net = CLIPModel.from_pretrained(os.path.expanduser(model), local_files_only=offline)
        proc = CLIPProcessor.from_pretrained(os.path.expanduser(processor), local_files_only=offline)
    except OSError as e:  # weights file absent from the cache / folder
        raise MissingWeightsError(f"PickScore: {common._first_line(e)} (options pickscore_model / pickscore_processor)") from None
    except (ValueError, RuntimeError) as e:  # unreadable or unsafe files
        raise QBenchError(f"PickScore: cannot load {model} ({type(e).__name__}: {common._first_line(e)})") from None
    info = {"model": model, "processor": processor, "source": origin}
    sidecar = os.path.join(os.path.expanduser(model), "model.safetensors")
    if os.path.isfile(sidecar):
        info.update(common.weights_provenance(sidecar, origin))
    loaded = LoadedPick(net.to(device).eval(), proc, device, info)
    _CACHE[key] = loaded
    return loaded


def _embeds(out: Any) -> Any:
    """``get_*_features`` returns the projected embeddings (transformers 4) or an output whose
    ``pooler_output`` holds them (transformers 5)."""
    import torch

    return out if isinstance(out, torch.Tensor) else out.pooler_output


class PickScorer:
    """Reusable scorer: ``score(images, texts) -> (N,)`` float64 PickScores."""

    def __init__(self, ctx: MetricContext):
        model, proc, origin = pickscore_spec(ctx)
        self.pick = load_pickscore(model, proc, ctx.device, origin)
        self.batch_size = common.opt_int(ctx, "metric_batch_size", 16)

    def embed(self, images: Sequence[Any], texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        import torch
        from PIL import Image

        img, txt = [], []
        m, proc, dev = self.pick.model, self.pick.processor, self.pick.device
        with torch.inference_mode():
            for i in range(0, len(images), self.batch_size):
                pil = [Image.fromarray(common.to_uint8_array(im)) for im in images[i : i + self.batch_size]]
                x = proc(images=pil, return_tensors="pt")["pixel_values"].to(dev)
                img.append(_embeds(m.get_image_features(pixel_values=x)).float().cpu().numpy())
                t = proc(text=list(texts[i : i + self.batch_size]), padding=True, truncation=True, max_length=77, return_tensors="pt")
                txt.append(_embeds(m.get_text_features(input_ids=t["input_ids"].to(dev), attention_mask=t["attention_mask"].to(dev))).float().cpu().numpy())
        return np.concatenate(img), np.concatenate(txt)

    def score(self, images: Sequence[Any], texts: Sequence[str]) -> np.ndarray:
        if len(images) != len(texts):
            raise ConfigError(f"PickScore: {len(images)} images but {len(texts)} texts")
        if not images:
            return np.zeros(0)
        a, b = self.embed(images, texts)
        return pickscore_from_features(a, b, float(self.pick.model.logit_scale.item()))

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"pickscore_model": self.pick.info["model"], "pickscore_processor": self.pick.info["processor"],
                             "logit_scale_exp": float(np.exp(self.pick.model.logit_scale.item())),
                             "versions": common.versions("torch", "transformers")}
        common.merge_provenance(d, "pickscore_weights", self.pick.info)
        return d


class PickScore(ScorerMetric):
    name: ClassVar[str] = "pickscore"
    description: ClassVar[str] = "PickScore: exp(logit_scale)*cos of the PickScore_v1 CLIP-H (transformers) embeddings"
    higher_is_better: ClassVar[bool] = True
    formula: ClassVar[str] = FORMULA
    OPTIONS = PICK_OPTIONS
    SCORER = PickScorer
    RANGE = "[-exp(logit_scale), exp(logit_scale)] (~[-100, 100])"

    @classmethod
    def preflight(cls, ctx: MetricContext, prompts) -> None:
        preflight_pickscore(ctx)
