"""Builders of the tiny offline twins: the real pipeline classes with small configs and seeded
random weights, written with ``save_pretrained`` so they load through ``from_pretrained``.

Configs follow the shapes diffusers' own tests use for these pipelines; every twin is 64 px.
Tokenizers are CLIP BPE tokenizers built from the open_clip wheel (`tokenizer.py`); the Flux
twin uses that tokenizer for its T5 encoder too (a T5 SentencePiece model is not available
offline) — the T5EncoderModel class itself is the real one.
"""
from __future__ import annotations

import os

from qbench.models.tokenizer import VOCAB_SIZE, clip_tokenizer

SEED = 0


def _seed() -> None:
    import torch

    torch.manual_seed(SEED)


def _clip_text(hidden: int = 32, projection: int | None = None):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=hidden,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
        projection_dim=projection or hidden,
        hidden_act="gelu",
    )
    return CLIPTextModelWithProjection(cfg) if projection else CLIPTextModel(cfg)


def _sd_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(16, 32),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
    )


def _sd_unet(**extra):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
        **extra,
    )


def _scheduler(cls_name: str, **cfg):
    import diffusers

    return getattr(diffusers, cls_name)(**cfg)


def build_tiny_lcm(out: str) -> None:
    from diffusers import LatentConsistencyModelPipeline

    _seed()
    pipe = LatentConsistencyModelPipeline(
        vae=_sd_vae(),
        text_encoder=_clip_text(),
        tokenizer=clip_tokenizer(os.path.join(out, "_tok")),
        unet=_sd_unet(time_cond_proj_dim=32),
        scheduler=_scheduler("LCMScheduler", beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out, safe_serialization=True)


def build_tiny_pcm(out: str) -> None:
    """SD1.5-style pipeline plus a random LoRA saved in diffusers' LoRA format, so the PCM
    LoRA load -> fuse -> unload path runs offline exactly as for the real PCM weights."""
    import torch
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig, get_peft_model_state_dict

    _seed()
    pipe = StableDiffusionPipeline(
        vae=_sd_vae(),
        text_encoder=_clip_text(),
        tokenizer=clip_tokenizer(os.path.join(out, "_tok")),
        unet=_sd_unet(),
        scheduler=_scheduler("DDPMScheduler", beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out, safe_serialization=True)
    unet = pipe.unet
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"], init_lora_weights=False))
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora_" in name:
                p.mul_(0.05)  # a gentle random LoRA: changes the output without blowing it up
    StableDiffusionPipeline.save_lora_weights(
        os.path.join(out, "lora"), unet_lora_layers=get_peft_model_state_dict(unet), safe_serialization=True
    )


def build_tiny_sdxl_turbo(out: str) -> None:
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel

    _seed()
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=80,  # 6 * 8 time ids + 32 pooled text
        cross_attention_dim=64,  # 32 (text_encoder) + 32 (text_encoder_2)
        norm_num_groups=8,
    )
    tok = clip_tokenizer(os.path.join(out, "_tok"))
    pipe = StableDiffusionXLPipeline(
        vae=_sd_vae(),
        text_encoder=_clip_text(),
        text_encoder_2=_clip_text(projection=32),
        tokenizer=tok,
        tokenizer_2=tok,
        unet=unet,
        scheduler=_scheduler(
            "EulerAncestralDiscreteScheduler",
            beta_schedule="scaled_linear",
            beta_start=0.00085,
            beta_end=0.012,
            timestep_spacing="trailing",
        ),
        force_zeros_for_empty_prompt=True,
    )
    pipe.save_pretrained(out, safe_serialization=True)


def build_tiny_flux(out: str) -> None:
    from diffusers import AutoencoderKL, FluxPipeline, FluxTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    _seed()
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,  # 4 latent channels x 2x2 packing
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        axes_dims_rope=[4, 4, 8],
    )
    vae = AutoencoderKL(
        block_out_channels=(16, 32),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.0609,
        scaling_factor=1.5035,
    )
    t5 = T5EncoderModel(
        T5Config(vocab_size=VOCAB_SIZE, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4, decoder_start_token_id=0, pad_token_id=49407, eos_token_id=49407)
    )
    tok = clip_tokenizer(os.path.join(out, "_tok"))
    pipe = FluxPipeline(
        scheduler=_scheduler("FlowMatchEulerDiscreteScheduler", shift=1.0, use_dynamic_shifting=False),
        vae=vae,
        text_encoder=_clip_text(),
        tokenizer=tok,
        text_encoder_2=t5,
        tokenizer_2=tok,
        transformer=transformer,
    )
    pipe.save_pretrained(out, safe_serialization=True)
