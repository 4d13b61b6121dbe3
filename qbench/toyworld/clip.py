"""The shipped toy CLIP as the CLIP metrics expect it: (model-config JSON, weights file).

The shipped folder ``weights/toy-clip`` is an open_clip ``local-dir:`` model (loadable with
``open_clip.create_model_and_transforms("local-dir:<folder>")``). The metrics load CLIPs as
``(config JSON, weights file)``; the JSON must name the tokenizer folder by absolute path, so
:func:`toy_clip_spec` writes it (once per install location) under the qbench cache.
"""
from __future__ import annotations

import hashlib
import json
import os

from qbench.fsutil import atomic_write_text
from qbench.toyworld import WEIGHTS_DIR

CLIP_DIR = os.path.join(WEIGHTS_DIR, "toy-clip")
MODEL_NAME = "toy-clip"


def toy_clip_spec(clip_dir: str = CLIP_DIR) -> tuple[str, str]:
    """``(clip_model, clip_pretrained)`` for ``qbench.metrics.clip_models``: a flat open_clip
    model-config JSON named ``toy-clip.json`` and the weights file."""
    from qbench.errors import MissingWeightsError
    from qbench.models.base import cache_root

    clip_dir = os.path.abspath(clip_dir)
    cfg_path = os.path.join(clip_dir, "open_clip_config.json")
    weights = os.path.join(clip_dir, "open_clip_model.safetensors")
    if not (os.path.isfile(cfg_path) and os.path.isfile(weights)):
        raise MissingWeightsError(f"toy CLIP not found in {clip_dir} (train it: qbench zoo train clip)")
    with open(cfg_path) as f:
        cfg = json.load(f)["model_cfg"]
    cfg["text_cfg"]["hf_tokenizer_name"] = clip_dir  # HF CLIPTokenizer files live beside the weights
    tag = hashlib.sha256(clip_dir.encode()).hexdigest()[:12]
    out_dir = os.path.join(cache_root(), "toy-clip", tag)
    os.makedirs(out_dir, exist_ok=True)
    out = os.path.join(out_dir, f"{MODEL_NAME}.json")
    text = json.dumps(cfg, indent=1)
    if not os.path.isfile(out) or open(out).read() != text:
        atomic_write_text(out, text)
    return out, weights
