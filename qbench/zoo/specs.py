"""ModelSpecs of the toy world's trained models (weights shipped in ``qbench/zoo/weights``)."""
from __future__ import annotations

from qbench.models.base import ModelSpec

TOY_METRICS = ("toy-acc", "clip", "clipiqa", "jaq", "fd-toyclip", "psnr", "ssim")

TOY_LCM = ModelSpec(
    name="toy-lcm",
    description="toy world: trained 4.3M-param UNet (v-prediction, SD DDPM schedule), LCM scheduler, 4 steps, 32 px",
    family="toy-lcm",
    pipeline_class="StableDiffusionPipeline",
    scheduler_class="LCMScheduler",
    scheduler_config={},
    denoiser="unet",
    steps=4,
    guidance=1.0,
    resolution=32,
    dtype="float32",
    default_metrics=TOY_METRICS,
    default_prompts="toy:64",
    calib_prompts="toy-calib",
    local_dir="zoo/weights/toy-lcm",
)

TOY_FLUX = ModelSpec(
    name="toy-flux",
    description="toy world: trained 2.3M-param Flux transformer (rectified flow), flow-match Euler shift 1, 4 steps, 32 px",
    family="toy-flux",
    pipeline_class="FluxPipeline",
    scheduler_class="FlowMatchEulerDiscreteScheduler",
    scheduler_config={"shift": 1.0, "use_dynamic_shifting": False},
    denoiser="transformer",
    steps=4,
    guidance=0.0,
    resolution=32,
    dtype="float32",
    call_kwargs={"max_sequence_length": 24},
    default_metrics=TOY_METRICS,
    default_prompts="toy:64",
    calib_prompts="toy-calib",
    accepts_guidance=False,
    local_dir="zoo/weights/toy-flux",
)
