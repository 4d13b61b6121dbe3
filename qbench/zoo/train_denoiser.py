"""Train the toy world's two few-step text-to-image denoisers on the trained VAE's latents.

* ``unet``: a diffusers ``UNet2DConditionModel`` in a ``StableDiffusionPipeline`` sampled by
  ``LCMScheduler`` (4 steps). Objective: **v-prediction** on SD's DDPM noise schedule
  (scaled_linear, 0.00085..0.012, 1000 steps) — the objective LCMScheduler(prediction_type=
  "v_prediction") inverts; half of the training timesteps are drawn from the LCM 50-step grid the
  sampler visits, half uniformly. 10% of captions are dropped (empty prompt) so classifier-free
  guidance is possible. Text encoder: the toy CLIP's text tower as a frozen ``CLIPTextModel``.
* ``flux``: a ``FluxTransformer2DModel`` in a ``FluxPipeline`` sampled by
  ``FlowMatchEulerDiscreteScheduler`` (shift 1, 4 steps). Objective: **rectified flow**
  (x_s = (1-s) x0 + s noise, target v = noise - x0), half of the sigmas from the 4-step grid
  {1, .75, .5, .25}, half uniform. Text: the frozen toy-CLIP text tower gives the pooled vector
  (``text_encoder``); a tiny ``T5EncoderModel`` (``text_encoder_2``, same toy tokenizer) gives
  the token sequence and is trained jointly with the transformer.

Seeded (the batch, timesteps and noise of step k are functions of (seed, k)) and resumable
(checkpoint every ``ckpt_every_s``; an EMA pipeline is exported at every checkpoint so that the
newest usable model always exists).
"""
from __future__ import annotations

import os
import time

import numpy as np

from qbench.toyworld.render import N_WORDINGS, caption
from qbench.toyworld.splits import scenes
from qbench.zoo import common

# cross-attention at every level, the 16x16 one included: with text attention only at 8x8 and 4x4
# (the first toy-lcm, 4.2 M params) the UNet placed held-out scenes at the wrong x position
# (left/center swapped; position 43% after 5.7k steps)
UNET_CONFIG = dict(
    sample_size=16, in_channels=4, out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(32, 64, 128), layers_per_block=1, cross_attention_dim=128,
    attention_head_dim=4, norm_num_groups=32,
)
FLUX_CONFIG = dict(
    patch_size=1, in_channels=16, num_layers=2, num_single_layers=4, attention_head_dim=32,
    num_attention_heads=4, joint_attention_dim=128, pooled_projection_dim=128, guidance_embeds=False,
    axes_dims_rope=(8, 12, 12),
)
T5_CONFIG = dict(d_model=128, d_kv=32, d_ff=256, num_layers=2, num_heads=4, relative_attention_num_buckets=16,
                 relative_attention_max_distance=32, dropout_rate=0.0, feed_forward_proj="gated-gelu",
                 is_encoder_decoder=False, use_cache=False)
DDPM = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
MAX_LEN = 32  # CLIP text tokens (the toy CLIP's context length)
T5_LEN = 24  # Flux's T5 tokens: pipeline call kwarg max_sequence_length=24 (captions have <= 17 tokens)
CAPTION_DROPOUT = {"unet": 0.1, "flux": 0.0}
AUTOCAST = False  # bf16 autocast measured slower than fp32 for these tiny models on this CPU
LCM_GRID = np.arange(1, 51) * 20 - 1  # LCMScheduler's original 50-step timesteps


def parts_dirs():
    return (os.path.join(common.work_dir("vae", create=False), "export"),
            os.path.join(common.work_dir("clip", create=False), "export"))


def load_parts(vae_dir: str, clip_dir: str):
    """(vae, clip text tower as CLIPTextModel, CLIPTokenizer) — all frozen, eval mode.
    Raises ``MissingWeightsError`` if either export is missing (train vae and clip first)."""
    from diffusers import AutoencoderKL

    from qbench.errors import MissingWeightsError
    from qbench.zoo.convert import load_toy_clip, text_tower_to_hf
    from qbench.zoo.tokenizer import load_tokenizer

    for part, d, marker in (("vae", vae_dir, "config.json"), ("clip", clip_dir, "open_clip_config.json")):
        if not os.path.isfile(os.path.join(d, marker)):
            raise MissingWeightsError(f"the denoisers train on the toy {part}'s export, not found in {d}: "
                                      f"run `qbench zoo train {part}` first")

    vae = AutoencoderKL.from_pretrained(vae_dir).eval()
    clip, _, _ = load_toy_clip(clip_dir)
    tok = load_tokenizer(clip_dir)
    te = text_tower_to_hf(clip, len(tok), tok.bos_token_id, tok.eos_token_id)
    for m in (vae, te):
        m.requires_grad_(False)
    return vae, te, tok


def batch(kind: str, seed: int, step: int, size: int, pairs: float = 0.0):
    """The (seed, step)-th batch: TRAIN-split scenes; with ``pairs`` > 0 each example is a
    two-object scene with that probability (``pairs=0`` draws exactly what it always drew)."""
    rng = np.random.default_rng([seed, step, 7])
    train = scenes("train")
    sc = [train[int(i)].with_jitter(rng) for i in rng.integers(len(train), size=size)]
    if pairs > 0:
        ptrain = scenes("train", "pair")
        prng = np.random.default_rng([seed, step, 8])
        sc = [ptrain[int(prng.integers(len(ptrain)))].with_jitter(prng) if prng.random() < pairs else s for s in sc]
    caps = [caption(s, int(rng.integers(N_WORDINGS))) for s in sc]
    caps = ["" if rng.random() < CAPTION_DROPOUT[kind] else c for c in caps]
    return common.render_batch(sc), caps, rng


def build(kind: str, te):
    from diffusers import FluxTransformer2DModel, UNet2DConditionModel
    from transformers import T5Config, T5EncoderModel

    if kind == "unet":
        return UNet2DConditionModel(**UNET_CONFIG), None
    t5 = T5EncoderModel(T5Config(vocab_size=te.config.vocab_size, **T5_CONFIG))
    return FluxTransformer2DModel(**FLUX_CONFIG), t5


def loss_fn(kind, model, t5, vae, te, tok, x, caps, rng, seed, step):
    import torch
    import torch.nn.functional as F
    from diffusers import DDPMScheduler, FluxPipeline

    with torch.no_grad():
        z = vae.encode(x).latent_dist.mean * vae.config.scaling_factor
        ids = tok(caps, padding="max_length", max_length=MAX_LEN, truncation=True, return_tensors="pt").input_ids
    with torch.set_grad_enabled(any(p.requires_grad for p in te.parameters())):
        te_out = te(ids)
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    noise = torch.randn(z.shape, generator=g)
    B = z.shape[0]
    if kind == "unet":
        sched = DDPMScheduler(**DDPM, prediction_type="v_prediction")
        t = np.where(rng.random(B) < 0.5, rng.choice(LCM_GRID, size=B), rng.integers(0, 1000, size=B))
        t = torch.from_numpy(t).long()
        zt = sched.add_noise(z, noise, t)
        target = sched.get_velocity(z, noise, t)
        with torch.autocast("cpu", torch.bfloat16, enabled=AUTOCAST):
            pred = model(zt, t, encoder_hidden_states=te_out.last_hidden_state).sample
        return F.mse_loss(pred.float(), target)
    s = np.where(rng.random(B) < 0.5, rng.choice([1.0, 0.75, 0.5, 0.25], size=B), rng.random(B))
    s = torch.from_numpy(s).float()
    zt = (1 - s.view(-1, 1, 1, 1)) * z + s.view(-1, 1, 1, 1) * noise
    target = noise - z
    C, H, W = z.shape[1:]
    packed = FluxPipeline._pack_latents(zt, B, C, H, W)
    img_ids = FluxPipeline._prepare_latent_image_ids(B, H // 2, W // 2, "cpu", torch.float32)
    ids2 = tok(caps, padding="max_length", max_length=T5_LEN, truncation=True, return_tensors="pt").input_ids
    with torch.autocast("cpu", torch.bfloat16, enabled=AUTOCAST):
        enc = t5(ids2).last_hidden_state
        pred = model(hidden_states=packed, encoder_hidden_states=enc, pooled_projections=te_out.pooler_output,
                     timestep=s, img_ids=img_ids, txt_ids=torch.zeros(ids2.shape[1], 3), return_dict=False)[0]
    pred = FluxPipeline._unpack_latents(pred.float(), H * 2, W * 2, 2)  # vae_scale_factor 2
    return F.mse_loss(pred, target)


def make_pipeline(kind: str, model, t5, vae, te, tok):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, LCMScheduler, StableDiffusionPipeline

    if kind == "unet":
        sched = LCMScheduler(**DDPM, prediction_type="v_prediction", original_inference_steps=50,
                             set_alpha_to_one=True, clip_sample=False, timestep_spacing="leading")
        return StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=model, scheduler=sched,
                                       safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False)
    return FluxPipeline(scheduler=sched, vae=vae, text_encoder=te, tokenizer=tok, text_encoder_2=t5,
                        tokenizer_2=tok, transformer=model)


def export(kind, model, t5, vae, te, tok, out: str) -> None:
    import shutil

    tmp = out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    make_pipeline(kind, model, t5, vae, te, tok).save_pretrained(tmp, safe_serialization=True)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)


def train(kind: str, steps: int = 100_000, minutes: float = 30.0, seed: int = 0, batch_size: int = 32,
          lr: float = 6e-4, threads: int = 1, out: str | None = None, ckpt_every_s: float = 180.0,
          pairs: float = 0.0, train_text_encoder: bool = False) -> str:
    """Train (or resume) one denoiser. ``train_text_encoder`` (unet only): from now on, also train
    the pipeline's own copy of the CLIP text tower (the toy CLIP used by the metrics is unchanged);
    once a run has trained it, resumes keep training it."""
    import torch

    from qbench.errors import ConfigError

    if kind not in ("unet", "flux"):  # every argument is checked before anything is loaded
        raise ConfigError(f"unknown denoiser kind {kind!r}; choose unet or flux")
    common.check_train_args(steps=steps, minutes=minutes, batch=batch_size, lr=lr, threads=threads)
    if not 0.0 <= pairs <= 1.0:
        raise ConfigError(f"pairs must be a fraction in [0, 1], got {pairs}")
    if train_text_encoder and kind != "unet":
        raise ConfigError("train_text_encoder is for the unet (flux trains its T5 encoder already)")
    common.setup_torch(seed, threads)
    vae, te, tok = load_parts(*parts_dirs())
    wd = common.work_dir(kind)
    ckpt_path, log_path = os.path.join(wd, "ckpt.pt"), os.path.join(wd, "log.jsonl")
    out = out or os.path.join(wd, "export")
    model, t5 = build(kind, te)
    prev = common.load_ckpt(ckpt_path)
    had_te = prev is not None and "te" in prev
    del prev
    train_te = train_text_encoder or had_te
    params = list(model.parameters()) + (list(t5.parameters()) if t5 is not None else [])
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    if had_te:  # the checkpoint's optimizer has the text encoder's parameter group
        opt.add_param_group({"params": list(te.parameters())})
    ema, ema_t5 = common.EMA(model, 0.999), (common.EMA(t5, 0.999) if t5 is not None else None)
    st, step, elapsed = common.resume(ckpt_path, log_path, model, opt, ema, lr=lr, batch=batch_size, pairs=pairs,
                                      train_text_encoder=train_te)
    if st is not None and t5 is not None:
        t5.load_state_dict(st["t5"]); ema_t5.model.load_state_dict(st["ema_t5"])
    ema_te = None
    if train_te:
        if had_te:
            te.load_state_dict(st["te"])
        te.requires_grad_(True)
        te.train()
        ema_te = common.EMA(te, 0.999)
        if had_te:
            ema_te.model.load_state_dict(st["ema_te"])
        else:
            opt.add_param_group({"params": list(te.parameters())})
        params = params + list(te.parameters())
    t0 = time.time() - elapsed
    last_ck = time.time()

    def checkpoint():
        extra = {"t5": t5.state_dict(), "ema_t5": ema_t5.model.state_dict()} if t5 is not None else {}
        if ema_te is not None:
            extra.update(te=te.state_dict(), ema_te=ema_te.model.state_dict())
        common.save_training_state(ckpt_path, model, opt, ema, step, time.time() - t0, **extra)
        export(kind, ema.model, ema_t5.model if t5 is not None else None, vae,
               ema_te.model if ema_te is not None else te, tok, out)
        common.log(log_path, event="checkpoint", step=step, elapsed=round(time.time() - t0, 1))

    model.train()
    warm = 100
    while step < steps and (time.time() - t0) < minutes * 60:  # total training time, as vae/clip
        for gr in opt.param_groups:
            gr["lr"] = lr * min(1.0, (step + 1) / warm)
        x, caps, rng = batch(kind, seed, step, batch_size, pairs)
        loss = loss_fn(kind, model, t5, vae, te, tok, x, caps, rng, seed, step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema.update(model, step)
        if t5 is not None:
            ema_t5.update(t5, step)
        if ema_te is not None:
            ema_te.update(te, step)
        step += 1
        if step % 20 == 0:
            common.log(log_path, step=step, loss=round(loss.item(), 5), elapsed=round(time.time() - t0, 1))
        if time.time() - last_ck > ckpt_every_s:
            checkpoint()
            last_ck = time.time()
    checkpoint()
    common.log(log_path, event="done", step=step, elapsed=round(time.time() - t0, 1), out=out)
    return out
