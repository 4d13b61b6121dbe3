"""Tiny local stand-ins for the metric networks, built through the real loading paths.

No learned metric weights exist offline. These builders write files in exactly the formats the
real weights come in, so tests and ``--metric-option standin=true`` runs exercise the same code:

* :func:`inception_weights` - a random (BatchNorm-calibrated) state dict for torch-fidelity's
  ``FeatureExtractorInceptionV3`` (loaded via ``feature_extractor_weights_path``);
* :func:`open_clip_model` - a tiny open_clip model config JSON + safetensors weights;
* :func:`clipiqa_backbone` - a random ResNet CLIP state dict in OpenAI's layout for CLIP-IQA (tiny,
  or RN50-sized), or the same model as TorchScript (to test that such archives are refused);
* :func:`lpips_backbone` - random AlexNet ``features.*`` weights for LPIPS;
* :func:`hps_model` - a tiny open_clip ViT + text tower in HPSv2's checkpoint format;
* :func:`pickscore_model` - a tiny transformers ``CLIPModel`` folder and a CLIP processor folder
  (the real CLIP BPE vocabulary, rebuilt from open_clip's bundled merges file);
* :func:`imagereward_model` - a tiny ImageReward checkpoint (``ImageReward.pt`` key names) and a
  BERT tokenizer folder.

Every file gets a sidecar ``<file>.qbench.json`` with ``"meaningful": false``, so numbers made
with it are labelled as such wherever they are stored or printed. Builds are deterministic
(seeded) and cached on disk (atomic writes), so a test session builds each once.
"""
from __future__ import annotations

import json
import os
import tempfile
from typing import TYPE_CHECKING
from unittest import mock

from qbench.fsutil import atomic_write, atomic_write_text
from qbench.metrics.common import SIDECAR_SUFFIX, write_sidecar

if TYPE_CHECKING:  # pragma: no cover
    from qbench.api import MetricContext

VERSION = "v1"


def standin_dir(ctx: MetricContext | None = None) -> str:
    """``$QBENCH_STANDIN_DIR``, else ``<cache_dir>/standins``, else a folder in the temp dir."""
    env = os.environ.get("QBENCH_STANDIN_DIR")
    if env:
        return env
    if ctx is not None and ctx.cache_dir:
        return os.path.join(ctx.cache_dir, "standins")
    return os.path.join(tempfile.gettempdir(), "qbench-standins")


def _ready(path: str) -> bool:
    return os.path.isfile(path) and os.path.isfile(path + SIDECAR_SUFFIX)


def _label(kind: str, what: str) -> dict:
    return {
        "standin": True,
        "meaningful": False,
        "weights": f"random stand-in {kind} ({what}); numbers test mechanics only and mean nothing",
        "builder": f"qbench.metrics.standins {VERSION}",
    }


def inception_weights(folder: str | None = None) -> str:
    """Path of a random Inception-v3 state dict in torch-fidelity's layout (~95 MB, built once).

    Random convolutions with BatchNorm running statistics set from one batch of smooth random
    images, so the 2048-d features are O(1) and differ between images (pure random init would
    shrink them towards 0).
    """
    import torch
    from torch_fidelity import feature_extractor_inceptionv3 as fe

    from qbench.metrics.inception import pool3

    folder = folder or standin_dir()
    path = os.path.join(folder, f"inception-standin-{VERSION}.pth")
    if _ready(path):
        return path
    os.makedirs(folder, exist_ok=True)

    class _Random(fe.FeatureExtractorInceptionV3):
        def load_state_dict(self, *args, **kwargs):  # keep the random init
            return None

    with mock.patch.object(fe, "load_state_dict_from_url", lambda *a, **k: {}):
        gen = torch.manual_seed(0)
        net = _Random("standin", ["2048"])
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # cumulative average: running stats = this batch's stats
    net.train()
    with torch.no_grad():
        x = torch.nn.functional.interpolate(torch.rand(4, 3, 19, 19, generator=gen), size=(299, 299), mode="bilinear") * 2 - 1
        pool3(net, x)
    net.eval()
    state = {k: v for k, v in net.state_dict().items()}
    atomic_write(path, lambda tmp: torch.save(state, tmp))
    write_sidecar(path, _label("Inception-v3", "torch-fidelity layout, BatchNorm calibrated on random images"))
    return path


STANDIN_CLIP_CONFIG = {
    "embed_dim": 32,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def open_clip_model(folder: str | None = None) -> tuple[str, str]:
    """(model-config JSON path, safetensors weights path) of a tiny random open_clip model.

    Pass them as ``clip_model`` / ``clip_pretrained``; the model name open_clip registers is the
    JSON file's stem.
    """
    return _tiny_open_clip(folder, f"qbench-standin-clip-{VERSION}", STANDIN_CLIP_CONFIG, "safetensors", "CLIP")


def _tiny_open_clip(folder: str | None, name: str, config: dict, fmt: str, kind: str) -> tuple[str, str]:
    """Write ``<name>.json`` (open_clip model config) and random weights: ``fmt`` ``safetensors``
    (open_clip's layout) or ``hps`` (``torch.save({"state_dict": ...})``, HPSv2's checkpoint format)."""
    import open_clip
    import torch

    folder = folder or standin_dir()
    cfg_path = os.path.join(folder, f"{name}.json")
    weights = os.path.join(folder, f"{name}.{'safetensors' if fmt == 'safetensors' else 'pt'}")
    if _ready(weights) and os.path.isfile(cfg_path):
        return cfg_path, weights
    os.makedirs(folder, exist_ok=True)
    atomic_write_text(cfg_path, json.dumps(config, indent=1))
    open_clip.add_model_config(cfg_path)
    torch.manual_seed(0)
    model = open_clip.create_model(name, pretrained=None)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if fmt == "safetensors":
        from safetensors.torch import save_file

        atomic_write(weights, lambda tmp: save_file(state, tmp))
    else:
        atomic_write(weights, lambda tmp: torch.save({"state_dict": {k: v.half() for k, v in state.items()}}, tmp))
    write_sidecar(weights, _label(kind, f"open_clip config {os.path.basename(cfg_path)}"))
    return cfg_path, weights


#: HPSv2's ViT-H-14 shrunk (same open_clip classes and parameter names; GELU, not QuickGELU)
STANDIN_HPS_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 32, "head_width": 16, "patch_size": 14},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def hps_model(folder: str | None = None) -> tuple[str, str]:
    """(model-config JSON, checkpoint) of a tiny random HPS model: the checkpoint in HPSv2's
    published format (``{"state_dict": fp16 tensors}`` of open_clip names), for ``hps_model`` /
    ``hps_weights``."""
    return _tiny_open_clip(folder, f"qbench-standin-hps-{VERSION}", STANDIN_HPS_CONFIG, "hps", "HPSv2 (open_clip ViT)")


#: the stand-in ResNet CLIPs: ``tiny`` for tests (~3.5 M parameters, almost all the token
#: embedding), ``rn50`` with the shapes of OpenAI's RN50 (embed 1024, layers 3-4-6-3, width 64,
#: 224 px, text 512 wide x 12 layers; ~102 M parameters) for full-size comparisons
CLIPIQA_STANDINS = {
    "tiny": {"embed_dim": 32, "layers": (1, 1, 1, 1), "width": 8, "image_size": 32, "text_width": 64, "text_layers": 1},
    "rn50": {"embed_dim": 1024, "layers": (3, 4, 6, 3), "width": 64, "image_size": 224, "text_width": 512, "text_layers": 12},
}


def clipiqa_backbone(folder: str | None = None, torchscript: bool = False, arch: str = "tiny") -> str:
    """Path of a random ResNet CLIP in OpenAI's layout (the CLIP-IQA ``clipiqa_backbone``): a
    ``torch.save``'d state dict, or with ``torchscript=True`` the same model traced and saved as
    TorchScript (the format OpenAI ships ``RN50.pt`` in; qbench refuses such archives unless OpenAI
    publishes their hash). ``arch``: a key of :data:`CLIPIQA_STANDINS`.

    Built with open_clip's ``CLIP`` (whose names are OpenAI's), seeded; BatchNorm scales random in
    [0.5, 1.5] and running statistics set from one batch of smooth random images (so features are
    O(1) at every depth); ``logit_scale = ln 100`` as in OpenAI's checkpoints; every other float
    rounded to float16 (OpenAI's checkpoints hold float16 weights), so a loader that casts to float16
    and back (pyiqa's, OpenAI's ``build_model``) gets the very same numbers.
    """
    import math

    import torch
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    cfg = CLIPIQA_STANDINS[arch]
    folder = folder or standin_dir()
    tag = "" if arch == "tiny" else f"-{arch}"
    path = os.path.join(folder, f"clipiqa-resnet{tag}-standin-{VERSION}{'-torchscript.pt' if torchscript else '.pth'}")
    if _ready(path):
        return path
    os.makedirs(folder, exist_ok=True)
    gen = torch.manual_seed(0)
    model = CLIP(cfg["embed_dim"], quick_gelu=True,
                 vision_cfg=CLIPVisionCfg(layers=cfg["layers"], width=cfg["width"], image_size=cfg["image_size"], patch_size=None),
                 text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=cfg["text_width"], heads=cfg["text_width"] // 64,
                                      layers=cfg["text_layers"]))
    with torch.no_grad():
        for m in model.visual.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5, generator=gen)
                m.bias.normal_(0.0, 0.1, generator=gen)
                m.momentum = None  # cumulative average: running stats = this batch's stats
        model.visual.train()
        x = torch.nn.functional.interpolate(torch.rand(4, 3, 9, 9, generator=gen), size=(cfg["image_size"],) * 2, mode="bilinear")
        v = model.visual
        v.layer4(v.layer3(v.layer2(v.layer1(v.stem((x - 0.45) / 0.27)))))
        model.eval()
        model.logit_scale.fill_(math.log(100.0))
        state = {k: (t.half().float() if t.is_floating_point() and k != "logit_scale" else t).clone() for k, t in model.state_dict().items()}
        model.load_state_dict(state)
    if torchscript:
        image = torch.rand(1, 3, cfg["image_size"], cfg["image_size"])
        text = torch.zeros(2, 77, dtype=torch.long)
        text[:, 0], text[:, 1] = 49406, 49407
        with torch.no_grad():
            traced = torch.jit.trace(model, (image, text), check_trace=False)
        atomic_write(path, lambda tmp: torch.jit.save(traced, tmp))
    else:
        atomic_write(path, lambda tmp: torch.save(state, tmp))
    what = f"OpenAI layout, {arch} ResNet CLIP, {'TorchScript' if torchscript else 'state dict'}"
    write_sidecar(path, _label("ResNet CLIP backbone for CLIP-IQA", what))
    return path


def lpips_backbone(folder: str | None = None) -> str:
    """Path of random AlexNet ``features.*`` weights (torchvision layout) for LPIPS."""
    import torch
    import torchvision

    folder = folder or standin_dir()
    path = os.path.join(folder, f"alexnet-features-standin-{VERSION}.pth")
    if _ready(path):
        return path
    os.makedirs(folder, exist_ok=True)
    torch.manual_seed(0)
    net = torchvision.models.alexnet(weights=None)
    state = {k: v for k, v in net.state_dict().items() if k.startswith("features.")}
    atomic_write(path, lambda tmp: torch.save(state, tmp))
    write_sidecar(path, _label("AlexNet (LPIPS backbone)", "torchvision layout, features only"))
    return path


def clip_bpe_files(folder: str) -> tuple[str, str]:
    """``(vocab.json, merges.txt)`` of OpenAI CLIP's BPE (49,408 tokens) in transformers' format,
    rebuilt from open_clip's bundled ``bpe_simple_vocab_16e6.txt.gz`` the way CLIP's
    ``SimpleTokenizer`` builds its encoder: 256 byte symbols, the same with ``</w>``, the first
    48,894 merges, then ``<|startoftext|>`` and ``<|endoftext|>``."""
    import gzip

    from open_clip.tokenizer import bytes_to_unicode, default_bpe

    vocab_path, merges_path = os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt")
    if os.path.isfile(vocab_path) and os.path.isfile(merges_path):
        return vocab_path, merges_path
    os.makedirs(folder, exist_ok=True)
    with gzip.open(default_bpe()) as f:
        merges = f.read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    atomic_write_text(vocab_path, json.dumps({t: i for i, t in enumerate(vocab)}))
    atomic_write_text(merges_path, "#version: 0.2\n" + "\n".join(merges) + "\n")
    return vocab_path, merges_path


def pickscore_model(folder: str | None = None) -> tuple[str, str]:
    """(model folder, processor folder) of a tiny random transformers ``CLIPModel`` (PickScore_v1's
    classes and parameter names: ViT-H-14 shrunk to 2 layers of width 32) and a CLIP processor
    (224 px, bicubic, OpenAI mean/std; the real CLIP BPE vocabulary), as ``save_pretrained``
    writes them, for ``pickscore_model`` / ``pickscore_processor``."""
    import torch
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        CLIPTokenizer,
    )

    folder = os.path.join(folder or standin_dir(), f"pickscore-standin-{VERSION}")
    model_dir, proc_dir = os.path.join(folder, "model"), os.path.join(folder, "processor")
    weights = os.path.join(model_dir, "model.safetensors")
    if _ready(weights) and os.path.isfile(os.path.join(proc_dir, "preprocessor_config.json")):
        return model_dir, proc_dir
    vocab, merges = clip_bpe_files(os.path.join(folder, "bpe"))
    tok = CLIPTokenizer(vocab, merges, model_max_length=77)
    image = CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
    CLIPProcessor(image_processor=image, tokenizer=tok).save_pretrained(proc_dir)
    small = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "hidden_act": "gelu"}
    cfg = CLIPConfig(text_config={**small, "vocab_size": 49408, "max_position_embeddings": 77, "eos_token_id": 49407, "bos_token_id": 49406, "pad_token_id": 49407},
                     vision_config={**small, "image_size": 224, "patch_size": 14}, projection_dim=32)
    torch.manual_seed(0)
    CLIPModel(cfg).eval().save_pretrained(model_dir, safe_serialization=True)
    write_sidecar(weights, _label("PickScore (transformers CLIPModel)", "ViT-H-14 classes, 2 layers, width 32"))
    return model_dir, proc_dir


#: a WordPiece vocabulary for the ImageReward stand-in: BERT's special tokens, letters, pieces, words
_BERT_VOCAB = (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list("abcdefghijklmnopqrstuvwxyz0123456789.,!?'-")
               + [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
               + ["an", "the", "of", "on", "in", "with", "and", "photo", "red", "blue", "green", "cube", "cat", "cats", "dog", "table", "circle", "two", "small", "large"])


def imagereward_model(folder: str | None = None) -> tuple[str, str, str]:
    """(checkpoint, tokenizer folder, config JSON) of a tiny random ImageReward: the checkpoint is a
    ``torch.save``'d state dict with ``ImageReward.pt``'s names (written through the inverse of
    :func:`qbench.metrics.blip.map_key`, plus the unused ``blip.vision_proj`` / ``blip.text_proj``
    and ``position_ids`` entries the real file holds), for ``imagereward_weights`` /
    ``imagereward_tokenizer`` / ``imagereward_config``."""
    import torch

    from qbench.metrics.blip import ImageRewardConfig, ImageRewardNet, unmap_key

    folder = os.path.join(folder or standin_dir(), f"imagereward-standin-{VERSION}")
    weights, cfg_path, tok_dir = (os.path.join(folder, n) for n in ("ImageReward.pt", "config.json", "tokenizer"))
    if _ready(weights) and os.path.isfile(cfg_path) and os.path.isfile(os.path.join(tok_dir, "vocab.txt")):
        return weights, tok_dir, cfg_path
    os.makedirs(tok_dir, exist_ok=True)
    atomic_write_text(os.path.join(tok_dir, "vocab.txt"), "\n".join(_BERT_VOCAB) + "\n")
    cfg = ImageRewardConfig(vision_width=32, vision_layers=2, vision_heads=2, vision_mlp=64, text_vocab=len(_BERT_VOCAB) + 2,
                            text_width=32, text_layers=2, text_heads=2, text_mlp=64, text_positions=64)
    atomic_write_text(cfg_path, json.dumps(cfg.to_dict(), indent=1))
    torch.manual_seed(0)
    net = ImageRewardNet(cfg)
    with torch.no_grad():  # transformers initialises BLIP's ViT with std 1e-10 (a constant image); use BLIP's 0.02
        for p in net.vision.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.02)
        for p in net.mlp.parameters():  # unit-gain head, so stand-in rewards differ between images
            if p.dim() > 1:
                p.normal_(0.0, p.shape[1] ** -0.5)
    state = {unmap_key(k): v.contiguous() for k, v in net.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    state.update({"blip.vision_proj.weight": torch.randn(16, cfg.vision_width, generator=g), "blip.vision_proj.bias": torch.zeros(16),
                  "blip.text_proj.weight": torch.randn(16, cfg.text_width, generator=g), "blip.text_proj.bias": torch.zeros(16),
                  "blip.text_encoder.embeddings.position_ids": torch.arange(cfg.text_positions).expand((1, -1)).clone()})
    atomic_write(weights, lambda tmp: torch.save(state, tmp))
    write_sidecar(weights, _label("ImageReward (BLIP ViT + MED BERT + MLP)", "2 layers, width 32, ImageReward.pt names"))
    return weights, tok_dir, cfg_path
