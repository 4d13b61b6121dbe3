"""Paper-scale planning: ``qbench plan SWEEP.yaml --gpus 8`` — images, forward passes, FLOPs and
estimated GPU time of every cell of a sweep, before anything runs.

FLOPs per image are **computed**, not guessed: each real model's denoiser and VAE decoder are
built from their public configs on PyTorch's ``meta`` device (no weights, no memory) and run once
under ``torch.utils.flop_counter.FlopCounterMode`` (matmul, convolution and attention FLOPs) at
the model's default resolution; a tiny or toy model is counted from its own shipped/built config.
Per image: ``steps x denoiser forward (x2 with classifier-free guidance) + VAE decode``; text
encoders are left out (once per image, < 1 % for these models).

Time = FLOPs / (GPU peak dense 16-bit TFLOP/s x MFU). The peaks are the vendors' datasheet
numbers; the model-FLOPs utilisation (MFU, default 0.40) is an ASSUMPTION until qbench has measured
a GPU (none was available when this was written): pass ``--mfu`` / ``--tflops`` from your own run.
Simulate-mode quantization is costed as 16-bit (fake quantization runs float GEMMs). Images that
several cells share (a sweep's fp images are the fp references of its quantized cells: the same
image-cache key) are counted once.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any

#: dense FP16/BF16 tensor-core peaks (TFLOP/s, without sparsity), vendor datasheets
GPU_PEAK_TFLOPS = {"h200": 989.0, "h100": 989.0, "a100": 312.0, "l40s": 362.0, "rtx4090": 165.2, "a10g": 125.0}
DEFAULT_MFU = 0.40

# Public configs of the real denoisers (the `config.json` of each hub repo), enough to build them.
_SD15_UNET = dict(cross_attention_dim=768, attention_head_dim=8, sample_size=64)
_UNETS = {
    "lcm": dict(_SD15_UNET, time_cond_proj_dim=256),
    "pcm": _SD15_UNET,
    "sdxl-turbo": dict(
        sample_size=64, block_out_channels=(320, 640, 1280), layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
    ),
}
_VAE = dict(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2)


def meta_denoiser(family: str):
    """The real denoiser of ``family`` (``lcm``, ``pcm``, ``sdxl-turbo``, ``flux-schnell``) built
    from its public config on the meta device (no weights, no memory), or None for another family:
    its layers, e.g. for counting a calibration's per-layer work before any download."""
    import torch
    from diffusers import FluxTransformer2DModel, UNet2DConditionModel

    if family != "flux-schnell" and family not in _UNETS:
        return None
    with torch.device("meta"):
        return FluxTransformer2DModel() if family == "flux-schnell" else UNet2DConditionModel(**_UNETS[family])


def _count(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        fn()
    return float(fc.get_total_flops())


@lru_cache(maxsize=None)
def model_flops(family: str, resolution: int, text_tokens: int = 77) -> dict[str, float]:
    """``{"denoiser": FLOPs of one forward at batch 1, "vae_decode": FLOPs, "params": denoiser
    parameters}`` of a real model family at ``resolution`` px, on the meta device."""
    import torch
    from diffusers import AutoencoderKL, FluxTransformer2DModel, UNet2DConditionModel

    lat = resolution // 8
    with torch.device("meta"):
        if family == "flux-schnell":
            den = FluxTransformer2DModel()  # diffusers' defaults are FLUX.1's dimensions
            n = (lat // 2) ** 2
            inputs = dict(hidden_states=torch.empty(1, n, 64), encoder_hidden_states=torch.empty(1, text_tokens, 4096),
                          pooled_projections=torch.empty(1, 768), timestep=torch.ones(1), img_ids=torch.zeros(n, 3),
                          txt_ids=torch.zeros(text_tokens, 3))
            vae = AutoencoderKL(**_VAE, latent_channels=16)
            z = torch.empty(1, 16, lat, lat)
        else:
            cfg = _UNETS[family]
            den = UNet2DConditionModel(**cfg)
            inputs = dict(sample=torch.empty(1, 4, lat, lat), timestep=torch.ones(1),
                          encoder_hidden_states=torch.empty(1, text_tokens, cfg["cross_attention_dim"]))
            if "time_cond_proj_dim" in cfg:
                inputs["timestep_cond"] = torch.empty(1, cfg["time_cond_proj_dim"])
            if cfg.get("addition_embed_type") == "text_time":
                inputs["added_cond_kwargs"] = {"text_embeds": torch.empty(1, 1280), "time_ids": torch.empty(1, 6)}
            vae = AutoencoderKL(**_VAE, latent_channels=4)
            z = torch.empty(1, 4, lat, lat)
    return {
        "denoiser": _count(lambda: den(**inputs)),
        "vae_decode": _count(lambda: vae.decode(z)),
        "params": float(sum(p.numel() for p in den.parameters())),
    }


def image_flops(spec, steps: int | None = None, guidance: float | None = None, resolution: int | None = None) -> dict[str, Any]:
    """FLOPs of one generated image of a registered model (real families only)."""
    steps = steps or spec.steps
    g = spec.guidance if guidance is None else guidance
    res = resolution or spec.resolution
    tokens = int(spec.call_kwargs.get("max_sequence_length", 77))
    f = model_flops(spec.family, res, tokens)
    # classifier-free guidance doubles the denoiser batch; LCM embeds its guidance (w) instead
    cfg_factor = 2 if (g > 1.0 and spec.pipeline_class in ("StableDiffusionPipeline", "StableDiffusionXLPipeline")) else 1
    per_image = steps * cfg_factor * f["denoiser"] + f["vae_decode"]
    return {"per_image": per_image, "denoiser_forward": f["denoiser"], "forwards": steps * cfg_factor, "vae_decode": f["vae_decode"],
            "denoiser_params": f["params"], "resolution": res, "steps": steps}


def plan_sweep(sweep, gpus: int = 1, gpu: str = "h100", mfu: float = DEFAULT_MFU, tflops: float | None = None,
               prompt_counts: dict[str, int] | None = None) -> dict[str, Any]:
    """Per cell and total: images (new and shared), calibration images, forward passes, PFLOPs,
    GPU-hours and wall time on ``gpus`` GPUs (perfect sharding of images across GPUs).
    ``prompt_counts``: ``{prompt spec: n}`` taken as given instead of loading those prompt sets
    (``qbench reproduce --plan``: a published table states its n; its set may be a hub download)."""
    from qbench.errors import ConfigError
    from qbench.generation import fp_method

    if gpus < 1:
        raise ConfigError(f"--gpus must be >= 1, got {gpus}")
    if tflops is None:
        if gpu not in GPU_PEAK_TFLOPS:
            raise ConfigError(f"unknown GPU {gpu!r}; known: {', '.join(GPU_PEAK_TFLOPS)} (or pass --tflops)")
        tflops = GPU_PEAK_TFLOPS[gpu] * mfu
    seen: set[str] = set()
    rows, total = [], {"images": 0, "calibration_images": 0, "forwards": 0, "pflops": 0.0, "gpu_hours": 0.0}
    for cfg in sweep.cells:
        spec = _spec(cfg.model)
        cost = image_flops(spec, cfg.steps, cfg.guidance, cfg.resolution)
        method = _method(cfg)
        n = (prompt_counts or {}).get(cfg.prompts) or _n_prompts(cfg, spec)
        new = 0
        for desc in [method.describe()] + ([fp_method(cfg).describe()] if _needs_fp(cfg, spec) else []):
            key = repr((cfg.model, cfg.prompts or spec.default_prompts, cfg.seed, cfg.steps, cfg.guidance, cfg.resolution, cfg.batch_size, desc))
            if key not in seen:
                seen.add(key)
                new += n
        cc = (method.calibration_cost(method.calibration_prompts_n) or {}) if method.calibration_prompts_n else {}
        calib = cc.get("images", 0)
        images = new + calib
        # denoiser-only calibration work (e.g. MixDQ's output-SQNR replays of captured trajectories)
        calib_fwd = cc.get("sensitivity_denoiser_rows", 0) * cost["forwards"]
        flops = images * cost["per_image"] + calib_fwd * cost["denoiser_forward"]
        hours = flops / (tflops * 1e12) / 3600
        row = {"model": cfg.model, "method": method.label, "prompts": n, "images": new, "calibration_images": calib,
               "calibration_forwards": calib_fwd, "forwards": images * cost["forwards"] + calib_fwd, "pflops": flops / 1e15, "gpu_hours": hours, "wall_h": hours / gpus,
               "tflops_per_image": cost["per_image"] / 1e12}
        rows.append(row)
        for k in total:
            total[k] += row[k]
    total["wall_h"] = total["gpu_hours"] / gpus
    return {"cells": rows, "total": total, "gpus": gpus, "gpu": gpu, "effective_tflops": tflops, "mfu": mfu,
            "assumptions": "FLOPs counted on the meta device (denoiser x steps (x2 with CFG) + VAE decode; text encoders left out); "
                           "calibration counted: its images and MixDQ's sensitivity replays (denoiser forwards, layer counts from the real configs); "
                           f"time = FLOPs / ({tflops:.0f} effective TFLOP/s per GPU); images split evenly across GPUs"}


def _spec(name: str):
    from qbench.errors import ConfigError
    from qbench.models.loader import get_spec

    spec = get_spec(name)
    if not spec.is_real:
        raise ConfigError(f"qbench plan costs the real models (lcm, pcm, sdxl-turbo, flux-schnell); {name!r} runs in seconds on a CPU")
    return spec


def _method(cfg):
    from qbench.catalog import METHODS

    return METHODS.get(cfg.method)(cfg)


def _n_prompts(cfg, spec) -> int:
    from qbench.prompts import load_prompts

    return len(load_prompts(cfg.prompts or spec.default_prompts))


def _needs_fp(cfg, spec) -> bool:
    from qbench.catalog import METRICS

    names = cfg.metrics if cfg.metrics is not None else spec.default_metrics
    return cfg.method != "fp" and any(getattr(METRICS.get(n), "needs_fp_reference", False) for n in names if not METRICS.entry(n).meta.get("system"))
