"""Train the toy world's tiny ``AutoencoderKL`` (32x32 RGB <-> 4x16x16 latents, downsampling 2).

Seeded and resumable: the batch of step k is a fixed function of (seed, k), and a checkpoint
(model, optimiser, EMA, step, elapsed time) is written to the work dir every ``ckpt_every_s``.
"""
from __future__ import annotations

import os
import time

import numpy as np

from qbench.toyworld.splits import scenes
from qbench.zoo import common

VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
    up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
    block_out_channels=(32, 64),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=16,
    sample_size=32,
    scaling_factor=1.0,
    shift_factor=0.0,
)
KL_WEIGHT = 1e-6


def train_batch(seed: int, step: int, batch: int):
    """The (seed, step)-th training batch: jittered TRAIN-split scenes, rendered, in [-1, 1]."""
    rng = np.random.default_rng([seed, step])
    train = scenes("train")
    sc = [train[int(i)].with_jitter(rng) for i in rng.integers(len(train), size=batch)]
    return common.render_batch(sc)


def train(steps: int = 3000, minutes: float = 6.0, seed: int = 0, batch: int = 32, lr: float = 1e-3,
          threads: int = 1, out: str | None = None, ckpt_every_s: float = 60.0) -> str:
    import torch
    import torch.nn.functional as F
    from diffusers import AutoencoderKL

    common.check_train_args(steps=steps, minutes=minutes, batch=batch, lr=lr, threads=threads)
    common.setup_torch(seed, threads)
    wd = common.work_dir("vae")
    ckpt_path, log_path = os.path.join(wd, "ckpt.pt"), os.path.join(wd, "log.jsonl")
    model = AutoencoderKL(**VAE_CONFIG)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    ema = common.EMA(model, 0.995)
    _, step, elapsed = common.resume(ckpt_path, log_path, model, opt, ema, lr=lr, batch=batch)
    t0, last_ck = time.time() - elapsed, time.time()
    model.train()
    while step < steps and (time.time() - t0) < minutes * 60:
        x = train_batch(seed, step, batch)
        torch.manual_seed(seed * 1_000_003 + step)
        with torch.autocast("cpu", torch.bfloat16):
            post = model.encode(x).latent_dist
            rec = model.decode(post.sample()).sample.float()
        l_rec = F.mse_loss(rec, x) + 0.5 * F.l1_loss(rec, x)
        loss = l_rec + KL_WEIGHT * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema.update(model, step)
        step += 1
        if step % 25 == 0:
            common.log(log_path, step=step, loss=round(loss.item(), 5), rec=round(l_rec.item(), 5),
                       elapsed=round(time.time() - t0, 1))
        if time.time() - last_ck > ckpt_every_s:
            common.save_training_state(ckpt_path, model, opt, ema, step, time.time() - t0)
            last_ck = time.time()
    elapsed = time.time() - t0
    common.save_training_state(ckpt_path, model, opt, ema, step, elapsed)
    out = out or os.path.join(wd, "export")
    export(ema.model, out, seed)
    common.log(log_path, event="done", step=step, elapsed=round(elapsed, 1), out=out)
    return out


def export(model, out: str, seed: int = 0) -> None:
    """Set ``scaling_factor`` to 1/std of the latents of 512 TRAIN images and save (safetensors)."""
    import torch

    model.eval()
    with torch.no_grad():
        z = model.encode(train_batch(seed + 1, 10**6, 512)).latent_dist.mean
    std = float(z.std())
    model.register_to_config(scaling_factor=round(1.0 / std, 5), shift_factor=0.0)
    model.save_pretrained(out, safe_serialization=True)
