"""Model adapters: what a model is (ModelSpec) and a loaded pipeline (LoadedModel)."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from PIL.Image import Image


@dataclass(frozen=True)
class ModelSpec:
    """Defaults of one model (docs/conventions.md: the public Q-Sched code and the model cards), shared by the real model and its tiny twin."""

    name: str
    description: str
    family: str  # "lcm" | "pcm" | "sdxl-turbo" | "flux-schnell" | "toy-..."
    pipeline_class: str  # diffusers class name
    scheduler_class: str  # diffusers class name
    scheduler_config: dict[str, Any]  # overrides applied with from_config(...)
    denoiser: str  # "unet" | "transformer"
    steps: int
    guidance: float
    resolution: int
    dtype: str  # "float16" | "bfloat16" | "float32"
    hub_id: str | None = None  # real weights on the hub
    revision: str | None = None
    lora: dict[str, Any] | None = None  # {"repo": ..., "weight_name": ..., "subfolder": ...}
    call_kwargs: dict[str, Any] = field(default_factory=dict)  # extra pipeline(...) kwargs
    tiny_builder: str | None = None  # "module:function" that writes a random tiny twin to a folder
    local_dir: str | None = None  # weights shipped inside the qbench package (relative to it), e.g. the toy world
    default_metrics: tuple[str, ...] = ("psnr", "ssim")
    default_prompts: str = "coco2017:8"
    #: prompt set that calibrating methods take their first N prompts from; held out from the
    #: evaluation sets (``coco2017-calib`` is the tail of ``coco2017``)
    calib_prompts: str = "coco2017-calib"
    #: at most this many calibration prompts by default (None: the method's published size, e.g.
    #: MixDQ's 32). The random-weight tiny twins set 2: calibrating them is a smoke test of the
    #: code path (its scores mean nothing), and MixDQ's 32-prompt default takes about an hour on a
    #: 2-core CPU. ``--calib-prompts`` overrides it; the run prints which size it used.
    calib_size: int | None = None
    #: whether ``guidance`` changes the images (False for guidance-distilled models without a
    #: guidance embedding, e.g. FLUX.1-schnell: the pipeline ignores it)
    accepts_guidance: bool = True
    cpu_dtype: str = "float32"  # dtype used when running on CPU (fp16 matmuls are slow/unsupported there)

    @property
    def is_tiny(self) -> bool:
        return self.tiny_builder is not None

    @property
    def is_real(self) -> bool:
        """Real pretrained weights from the hub (not a tiny twin, not shipped toy weights)."""
        return self.hub_id is not None and self.tiny_builder is None and self.local_dir is None


@dataclass
class LoadedModel:
    spec: ModelSpec
    pipe: Any  # diffusers.DiffusionPipeline
    source: str  # where the weights came from: "hub:<id>@<rev>", "path:<dir>", "random tiny twin (seed 0)"
    device: str
    dtype: "torch.dtype"
    #: content fingerprint of local weight files (``qbench.imagecache.weights_fingerprint``); for
    #: hub snapshots the revision in ``source`` identifies the weights
    fingerprint: str | None = None
    #: the folder (or hub id) the pipeline was loaded from; a method that quantizes at load time
    #: re-loads components from it (``Capabilities.reloads_components``); None for a brought pipeline
    where: str | None = None
    #: generate under ``torch.inference_mode`` (True) or ``torch.no_grad`` (False: for a library
    #: whose tensor subclasses cannot run under inference mode, e.g. optimum-quanto 0.2.7's packed
    #: int4/int2 weights; the images are the same, only autograd bookkeeping differs)
    inference_mode: bool = True

    @property
    def denoiser(self) -> "torch.nn.Module":
        return getattr(self.pipe, self.spec.denoiser)

    @property
    def scheduler(self) -> Any:
        return self.pipe.scheduler

    def generate(
        self,
        prompts: list[str],
        seeds: list[int],
        *,
        steps: int | None = None,
        guidance: float | None = None,
        resolution: int | None = None,
        step_callback: Callable[[int], None] | None = None,
    ) -> "list[Image]":
        """One image per prompt; prompt i uses its own ``torch.Generator`` seeded with ``seeds[i]``,
        so its image does not depend on the batch it is in."""
        import torch

        if len(prompts) != len(seeds):
            raise ValueError("one seed per prompt")
        gen_device = "cpu" if self.device == "mps" else self.device
        generators = [torch.Generator(gen_device).manual_seed(int(s)) for s in seeds]
        res = resolution or self.spec.resolution
        kwargs: dict[str, Any] = dict(self.spec.call_kwargs)
        kwargs.update(
            prompt=list(prompts),
            num_inference_steps=steps or self.spec.steps,
            guidance_scale=self.spec.guidance if guidance is None else guidance,
            height=res,
            width=res,
            generator=generators,
            output_type="np",
        )
        if step_callback is not None:

            def _cb(pipe, i, t, callback_kwargs):  # diffusers' callback_on_step_end signature
                step_callback(i)
                return callback_kwargs

            kwargs["callback_on_step_end"] = _cb
        with torch.inference_mode() if self.inference_mode else torch.no_grad():
            out = self.pipe(**kwargs)
        return to_pil(out.images, prompts)


def to_pil(images: Any, prompts: list[str]) -> "list[Image]":
    """float images in [0, 1] (N, H, W, 3) -> PIL; NaN/inf anywhere raises NonFiniteOutputError."""
    import numpy as np
    from PIL import Image as PILImage

    from qbench.errors import NonFiniteOutputError

    arr = np.asarray(images)
    bad = [i for i in range(arr.shape[0]) if not np.isfinite(arr[i]).all()]
    if bad:
        raise NonFiniteOutputError(
            f"the model produced NaN/inf for {len(bad)} of {arr.shape[0]} images (first prompt: {prompts[bad[0]]!r})"
        )
    u8 = (np.clip(arr, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    return [PILImage.fromarray(u8[i]) for i in range(u8.shape[0])]


def tensor_parts(t: "torch.Tensor") -> "list[torch.Tensor]":
    """The plain tensors that hold ``t``'s data: ``[t]`` for an ordinary tensor; for a tensor
    subclass that wraps others (torchao's ``Int8Tensor``, ``IntxUnpackedToInt8Tensor``,
    ``AffineQuantizedTensor``: ``__tensor_flatten__``), its inner tensors, recursively. A
    subclass reports its logical dtype (e.g. float32) while storing int8 codes and scales:
    these parts are what it stores. bitsandbytes' parameters keep their statistics beside the
    codes: ``Params4bit`` (packed 4-bit codes, uint8) its ``quant_state`` (absmax per block,
    the code book, nested statistics with double quantization), ``Int8Params`` its per-row
    scales ``SCB``: they are parts too."""
    flatten = getattr(type(t), "__tensor_flatten__", None)
    if flatten is None:
        state = getattr(t, "quant_state", None)
        extra = [v for v in state.as_dict(packed=False).values() if hasattr(v, "untyped_storage")] if hasattr(state, "as_dict") else []
        scb = getattr(t, "SCB", None)
        return [t] + extra + ([scb] if scb is not None and hasattr(scb, "untyped_storage") else [])
    names, _ = t.__tensor_flatten__()
    out: list = []
    for n in names:
        inner = getattr(t, n)
        if inner is not None:
            out.extend(tensor_parts(inner))
    return out


def logical_numel(t: "torch.Tensor") -> int:
    """Elements of the weight ``t`` stands for: ``t.numel()``, except for bitsandbytes'
    ``Params4bit``, which holds two 4-bit codes per uint8 and records the original shape in its
    ``quant_state``."""
    import math

    shape = getattr(getattr(t, "quant_state", None), "shape", None)
    return math.prod(shape) if shape is not None else t.numel()


def module_nbytes(module: "torch.nn.Module") -> int:
    """Exact bytes of a module's stored tensors (parameters and buffers, each storage once).

    Quantized layers register their packed weights, scales and zeros as buffers, so this is the
    true stored size of a quantized denoiser; a tensor subclass (torchao) counts the tensors it
    stores (:func:`tensor_parts`), not its logical shape times its logical dtype.
    """
    seen: set[int] = set()
    total = 0
    for p in list(module.parameters()) + list(module.buffers()):
        for t in tensor_parts(p):
            key = t.untyped_storage().data_ptr() if t.device.type != "meta" else id(t)
            if key in seen and key != 0:
                continue
            seen.add(key)
            total += t.numel() * t.element_size()
    return total


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def now() -> float:
    return time.perf_counter()


def cache_root() -> str:
    """Where tiny twins and other generated artefacts live (``QBENCH_CACHE`` overrides)."""
    return os.environ.get("QBENCH_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "qbench")
