"""The four real models (DESIGN.md §2.1) and their tiny offline twins.

A tiny twin has the SAME pipeline, denoiser, scheduler and text-encoder classes as its real
model, a small config and seeded random weights (`qbench/models/tiny.py`); it is written once to
the cache and loaded through the same ``from_pretrained`` path. Its numbers mean nothing about
image quality: they exercise the mechanics.
"""
from __future__ import annotations

import dataclasses

from qbench.models.base import ModelSpec

_FID_DEFAULTS = ("clip", "clipiqa", "jaq", "fid-fp", "psnr", "ssim")

LCM = ModelSpec(
    name="lcm",
    description="Latent Consistency Model distilled from Dreamshaper v7 (SD1.5)",
    family="lcm",
    pipeline_class="LatentConsistencyModelPipeline",
    scheduler_class="LCMScheduler",
    scheduler_config={},
    denoiser="unet",
    steps=4,
    guidance=8.0,
    resolution=512,
    dtype="float16",
    hub_id="SimianLuo/LCM_Dreamshaper_v7",
    default_metrics=_FID_DEFAULTS,
)

PCM = ModelSpec(
    name="pcm",
    description="Phased Consistency Model: SD1.5 + PCM smallcfg 8-step LoRA, TCD scheduler (eta=0)",
    family="pcm",
    pipeline_class="StableDiffusionPipeline",
    scheduler_class="TCDScheduler",
    scheduler_config={"timestep_spacing": "trailing"},
    denoiser="unet",
    steps=8,
    guidance=0.0,
    resolution=512,
    dtype="float16",
    hub_id="stable-diffusion-v1-5/stable-diffusion-v1-5",
    lora={"repo": "wangfuyun/PCM_Weights", "subfolder": "sd15", "weight_name": "pcm_sd15_smallcfg_8step_converted.safetensors"},
    call_kwargs={"eta": 0.0},
    default_metrics=_FID_DEFAULTS,
)

SDXL_TURBO = ModelSpec(
    name="sdxl-turbo",
    description="SDXL-Turbo (adversarial diffusion distillation), Euler ancestral with trailing spacing",
    family="sdxl-turbo",
    pipeline_class="StableDiffusionXLPipeline",
    scheduler_class="EulerAncestralDiscreteScheduler",
    scheduler_config={"timestep_spacing": "trailing"},
    denoiser="unet",
    steps=4,
    guidance=0.0,
    resolution=512,
    dtype="float16",
    hub_id="stabilityai/sdxl-turbo",
    default_metrics=_FID_DEFAULTS,
)

FLUX_SCHNELL = ModelSpec(
    name="flux-schnell",
    description="FLUX.1-schnell rectified-flow transformer, flow-match Euler (shift 1, no dynamic shifting)",
    family="flux-schnell",
    pipeline_class="FluxPipeline",
    scheduler_class="FlowMatchEulerDiscreteScheduler",
    scheduler_config={"shift": 1.0, "use_dynamic_shifting": False},
    denoiser="transformer",
    steps=4,
    guidance=0.0,
    resolution=1024,
    dtype="bfloat16",
    hub_id="black-forest-labs/FLUX.1-schnell",
    call_kwargs={"max_sequence_length": 256},
    accepts_guidance=False,  # guidance-distilled away: no guidance embedding, FluxPipeline ignores guidance_scale
    default_metrics=_FID_DEFAULTS,
)

_TINY_METRICS = ("psnr", "ssim")


def _tiny(real: ModelSpec, builder: str, **changes) -> ModelSpec:
    fields = dict(
        name=f"tiny-{real.name}",
        description=f"random-weight tiny twin of {real.name}",
        hub_id=None,
        resolution=64,
        dtype="float32",
        tiny_builder=f"qbench.models.tiny:{builder}",
        default_metrics=_TINY_METRICS,
        default_prompts="coco2017:4",
    )
    fields.update(changes)
    return dataclasses.replace(real, **fields)


TINY_LCM = _tiny(LCM, "build_tiny_lcm")
TINY_PCM = _tiny(PCM, "build_tiny_pcm", lora={"repo": "@local", "subfolder": "lora", "weight_name": "pytorch_lora_weights.safetensors"})
TINY_SDXL_TURBO = _tiny(SDXL_TURBO, "build_tiny_sdxl_turbo")
TINY_FLUX = _tiny(FLUX_SCHNELL, "build_tiny_flux", name="tiny-flux", call_kwargs={"max_sequence_length": 32})
