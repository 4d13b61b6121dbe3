"""Train the toy CLIP (open_clip format: a 32-px ViT and a 3-layer text transformer).

Loss per step (seeded by (seed, step), resumable):
* caption contrastive loss with **hard negatives**: each image is scored against the batch's
  captions *and* one caption per image with exactly one attribute changed; captions of the same
  attribute combination count as positives (soft targets), so duplicates are not negatives;
* 25% (40% after step 466) of the images are degraded (noise, blur, blocking, colour shift) but keep their caption,
  so alignment survives quality loss;
* a **quality** loss: every image is classified against a good/bad prompt pair
  ("Good photo."/"Bad photo." and paraphrases) — clean -> good, degraded -> bad — which is what
  CLIP-IQA reads (weight 0.5, 2.0 after step 466).

The shipped folder is an open_clip ``local-dir:`` model: ``open_clip_config.json`` +
``open_clip_model.safetensors`` + the toy tokenizer's files.
"""
from __future__ import annotations

import json
import os
import time

import numpy as np

from qbench.zoo import common
from qbench.toyworld.render import ATTRIBUTES, BAD_WORDS, DEGRADATIONS, GOOD_WORDS, N_WORDINGS, caption, degrade, render
from qbench.toyworld.splits import scenes
from qbench.zoo.tokenizer import CONTEXT_LENGTH, vocab_size, write_tokenizer

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
TEXT_WIDTH = 128


def model_cfg() -> dict:
    return {
        "embed_dim": 128,
        "vision_cfg": {"image_size": 32, "layers": 4, "width": 128, "patch_size": 4, "head_width": 32, "mlp_ratio": 2.0},
        "text_cfg": {
            "context_length": CONTEXT_LENGTH,
            "vocab_size": vocab_size(),
            "width": TEXT_WIDTH,
            "heads": 4,
            "layers": 3,
            "mlp_ratio": 4.0,
            "hf_tokenizer_name": "toy-clip (files in this folder)",
        },
    }


def preprocess_cfg() -> dict:
    return {"size": 32, "mode": "RGB", "mean": list(OPENAI_MEAN), "std": list(OPENAI_STD),
            "interpolation": "bicubic", "resize_mode": "shortest"}


def write_model_dir(out: str, state_dict: dict | None = None) -> None:
    """Write an open_clip ``local-dir:`` folder (config, tokenizer, and weights if given)."""
    from safetensors.torch import save_file

    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "open_clip_config.json"), "w") as f:
        json.dump({"model_cfg": model_cfg(), "preprocess_cfg": preprocess_cfg()}, f, indent=1)
    write_tokenizer(out, CONTEXT_LENGTH)
    if state_dict is not None:
        save_file({k: v.detach().contiguous().float() for k, v in state_dict.items()},
                  os.path.join(out, "open_clip_model.safetensors"))


def build_model():
    """A randomly initialised toy CLIP and its tokenizer (through open_clip's local-dir schema)."""
    import open_clip

    d = os.path.join(common.work_dir("clip"), "arch")
    write_model_dir(d)
    model = open_clip.create_model(f"local-dir:{d}", load_weights=False)
    tok = open_clip.get_tokenizer(f"local-dir:{d}")
    return model, tok


def to_input(images):
    import torch

    x = (common.images_to_tensor(images) + 1) / 2
    mean = torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_STD).view(1, 3, 1, 1)
    return (x - mean) / std


CURRICULUM_STEP = 466  # the step the first 10-min session ended at; after it: more degraded images and a heavier quality loss


def degrade_p(step: int) -> float:
    return 0.25 if step < CURRICULUM_STEP else 0.4


def quality_weight(step: int) -> float:
    return 0.5 if step < CURRICULUM_STEP else 2.0


def make_batch(seed: int, step: int, batch: int, split: str = "train"):
    """Images, positive captions, hard-negative captions, scene keys, degraded flags."""
    rng = np.random.default_rng([seed, step])
    pool = scenes(split)
    sc = [pool[int(i)].with_jitter(rng) for i in rng.integers(len(pool), size=batch)]
    images, bad = [], []
    for s in sc:
        im = render(s)
        if rng.random() < degrade_p(step):
            im = degrade(im, DEGRADATIONS[int(rng.integers(len(DEGRADATIONS)))], rng)
            bad.append(True)
        else:
            bad.append(False)
        images.append(im)
    pos = [caption(s, int(rng.integers(N_WORDINGS))) for s in sc]
    negs = [s.changed(ATTRIBUTES[int(rng.integers(len(ATTRIBUTES)))], rng) for s in sc]
    neg = [caption(s, int(rng.integers(N_WORDINGS))) for s in negs]
    keys = [s.key for s in sc] + [s.key for s in negs]
    q = int(rng.integers(len(GOOD_WORDS)))
    return images, pos, neg, keys, np.array(bad), (GOOD_WORDS[q], BAD_WORDS[q])


def losses(model, tok, batch_data):
    import torch
    import torch.nn.functional as F

    images, pos, neg, keys, bad, quality = batch_data
    B = len(images)
    img = F.normalize(model.encode_image(to_input(images)).float(), dim=-1)
    txt = F.normalize(model.encode_text(tok(pos + neg + list(quality))).float(), dim=-1)
    scale = model.logit_scale.exp().clamp(max=100).float()
    same = torch.tensor([[keys[i] == keys[j] for j in range(2 * B)] for i in range(B)], dtype=torch.float32)
    l_i2t = -(F.log_softmax(scale * img @ txt[: 2 * B].T, -1) * same / same.sum(1, keepdim=True)).sum(1).mean()
    same_t = same[:, :B].T
    l_t2i = -(F.log_softmax(scale * txt[:B] @ img.T, -1) * same_t / same_t.sum(1, keepdim=True)).sum(1).mean()
    lq = scale * img @ txt[2 * B :].T  # (B, 2): good, bad
    l_q = F.cross_entropy(lq, torch.from_numpy(bad.astype(np.int64)))
    acc = ((scale * img @ txt[:B].T).argmax(-1) == torch.arange(B)).float().mean()
    return l_i2t, l_t2i, l_q, acc


def train(steps: int = 4000, minutes: float = 8.0, seed: int = 0, batch: int = 96, lr: float = 1e-3,
          threads: int = 1, out: str | None = None, ckpt_every_s: float = 60.0) -> str:
    import torch

    common.check_train_args(steps=steps, minutes=minutes, batch=batch, lr=lr, threads=threads)
    common.setup_torch(seed, threads)
    wd = common.work_dir("clip")
    ckpt_path, log_path = os.path.join(wd, "ckpt.pt"), os.path.join(wd, "log.jsonl")
    model, tok = build_model()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    ema = common.EMA(model, 0.99)
    _, step, elapsed = common.resume(ckpt_path, log_path, model, opt, ema, lr=lr, batch=batch)
    t0, last_ck = time.time() - elapsed, time.time()
    model.train()
    warm = 100
    while step < steps and (time.time() - t0) < minutes * 60:
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, (step + 1) / warm)
        data = make_batch(seed, step, batch)
        l_i2t, l_t2i, l_q, acc = losses(model, tok, data)  # fp32: bf16 autocast was 2x slower here
        loss = l_i2t + l_t2i + quality_weight(step) * l_q
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema.update(model, step)
        step += 1
        if step % 20 == 0:
            common.log(log_path, step=step, i2t=round(l_i2t.item(), 4), t2i=round(l_t2i.item(), 4),
                       q=round(l_q.item(), 4), acc=round(acc.item(), 3), scale=round(model.logit_scale.exp().item(), 2),
                       elapsed=round(time.time() - t0, 1))
        if time.time() - last_ck > ckpt_every_s:
            common.save_training_state(ckpt_path, model, opt, ema, step, time.time() - t0)
            last_ck = time.time()
    elapsed = time.time() - t0
    common.save_training_state(ckpt_path, model, opt, ema, step, elapsed)
    out = out or os.path.join(wd, "export")
    write_model_dir(out, ema.model.state_dict())
    common.log(log_path, event="done", step=step, elapsed=round(elapsed, 1), out=out)
    return out
