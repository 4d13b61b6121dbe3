"""Full-scale CPU smoke run: the real denoisers' architectures with random weights through `qbench run`.

    python tools/fullscale_smoke.py --model sdxl-turbo --work /tmp/smoke [--steps 1] [--dtype bfloat16]

1. builds a diffusers pipeline of the model's real classes in the real configs (denoiser:
   :data:`qbench.models.specs.REAL_DENOISERS`; the other components below, with their sources),
   seeded random weights, written with ``save_pretrained`` to ``<work>/<model>``;
2. runs ``qbench run --model M --model-path <work>/<model>`` for fp, naive W4A8 simulate, naive
   W4A8 kernel, Q-Sched (a given ramp checkpoint over naive W4A8 simulate) and MixDQ W4A8
   ``--dry-run`` (its calibration cost at the real layer count), each under ``/usr/bin/time -v``:
   wall time, peak RSS, exit status and the last error line go to ``<work>/smoke-<model>.json``.

The images mean nothing (random weights): this checks that the real sizes run, and what they cost
on this CPU. Reduced, and said so in the JSON: FLUX keeps its real width but ``--flux-blocks``
double/single blocks (the 12B transformer does not fit 24 GiB beside the rest), its T5 encoder
keeps the T5-XXL width with 2 layers, and both T5 and CLIP use the CLIP BPE tokenizer (T5's
SentencePiece model is not available offline; the T5 vocabulary is widened to it).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import re
import subprocess
import sys
import time

#: CLIP ViT-L/14 text tower (stable-diffusion-v1-5 text_encoder/config.json; FLUX.1 text_encoder)
CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77,
              hidden_act="quick_gelu", projection_dim=768)
#: OpenCLIP ViT-bigG/14 text tower (stabilityai/sdxl-turbo text_encoder_2/config.json)
CLIP_BIGG = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20, max_position_embeddings=77,
                 hidden_act="gelu", projection_dim=1280)
#: SD / SDXL VAE (vae/config.json of stable-diffusion-v1-5 and sdxl-turbo; FLUX.1's with 16 latent channels)
VAE = dict(block_out_channels=(128, 256, 512, 512), in_channels=3, out_channels=3, layers_per_block=2, norm_num_groups=32,
           down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
VAE_BY_MODEL = {
    "lcm": dict(latent_channels=4, sample_size=512, scaling_factor=0.18215),
    "sdxl-turbo": dict(latent_channels=4, sample_size=512, scaling_factor=0.13025),
    "flux-schnell": dict(latent_channels=16, sample_size=1024, use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.1159, scaling_factor=0.3611),
}
#: T5-XXL encoder width (google/t5-v1_1-xxl config.json: d_model 4096, d_ff 10240, 64 heads of 64, gated-gelu), fewer layers here
T5_XXL = dict(d_model=4096, d_ff=10240, d_kv=64, num_heads=64, feed_forward_proj="gated-gelu", num_layers=2)
SD_BETAS = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)


def build(model: str, out: str, dtype: str, flux_blocks: tuple[int, int]) -> dict:
    """Write a random-weight pipeline of ``model``'s real classes to ``out``; returns what was reduced."""
    import diffusers
    import torch
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        T5Config,
        T5EncoderModel,
    )

    from qbench.models.specs import REAL_DENOISERS
    from qbench.models.tokenizer import VOCAB_SIZE, clip_tokenizer

    torch.manual_seed(0)
    dt = getattr(torch, dtype)
    torch.set_default_dtype(dt)  # build in the target dtype: an fp32 copy of SDXL's UNet alone is 10 GB
    clip_ids = dict(vocab_size=VOCAB_SIZE, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
    cls_name, config, _ = REAL_DENOISERS[model]
    config = dict(config)
    reduced: dict = {}
    if model == "flux-schnell":
        reduced["transformer_blocks"] = f"{flux_blocks[0]} double + {flux_blocks[1]} single of 19 + 38 (real width 3072)"
        config.update(num_layers=flux_blocks[0], num_single_layers=flux_blocks[1])
    with torch.device("cpu"):
        den = getattr(diffusers, cls_name)(**config).to(dt)
    vae = diffusers.AutoencoderKL(**VAE, **VAE_BY_MODEL[model]).to(dt)
    tok = clip_tokenizer(os.path.join(out, "_tok"))
    clip_l = CLIPTextModel(CLIPTextConfig(**CLIP_L, **clip_ids)).to(dt)
    S = diffusers
    if model == "lcm":
        pipe = S.LatentConsistencyModelPipeline(vae=vae, text_encoder=clip_l, tokenizer=tok, unet=den, scheduler=S.LCMScheduler(**SD_BETAS),
                                                safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    elif model == "sdxl-turbo":
        big = CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_BIGG, **clip_ids)).to(dt)
        pipe = S.StableDiffusionXLPipeline(vae=vae, text_encoder=clip_l, text_encoder_2=big, tokenizer=tok, tokenizer_2=tok, unet=den,
                                           scheduler=S.EulerAncestralDiscreteScheduler(**SD_BETAS, timestep_spacing="trailing"),
                                           force_zeros_for_empty_prompt=True)
    else:
        reduced["text_encoder_2"] = f"T5-XXL width, {T5_XXL['num_layers']} of 24 layers, CLIP BPE vocabulary ({VOCAB_SIZE})"
        t5 = T5EncoderModel(T5Config(vocab_size=VOCAB_SIZE, decoder_start_token_id=0, pad_token_id=49407, eos_token_id=49407, **T5_XXL)).to(dt)
        pipe = S.FluxPipeline(scheduler=S.FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False), vae=vae, text_encoder=clip_l,
                              tokenizer=tok, text_encoder_2=t5, tokenizer_2=tok, transformer=den)
    pipe.save_pretrained(out, safe_serialization=True)
    reduced["denoiser_params"] = sum(p.numel() for p in den.parameters())
    torch.set_default_dtype(torch.float32)
    return reduced


def timed(cmd: list[str], log: str) -> dict:
    """Run ``cmd`` under ``/usr/bin/time -v``: wall seconds, peak RSS (GiB), exit status, last error line."""
    t = time.perf_counter()
    with open(log, "w", encoding="utf-8") as f:
        rc = subprocess.run(["/usr/bin/time", "-v", *cmd], stdout=f, stderr=subprocess.STDOUT, check=False).returncode
    with open(log, encoding="utf-8", errors="replace") as f:
        text = f.read()
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    errs = [ln for ln in text.splitlines() if "error" in ln.lower() and "Exit status" not in ln]
    return {"cmd": " ".join(cmd), "rc": rc, "wall_s": round(time.perf_counter() - t, 1),
            "peak_rss_gib": round(int(rss.group(1)) / 2**20, 2) if rss else None, "error": errs[-1][:300] if errs else None, "log": log}


def cells(model: str, path: str, work: str, steps: int, res: int | None, dtype: str) -> list[tuple[str, list[str]]]:
    from qbench.methods.qsched_scheduler import (
        QSchedCoefficients,
        make_checkpoint,
        save_checkpoint,
    )

    ckpt = save_checkpoint(os.path.join(work, f"{model}-qsched.json"),
                           make_checkpoint(QSchedCoefficients("ramp", (0.95, 1.05)), steps=steps, model=model, bits="W4A8", base="naive"))
    base = [sys.executable, "-m", "qbench", "run", "--model", model, "--model-path", path, "--prompts", "coco2017:1", "--steps", str(steps),
            "--dtype", dtype, "--metrics", "psnr", "--latency-warmup", "0", "--latency-repeats", "1", "--out-dir", os.path.join(work, "reports"),
            "--no-progress", "--json"] + (["--resolution", str(res)] if res else [])
    w4 = ["--bits", "W4A8"]
    return [("fp", base + ["--method", "fp"]),
            ("naive W4A8 simulate", base + ["--method", "naive", *w4, "--mode", "simulate"]),
            ("naive W4A8 kernel", base + ["--method", "naive", *w4, "--mode", "kernel"]),
            ("qsched W4A8 (given checkpoint)", base + ["--method", "qsched", *w4, "--mode", "simulate", "--qsched-ckpt", ckpt]),
            ("mixdq W4A8 --dry-run", base + ["--method", "mixdq", *w4, "--dry-run"])]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, choices=sorted(VAE_BY_MODEL))
    p.add_argument("--work", required=True, help="folder for the weights, logs and smoke-<model>.json")
    p.add_argument("--steps", type=int, default=1)
    p.add_argument("--resolution", type=int, default=None, help="default: the model's")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--flux-blocks", default="2,4", help="double,single blocks kept for FLUX (real: 19,38)")
    p.add_argument("--only", default=None, help="comma-separated cell names to run (default all)")
    a = p.parse_args(argv)
    os.makedirs(a.work, exist_ok=True)
    path = os.path.join(a.work, a.model)
    out_json = os.path.join(a.work, f"smoke-{a.model}.json")
    result: dict = {}
    if os.path.isfile(out_json):
        with open(out_json, encoding="utf-8") as f:
            result = json.load(f)
    entry = result.setdefault(a.model, {"cells": {}})
    if not os.path.isfile(os.path.join(path, "model_index.json")):
        t = time.perf_counter()
        entry["reduced"] = build(a.model, path, a.dtype, tuple(int(x) for x in a.flux_blocks.split(",")))
        entry["build_s"] = round(time.perf_counter() - t, 1)
        gc.collect()  # the built pipeline is gone; the runs are separate processes
    entry.update(steps=a.steps, dtype=a.dtype, resolution=a.resolution, prompts="coco2017:1")
    only = set(a.only.split(",")) if a.only else None
    for name, cmd in cells(a.model, path, a.work, a.steps, a.resolution, a.dtype):
        if only and name not in only:
            continue
        r = timed(cmd, os.path.join(a.work, f"{a.model}-{re.sub(r'[^a-z0-9]+', '-', name.lower()).strip('-')}.log"))
        entry["cells"][name] = r
        print(f"{a.model} | {name}: rc {r['rc']}, {r['wall_s']} s, peak RSS {r['peak_rss_gib']} GiB {r['error'] or ''}", flush=True)
        with open(out_json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
