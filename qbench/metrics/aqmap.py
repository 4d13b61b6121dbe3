"""AQ-Map alignment score, the alignment term of Q-Sched's second JAQ variant (:mod:`jaq`).

Source: enyac-group/q-sched ``src/metrics/aqmap.py`` (``evaluate_aqmap``, from Q-Refine), on CLIP
Surgery (Li et al., "CLIP Surgery for Better Explainability", arXiv:2304.05653; xmed-lab/CLIP_Surgery
``clip/clip_surgery_model.py``, ``clip/clip.py``) with OpenAI CLIP ViT-B/16 weights. Per image
``x`` with prompt ``t``:

1. noun parts of ``t`` (:func:`noun_parts`): spaCy ``en_core_web_sm`` noun chunks split the prompt
   into parts, NLTK's English stop words and lone punctuation are dropped from each part, and each
   part keeps its last word tagged NOUN / PROPN (``""`` if none);
2. text features ``T_j``: for each part, the CLIP text embeddings of CLIP Surgery's 85 ImageNet
   prompt templates (``"a bad photo of a {}."``, ...), each L2-normalised, averaged, re-normalised;
   the "redundant" feature ``R`` is the same for the empty string;
3. image tokens ``F`` ``(1 + HW, d)``: CLIP Surgery's forward: the last 6 ViT blocks run two paths
   with the same weights, the original one (CLS token) and the v-v attention one without MLP
   (patch tokens); ``ln_post`` and the projection apply to every token; the image is resized to
   224 x 224 (bicubic, no crop) with OpenAI CLIP mean/std;
4. ``F`` is divided by its norm over the token axis (``dim=1``, as the reference code does), then
   ``s_j = F[CLS] . (T_j - R)`` and ``AQ = mean_j sigmoid(10 * s_j)`` (the reference's
   ``exp(10 s) / (exp(10 s) + 1)``, averaged over parts as Q-Sched's ranking does).

Departures, recorded in ``details``: the reference saves each image as JPEG (PIL default quality
75) and reads it back; qbench does the same by default (``-M aqmap_jpeg=false`` skips it). The
reference runs CLIP in fp16 on CUDA; qbench in float32. Where the reference's parse helper fails,
Q-Sched's calibration silently scores the image 0.0; qbench does not call that (unused) helper.

Needs ``spacy`` with ``en_core_web_sm`` and ``nltk`` with its ``stopwords`` corpus (refused in one
line otherwise); with ``-M standin=true`` a rule-based stand-in parser (:func:`standin_parse`)
replaces both, like every other learned part. Shapes: images PIL / HxWx3 uint8 / float in [0, 1]; scores float64 ``(N,)`` in (0, 1).
"""
from __future__ import annotations

import contextlib
import io
import string
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from qbench.api import MetricContext
from qbench.errors import ConfigError, MissingWeightsError
from qbench.metrics import common

DEFAULT_CLIP = ("ViT-B-16", "openai")
N_SURGERY = 6
TEMPERATURE = 10.0
#: CLIP Surgery's prompt ensemble (the 85 ImageNet templates of its ``encode_text_with_prompt_ensemble``)
_TEMPLATE_BODIES = (
    "a bad photo of a {}.|a photo of many {}.|a sculpture of a {}.|a photo of the hard to see {}.|a low resolution photo of the {}.|"
    "a rendering of a {}.|graffiti of a {}.|a bad photo of the {}.|a cropped photo of the {}.|a tattoo of a {}.|the embroidered {}.|"
    "a photo of a hard to see {}.|a bright photo of a {}.|a photo of a clean {}.|a photo of a dirty {}.|a dark photo of the {}.|"
    "a drawing of a {}.|a photo of my {}.|the plastic {}.|a photo of the cool {}.|a close-up photo of a {}.|"
    "a black and white photo of the {}.|a painting of the {}.|a painting of a {}.|a pixelated photo of the {}.|a sculpture of the {}.|"
    "a bright photo of the {}.|a cropped photo of a {}.|a plastic {}.|a photo of the dirty {}.|a jpeg corrupted photo of a {}.|"
    "a blurry photo of the {}.|a photo of the {}.|a good photo of the {}.|a rendering of the {}.|a {} in a video game.|"
    "a photo of one {}.|a doodle of a {}.|a close-up photo of the {}.|a photo of a {}.|the origami {}.|the {} in a video game.|"
    "a sketch of a {}.|a doodle of the {}.|a origami {}.|a low resolution photo of a {}.|the toy {}.|a rendition of the {}.|"
    "a photo of the clean {}.|a photo of a large {}.|a rendition of a {}.|a photo of a nice {}.|a photo of a weird {}.|"
    "a blurry photo of a {}.|a cartoon {}.|art of a {}.|a sketch of the {}.|a embroidered {}.|a pixelated photo of a {}.|"
    "itap of the {}.|a jpeg corrupted photo of the {}.|a good photo of a {}.|a plushie {}.|a photo of the nice {}.|"
    "a photo of the small {}.|a photo of the weird {}.|the cartoon {}.|art of the {}.|a drawing of the {}.|a photo of the large {}.|"
    "a black and white photo of a {}.|the plushie {}.|a dark photo of a {}.|itap of a {}.|graffiti of the {}.|a toy {}.|"
    "itap of my {}.|a photo of a cool {}.|a photo of a small {}.|a tattoo of the {}.|there is a {} in the scene.|"
    "there is the {} in the scene.|this is a {} in the scene.|this is the {} in the scene.|this is one {} in the scene."
)
TEMPLATES = tuple(_TEMPLATE_BODIES.split("|"))
assert len(TEMPLATES) == 85

#: a parse: (noun chunk texts in order, token text -> coarse POS tag)
Parse = tuple[list[str], dict[str, str]]


# -- text side (pure) -------------------------------------------------------------------------------
def partition(sentence: str, noun_phrases: Sequence[str]) -> list[str]:
    """Split ``sentence`` before each noun phrase after the first (the reference's ``partition``)."""
    if len(noun_phrases) <= 1:
        return [sentence]
    parts, start, search_from = [], 0, 0
    for i, phrase in enumerate(noun_phrases):
        at = sentence.find(phrase, search_from)
        if at == -1:
            raise ConfigError(f"AQ-Map: noun phrase {phrase!r} not found in {sentence!r}")
        if i == 0:
            search_from = at + len(phrase)
        elif i == len(noun_phrases) - 1:
            parts.append(sentence[start:at].strip())
            parts.append(sentence[at:].strip())
        else:
            parts.append(sentence[start:at].strip())
            start, search_from = at, at + len(phrase)
    return parts


def noun_parts(sentence: str, parse: Parse, stopwords: set[str] | frozenset[str]) -> list[str]:
    """The reference's noun parts of ``sentence``: one entry per part, its last NOUN/PROPN word or ``""``."""
    chunks, pos = parse
    out = []
    for part in partition(sentence, chunks):
        kept = [w for w in part.split(" ") if w not in stopwords and w not in string.punctuation]
        last = ""
        for w in kept:
            clean = w.strip(string.punctuation)
            if clean and pos.get(clean) in ("NOUN", "PROPN"):
                last = clean
        out.append(last)
    return out


def aq_from_features(tokens, part_features, redundant) -> np.ndarray:
    """Pure: ``(P,)`` per-part alignment ``sigmoid(10 * F[CLS] . (T_j - R))`` with ``F`` = ``tokens``
    ``(1 + HW, d)`` divided by its norm over the token axis; ``part_features`` ``(P, d)``, ``redundant`` ``(d,)``."""
    f = np.asarray(tokens, dtype=np.float64)
    f = f / np.linalg.norm(f, axis=0, keepdims=True)
    s = (np.asarray(part_features, dtype=np.float64) - np.asarray(redundant, dtype=np.float64)[None]) @ f[0]
    return 1.0 / (1.0 + np.exp(-TEMPERATURE * s))


# -- NLP tools (spaCy parser, NLTK stop words), loaded once ---------------------------------------
_NLP: dict[str, Any] = {}


def spacy_parse(sentence: str) -> Parse:
    """spaCy ``en_core_web_sm``: noun chunks and token -> POS (a later token of the same text wins)."""
    doc = _nlp()(sentence)
    return [c.text for c in doc.noun_chunks], {t.text: t.pos_ for t in doc}


#: the stand-in parser's stop words (``-M standin=true``): articles, prepositions, conjunctions
STANDIN_STOPWORDS = frozenset(["a", "an", "the", "of", "on", "in", "at", "to", "with", "and", "or", "by", "for", "from", "under", "over", "near", "next", "left", "right"])


def standin_parse(sentence: str) -> Parse:
    """A rule-based stand-in for spaCy (``-M standin=true`` only; numbers made with it check
    mechanics): every word outside :data:`STANDIN_STOPWORDS` is a NOUN, a noun chunk is a maximal
    run of such words."""
    words = sentence.split(" ")
    chunks, run = [], []
    for w in words + [""]:
        if w and w.strip(string.punctuation).lower() not in STANDIN_STOPWORDS:
            run.append(w)
        elif run:
            chunks.append(" ".join(run))
            run = []
    pos = {w.strip(string.punctuation): "DET" if w.lower() in STANDIN_STOPWORDS else "NOUN" for w in words if w.strip(string.punctuation)}
    return chunks, pos


def _nlp() -> Any:
    if "spacy" not in _NLP:
        try:
            import spacy

            _NLP["spacy"] = spacy.load("en_core_web_sm")
        except (ImportError, OSError):
            raise MissingWeightsError("AQ-Map needs spaCy's en_core_web_sm: pip install spacy && python -m spacy download en_core_web_sm") from None
    return _NLP["spacy"]


def nltk_stopwords() -> frozenset[str]:
    if "stop" not in _NLP:
        try:
            from nltk.corpus import stopwords

            _NLP["stop"] = frozenset(stopwords.words("english"))
        except (ImportError, LookupError):
            raise MissingWeightsError("AQ-Map needs NLTK's English stop words: pip install nltk && python -m nltk.downloader stopwords") from None
    return _NLP["stop"]


# -- image side ---------------------------------------------------------------------------------------
def _dual_attention(mha: Any, x: Any) -> tuple[Any, Any]:
    """CLIP Surgery's attention on ``x`` ``(B, N, C)`` with ``nn.MultiheadAttention`` weights:
    ``(v-v attention path, original q-k path)``, both through the output projection."""
    import torch.nn.functional as F

    b, n, c = x.shape
    h = mha.num_heads
    q, k, v = F.linear(x, mha.in_proj_weight, mha.in_proj_bias).reshape(b, n, 3, h, c // h).permute(2, 0, 3, 1, 4)
    scale = (c // h) ** -0.5
    ori = ((q @ k.transpose(-2, -1)) * scale).softmax(-1) @ v
    sur = ((v @ v.transpose(-2, -1)) * scale).softmax(-1) @ v

    def out(t):
        return F.linear(t.transpose(1, 2).reshape(b, n, c), mha.out_proj.weight, mha.out_proj.bias)

    return out(sur), out(ori)


def surgery_tokens(visual: Any, x: Any, n_surgery: int = N_SURGERY) -> Any:
    """``(B, 1 + HW, d_out)`` projected tokens of an open_clip ``VisionTransformer`` under CLIP
    Surgery: CLS from the original path, patches from the surgery path of the last ``n_surgery`` blocks."""
    import torch

    x = visual.conv1(x)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    cls = visual.class_embedding.to(x.dtype) + torch.zeros(x.shape[0], 1, x.shape[-1], dtype=x.dtype, device=x.device)
    x = visual.ln_pre(torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype))
    blocks = list(visual.transformer.resblocks)
    batch_first = getattr(visual.transformer, "batch_first", True)
    for blk in blocks[: len(blocks) - n_surgery]:
        x = blk(x) if batch_first else blk(x.transpose(0, 1)).transpose(0, 1)
    x_ori = None
    for blk in blocks[len(blocks) - n_surgery :]:
        res, res_ori = _dual_attention(blk.attn, blk.ln_1(x if x_ori is None else x_ori))
        x_ori = (x if x_ori is None else x_ori) + blk.ls_1(res_ori)
        x_ori = x_ori + blk.ls_2(blk.mlp(blk.ln_2(x_ori)))
        x = x + blk.ls_1(res)  # the surgery path skips the MLP
    x = torch.cat([x_ori[:, :1], x[:, 1:]], dim=1)
    return visual.ln_post(x) @ visual.proj


class AQMapScorer:
    """``score(images, texts) -> (N,)`` AQ-Map. ``parser`` / ``stopwords`` default to spaCy / NLTK."""

    def __init__(self, ctx: MetricContext, parser: Callable[[str], Parse] | None = None, stopwords: frozenset[str] | None = None):
        from qbench.metrics.clip_models import clip_details, load_open_clip

        model, pretrained = aqmap_clip_spec(ctx)
        with _aqmap_options_named():
            self.clip = load_open_clip(model, pretrained, ctx.device, "AQ-Map CLIP (metric options aqmap_clip_*)")
        self.info = clip_details(self.clip)
        standin = parser is None and common.opt_bool(ctx, "standin")
        if parser is None and not standin:
            _nlp()  # refuse now (one line), not at the first image
        self.parser = parser or (standin_parse if standin else spacy_parse)
        self.stopwords = stopwords if stopwords is not None else (STANDIN_STOPWORDS if standin else nltk_stopwords())
        self.jpeg = common.opt_bool(ctx, "aqmap_jpeg", True)
        self._text: dict[str, np.ndarray] = {}

    def text_feature(self, part: str) -> np.ndarray:
        """The prompt-ensemble feature of one noun part, ``(d,)`` float64 (cached)."""
        import torch

        if part not in self._text:
            with torch.inference_mode():
                tokens = self.clip.tokenizer([t.format(part) for t in TEMPLATES]).to(self.clip.device)
                e = self.clip.model.encode_text(tokens).float()
                e = e / e.norm(dim=-1, keepdim=True)
                m = e.mean(0)
                self._text[part] = (m / m.norm()).cpu().numpy().astype(np.float64)
        return self._text[part]

    def _pixels(self, image: Any) -> Any:
        import open_clip
        import torch
        from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
        from PIL import Image
        from torchvision import transforms as T

        pil = Image.fromarray(common.to_uint8_array(image))
        if self.jpeg:  # the reference writes temp_img_{i}.jpg and reads it back
            buf = io.BytesIO()
            pil.save(buf, format="JPEG")
            pil = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
        size = open_clip.get_model_config(self.clip.name)["vision_cfg"]["image_size"]
        tf = T.Compose([T.Resize((size, size), interpolation=T.InterpolationMode.BICUBIC), T.ToTensor(),
                        T.Normalize(OPENAI_DATASET_MEAN, OPENAI_DATASET_STD)])
        return tf(pil).unsqueeze(0).to(self.clip.device, dtype=torch.float32)

    def score(self, images: Sequence[Any], texts: Sequence[str]) -> np.ndarray:
        import torch

        if len(images) != len(texts):
            raise ConfigError(f"AQ-Map: {len(images)} images but {len(texts)} texts")
        out = []
        for image, text in zip(images, texts):
            parts = noun_parts(text, self.parser(text), self.stopwords)
            with torch.inference_mode():
                tokens = surgery_tokens(self.clip.model.visual, self._pixels(image))[0].float().cpu().numpy()
            feats = np.stack([self.text_feature(p) for p in parts])
            out.append(float(aq_from_features(tokens, feats, self.text_feature("")).mean()))
        return np.asarray(out, dtype=np.float64)

    def describe(self) -> dict[str, Any]:
        return {**self.info, "surgery_blocks": N_SURGERY, "templates": len(TEMPLATES), "jpeg_roundtrip": self.jpeg,
                "noun_parser": getattr(self.parser, "__name__", "custom"), "precision": "float32",
                "versions": {**self.info.get("versions", {}), **common.versions("spacy", "nltk")}}


def aqmap_clip_spec(ctx: MetricContext) -> tuple[str, str]:
    """``(aqmap_clip_model, aqmap_clip_pretrained)``; default OpenAI ViT-B/16, a tiny one with ``standin``."""
    model, pretrained = common.opt(ctx, "aqmap_clip_model"), common.opt(ctx, "aqmap_clip_pretrained")
    if model is None and pretrained is None and common.opt_bool(ctx, "standin"):
        from qbench.metrics import standins

        return standins.open_clip_model(standins.standin_dir(ctx))
    return str(model or DEFAULT_CLIP[0]), str(pretrained or DEFAULT_CLIP[1])


def aqmap_options() -> tuple:
    from qbench.options import Opt

    return (
        Opt("aqmap_clip_model", "str", None, f"open_clip ViT for AQ-Map (default {DEFAULT_CLIP[0]})"),
        Opt("aqmap_clip_pretrained", "str", None, f"its pretrained tag or weights file (default {DEFAULT_CLIP[1]})"),
        Opt("aqmap_jpeg", "bool", None, "round-trip each image through JPEG as the reference does (default true)"),
    )


def preflight_aqmap(ctx: MetricContext) -> None:
    """The NLP tools load and the CLIP weights resolve; no network is built."""
    from qbench.errors import gather
    from qbench.metrics.clip_models import resolve_clip

    def clip() -> None:
        with _aqmap_options_named():
            resolve_clip(*aqmap_clip_spec(ctx), "metric option aqmap_clip_pretrained")

    nlp = [] if common.opt_bool(ctx, "standin") else [lambda: _nlp(), nltk_stopwords]
    gather(*nlp, clip)


@contextlib.contextmanager
def _aqmap_options_named():
    """open_clip's missing-weights line names ``clip_model`` / ``clip_pretrained``; AQ-Map's CLIP
    takes ``aqmap_clip_model`` / ``aqmap_clip_pretrained``."""
    try:
        yield
    except MissingWeightsError as e:
        raise MissingWeightsError("AQ-Map " + str(e).replace("-M clip_", "-M aqmap_clip_")) from None
