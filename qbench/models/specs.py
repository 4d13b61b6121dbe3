"""The four real models and their tiny offline twins; the real denoisers' public configs (``REAL_DENOISERS``).

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
        calib_size=2,
    )
    fields.update(changes)
    return dataclasses.replace(real, **fields)


TINY_LCM = _tiny(LCM, "build_tiny_lcm")
TINY_PCM = _tiny(PCM, "build_tiny_pcm", lora={"repo": "@local", "subfolder": "lora", "weight_name": "pytorch_lora_weights.safetensors"})
TINY_SDXL_TURBO = _tiny(SDXL_TURBO, "build_tiny_sdxl_turbo")
TINY_FLUX = _tiny(FLUX_SCHNELL, "build_tiny_flux", name="tiny-flux", call_kwargs={"max_sequence_length": 32})

# -- the real denoisers' architectures (public configs; for `qbench size`, built on the meta device) --
#: SD1.5 UNet, ``unet/config.json`` of stable-diffusion-v1-5/stable-diffusion-v1-5 (859,520,964 parameters)
_SD15_UNET = dict(
    in_channels=4, out_channels=4, center_input_sample=False, flip_sin_to_cos=True, freq_shift=0,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, downsample_padding=1, mid_block_scale_factor=1,
    act_fn="silu", norm_num_groups=32, norm_eps=1e-5, cross_attention_dim=768, attention_head_dim=8,
)

#: ``{model name: (diffusers class, config, source)}``. LCM: the SD1.5 UNet plus the guidance-scale
#: embedding of LCM distillation (``time_cond_proj_dim: 256`` in SimianLuo/LCM_Dreamshaper_v7's
#: ``unet/config.json``; diffusers' LatentConsistencyModelPipeline feeds it ``w``). PCM: the SD1.5
#: UNet (the PCM LoRA is fused into it: no extra weights). SDXL-Turbo: the SDXL base UNet
#: (stabilityai/sdxl-turbo ``unet/config.json``). FLUX.1-schnell: black-forest-labs/FLUX.1-schnell
#: ``transformer/config.json`` (no guidance embedding, unlike FLUX.1-dev).
REAL_DENOISERS = {
    "lcm": ("UNet2DConditionModel", dict(_SD15_UNET, time_cond_proj_dim=256), "SimianLuo/LCM_Dreamshaper_v7 unet/config.json"),
    "pcm": ("UNet2DConditionModel", dict(_SD15_UNET), "stable-diffusion-v1-5/stable-diffusion-v1-5 unet/config.json (+ fused PCM LoRA)"),
    "sdxl-turbo": ("UNet2DConditionModel", dict(
        in_channels=4, out_channels=4, flip_sin_to_cos=True, freq_shift=0,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(320, 640, 1280), layers_per_block=2, attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
        transformer_layers_per_block=(1, 2, 10), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816, norm_num_groups=32, act_fn="silu",
    ), "stabilityai/sdxl-turbo unet/config.json"),
    "flux-schnell": ("FluxTransformer2DModel", dict(
        patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128, num_attention_heads=24,
        joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=False, axes_dims_rope=(16, 56, 56),
    ), "black-forest-labs/FLUX.1-schnell transformer/config.json"),
}
