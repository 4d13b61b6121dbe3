"""``diffusers``: diffusers' own quantization backends, each built through diffusers' own
``PipelineQuantizationConfig`` and run through the same harness (paired metrics, sizes from the
stored tensors, latency labelled by what runs), labelled with the backend library's version.

    qbench run --method diffusers -O backend=quanto -O config=int8 --model tiny-flux
    qbench run --method diffusers -O backend=torchao --bits W8A8 -O components=transformer
    qbench run --method diffusers -O backend=bitsandbytes_4bit --bits W4A16      # CUDA only

How: diffusers quantizes at load time, so ``convert`` re-loads the components to quantize from
the model's weights folder (``LoadedModel.where``) with
``Pipeline.from_pretrained(where, quantization_config=PipelineQuantizationConfig(quant_mapping=
{component: <backend config>}), **every other component of the loaded pipeline)`` and swaps the
new pipeline in (``Capabilities.reloads_components``). The full-precision references are made
before, from the pipeline as loaded.

``-O backend=`` / ``-O config=`` (or ``--bits``; both given: they must agree). All backends
quantize weights only (``W*A16``: activations stay in the model's float dtype), except
bitsandbytes 8-bit (LLM.int8(), Dettmers et al. 2022: int8 vector-wise activations and weights,
outlier features above ``llm_int8_threshold`` = 6 in 16 bits) and torchao ``int8dq``:

=================  =======  =====  =========================================================
backend            config   bits   diffusers config (what executes)
=================  =======  =====  =========================================================
bitsandbytes_4bit  nf4/fp4  W4A16  BitsAndBytesConfig(load_in_4bit, bnb_4bit_quant_type): 4-bit
                                   codes per block of 64 with absmax (QLoRA's NF4 or FP4),
                                   dequantized per call; needs a CUDA/XPU GPU (diffusers refuses
                                   without one)
bitsandbytes_8bit  int8     W8A8   BitsAndBytesConfig(load_in_8bit): LLM.int8(); needs CUDA/XPU
quanto             int8     W8A16  QuantoConfig(weights_dtype): int8 per-channel weights,
                   int4     W4A16  quanto::qbytes_mm; int4/int2 packed, per group of 128 inputs
                   int2     W2A16  (96/64/32 where 128 does not divide, per row for rows <= 128),
                                   quanto's kernel or dequantized per call (optimum-quanto)
torchao            int8wo   W8A16  TorchAoConfig(Int8WeightOnlyConfig())
                   int8dq   W8A8   TorchAoConfig(Int8DynamicActivationInt8WeightConfig())
                   intx4wo  W4A16  TorchAoConfig(IntxWeightOnlyConfig(int4, PerGroup(32)))
=================  =======  =====  =========================================================

The other backends of diffusers are refused in one line: ``modelopt`` and ``sdnq`` name the
package to install (qbench has not mapped their configs), ``gguf``, ``bfl``, ``auto-round`` and
``nunchaku_lite`` load checkpoints that are already quantized (score such a pipeline with
``qbench.harness.run(cfg, pipe=...)``). ``-O components=`` (comma-separated; default the
denoiser, ``denoiser`` names it): diffusers models of the pipeline (denoiser, ``vae``); its
text encoders are transformers models, which diffusers' configs do not quantize. Sizes count
what the backends store (:func:`qbench.models.base.tensor_parts`). Not exportable.
"""
from __future__ import annotations

import importlib.util
import inspect
import json
from typing import TYPE_CHECKING, Any

from qbench.api import Capabilities, Method
from qbench.errors import ConfigError, QBenchError

if TYPE_CHECKING:  # pragma: no cover
    from qbench.models.base import LoadedModel

#: backend -> (module, pip name, {config: (bits, what executes)}, needs a GPU)
BACKENDS: dict[str, tuple[str, str, dict[str, tuple[str, str]], bool]] = {
    "bitsandbytes_4bit": ("bitsandbytes", "bitsandbytes", {
        "nf4": ("W4A16", "bitsandbytes Linear4bit: NF4 codes per block of 64 with absmax, dequantized per call, float GEMM"),
        "fp4": ("W4A16", "bitsandbytes Linear4bit: FP4 codes per block of 64 with absmax, dequantized per call, float GEMM")}, True),
    "bitsandbytes_8bit": ("bitsandbytes", "bitsandbytes", {
        "int8": ("W8A8", "bitsandbytes Linear8bitLt: LLM.int8() int8 x int8 GEMM, outlier features (> 6) in 16 bits")}, True),
    "quanto": ("optimum.quanto", "optimum-quanto", {
        "int8": ("W8A16", "optimum-quanto QLinear, WeightQBytesTensor: int8 per-channel weights, quanto::qbytes_mm (scaled weights, float matmul)"),
        "int4": ("W4A16", "optimum-quanto QLinear, WeightQBitsTensor: packed int4 per group of <= 128 inputs, quanto's kernel or dequantized per call, float matmul"),
        "int2": ("W2A16", "optimum-quanto QLinear, WeightQBitsTensor: packed int2 per group of <= 128 inputs, dequantized per call, float matmul")}, False),
    "torchao": ("torchao", "torchao", {
        "int8wo": ("W8A16", "torchao Int8Tensor weight-only: int8 per-row weights, converted per call, float GEMM"),
        "int8dq": ("W8A8", "torchao Int8Tensor: int8 per-token dynamic activations x int8 per-row weights, torch._int_mm + rescale"),
        "intx4wo": ("W4A16", "torchao IntxUnpackedToInt8Tensor: int4 per group of 32 (one per int8 byte), dequantized per call, float GEMM")}, False),
}
#: backends of diffusers qbench refuses: -> the one line why (and what to install)
REFUSED: dict[str, str] = {
    "modelopt": "needs the package nvidia-modelopt (pip install nvidia-modelopt) and a CUDA GPU; qbench has not mapped its configs to --bits",
    "sdnq": "needs the package sdnq (pip install sdnq); qbench has not mapped its configs to --bits",
    "gguf": "loads .gguf files that are already quantized (pip install gguf; diffusers' from_single_file), it does not quantize float weights",
    "bfl": "loads BFL fp8r/nvfp4 checkpoints that are already quantized, it does not quantize float weights",
    "auto-round": "loads AutoRound checkpoints that are already quantized (pip install auto-round), it does not quantize float weights",
    "nunchaku_lite": "loads Nunchaku checkpoints that are already quantized (pip install kernels; a CUDA GPU), it does not quantize float weights",
}
LIBRARY = {"bitsandbytes": "bitsandbytes", "optimum.quanto": "optimum-quanto", "torchao": "torchao"}  # module -> distribution


def _options() -> tuple:
    from qbench.options import Opt

    return (
        Opt("backend", "str", None, "diffusers quantization backend: " + ", ".join(f"{b} ({'/'.join(c)})" for b, (_, _, c, _) in BACKENDS.items()),
            choices=tuple(BACKENDS) + tuple(REFUSED)),
        Opt("config", "str", None, "the backend's format (default: the one matching --bits, else the first listed)"),
        Opt("components", "str", None, "comma-separated diffusers components to quantize (default: the denoiser; 'denoiser' names it)"),
    )


def version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def model_components(pipeline_class: str) -> dict[str, bool]:
    """``{component: is a diffusers model}`` of a diffusers pipeline class, from its ``__init__``
    annotations (no weights read): only diffusers models (``ModelMixin``) take diffusers' configs."""
    import diffusers

    cls = getattr(diffusers, pipeline_class)
    out = {}
    for name, p in inspect.signature(cls.__init__).parameters.items():
        ann = p.annotation if isinstance(p.annotation, str) else getattr(p.annotation, "__name__", "")
        found = getattr(diffusers, ann, None) if ann.isidentifier() else None
        if name != "self" and ann and ann[0].isupper():
            out[name] = isinstance(found, type) and issubclass(found, diffusers.ModelMixin)
    return out


class DiffusersBackend(Method):
    name = "diffusers"
    description = "diffusers' own quantization backends (PipelineQuantizationConfig): bitsandbytes 4/8-bit, quanto, torchao; labelled with their versions"
    uses_bits = True
    OPTIONS = _options()
    CAPABILITIES = Capabilities(exportable=False, reloads_components=True,
                                export_hint="diffusers-quantized pipelines are saved with diffusers' save_pretrained (each backend serializes its own tensors)")

    def __init__(self, cfg):
        super().__init__(cfg)
        if cfg.mode:
            raise ConfigError(f"method 'diffusers' runs the backend's own layers: --mode {cfg.mode} does not apply (the backend decides)")
        backend = self.options.get("backend")
        if backend is None:
            raise ConfigError("method 'diffusers' needs -O backend=" + "|".join(BACKENDS))
        import diffusers
        from diffusers.quantizers.auto import AUTO_QUANTIZATION_CONFIG_MAPPING

        if backend not in AUTO_QUANTIZATION_CONFIG_MAPPING:
            raise ConfigError(f"the installed diffusers {diffusers.__version__} has no quantization backend {backend!r}")
        if backend in REFUSED:
            raise ConfigError(f"method 'diffusers' -O backend={backend} {REFUSED[backend]}")
        module, pip, configs, gpu = BACKENDS[backend]
        self.backend, self.module = backend, module
        self.config_name = self._pick_config(configs, cfg.bits)
        self.bits, self.execution = configs[self.config_name]
        if importlib.util.find_spec(module.partition(".")[0]) is None or importlib.util.find_spec(module) is None:
            raise ConfigError(f"method 'diffusers' -O backend={backend} needs the package {pip}, which is not installed (pip install {pip})")
        self.library = {"diffusers": diffusers.__version__, pip: version(pip)}
        self.LIBRARIES = ("diffusers", pip)  # its version changes the quantized weights and kernels: part of every identity
        from qbench.models.loader import get_spec, resolve_device

        try:
            spec = get_spec(cfg.model)
            device = resolve_device(cfg.device)
        except QBenchError:  # the model or device is refused by its own check
            spec = device = None
        if gpu and device == "cpu":
            raise ConfigError(f"method 'diffusers' -O backend={backend}: diffusers {diffusers.__version__} quantizes with bitsandbytes on a CUDA/XPU GPU "
                              "only (its quantizer refuses without one) and this run is on the CPU; use -O backend=quanto or torchao here")
        self.components = self._pick_components(spec)
        self.dtype = self._dtype(spec, device, cfg.dtype)
        self._config_dict: dict[str, Any] | None = None
        self._report: dict[str, Any] = {}

    # -- configuration ----------------------------------------------------------------------------------
    def _pick_config(self, configs: dict[str, tuple[str, str]], bits: str | None) -> str:
        name = self.options.get("config")
        listing = ", ".join(f"{k} = {v[0]}" for k, v in configs.items())
        if name is not None and name not in configs:
            raise ConfigError(f"method 'diffusers' -O backend={self.backend} has no config {name!r} (configs: {listing})")
        if bits:
            if name is None:
                name = next((k for k, v in configs.items() if v[0] == bits), None)
                if name is None:
                    raise ConfigError(f"method 'diffusers' -O backend={self.backend} has no config for --bits {bits} (configs: {listing})")
            elif configs[name][0] != bits:
                raise ConfigError(f"method 'diffusers': --bits {bits} and -O config={name} ({configs[name][0]}) disagree; give one of them")
        return name or next(iter(configs))

    def _pick_components(self, spec) -> tuple[str, ...]:
        given = [c.strip() for c in str(self.options.get("components") or "denoiser").split(",") if c.strip()]
        if spec is None:
            return tuple(given)
        named = [spec.denoiser if c == "denoiser" else c for c in given]
        comps = model_components(spec.pipeline_class)
        for c in named:
            if c not in comps:
                raise ConfigError(f"method 'diffusers' -O components: {c!r} is not a component of {spec.pipeline_class} "
                                  f"(diffusers models: {', '.join(k for k, v in comps.items() if v)})")
            if not comps[c]:
                raise ConfigError(f"method 'diffusers' -O components: {c!r} is a transformers model, which diffusers' quantization configs do not "
                                  f"quantize (diffusers models: {', '.join(k for k, v in comps.items() if v)})")
        if not named:
            raise ConfigError("method 'diffusers' -O components: name at least one component")
        return tuple(dict.fromkeys(named))

    @staticmethod
    def _dtype(spec, device, dtype) -> str | None:
        if spec is None or device is None:
            return None
        from qbench.models.loader import resolve_dtype

        try:
            return str(resolve_dtype(spec, device, dtype)).replace("torch.", "")
        except QBenchError:  # refused by the dtype's own check
            return None

    def quantization_config(self, dtype=None, skip: list[str] | None = None) -> Any:
        """diffusers' config object of this backend and config (one per component); ``skip``:
        layers torchao's per-group config leaves in floating point (``modules_to_not_convert``)."""
        import torch
        from diffusers import BitsAndBytesConfig, QuantoConfig, TorchAoConfig

        if self.backend == "bitsandbytes_4bit":
            return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=self.config_name,
                                      bnb_4bit_compute_dtype=dtype or getattr(torch, self.dtype or "float32"))
        if self.backend == "bitsandbytes_8bit":
            return BitsAndBytesConfig(load_in_8bit=True)
        if self.backend == "quanto":
            import warnings

            with warnings.catch_warnings():  # diffusers deprecates QuantoConfig for 1.0: it still quantizes with optimum-quanto
                warnings.simplefilter("ignore", FutureWarning)
                return QuantoConfig(weights_dtype=self.config_name)
        import torchao.quantization as tq
        from torchao.quantization.granularity import PerGroup

        ao = {"int8wo": lambda: tq.Int8WeightOnlyConfig(set_inductor_config=False),
              "int8dq": lambda: tq.Int8DynamicActivationInt8WeightConfig(set_inductor_config=False),
              "intx4wo": lambda: tq.IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(32))}[self.config_name]()
        return TorchAoConfig(quant_type=ao, modules_to_not_convert=skip or None)

    def config_dict(self) -> dict[str, Any]:
        """The backend config as diffusers serializes it (``to_dict``), JSON-safe; built once."""
        if self._config_dict is None:
            self._config_dict = json.loads(json.dumps(self.quantization_config().to_dict(), sort_keys=True, default=str))
        return self._config_dict

    # -- convert ------------------------------------------------------------------------------------------
    def convert(self, model: LoadedModel) -> None:
        import os

        from diffusers import PipelineQuantizationConfig

        from qbench.models.base import module_nbytes

        if model.where is None:
            raise ConfigError("method 'diffusers' re-loads components from the model's weights folder: it needs a pipeline qbench loaded")
        pipe = model.pipe
        before = {c: module_nbytes(getattr(pipe, c)) for c in self.components}
        keep = {k: v for k, v in pipe.components.items() if k not in self.components}
        skipped = {c: self._unfit(getattr(pipe, c)) for c in self.components}
        mapping = {c: self.quantization_config(model.dtype, [n for n, _ in skipped[c]]) for c in self.components}
        try:
            new = type(pipe).from_pretrained(model.where, quantization_config=PipelineQuantizationConfig(quant_mapping=mapping), torch_dtype=model.dtype,
                                             local_files_only=os.path.isdir(model.where), **keep)
        except (ValueError, RuntimeError, ImportError, TypeError, AssertionError) as e:
            raise QBenchError(f"diffusers could not quantize {', '.join(self.components)} with {self.backend} {self.config_name}: "
                              f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
        new.set_progress_bar_config(disable=True)
        new.to(model.device)
        model.pipe = new
        model.inference_mode = not (self.backend == "quanto" and self.config_name in ("int4", "int2"))  # quanto 0.2.7's packed weights fail under it
        comps: dict[str, Any] = {}
        for c in self.components:
            mod = getattr(new, c)
            types = self._tensor_types(mod)
            comps[c] = {"layers_quantized": sum(types.values()), "tensor_types": types, "bytes_before": before[c], "bytes_after": module_nbytes(mod),
                        "skipped": [{"name": n, "reason": why} for n, why in skipped[c]]}
        n = sum(r["layers_quantized"] for r in comps.values())
        if not n:
            raise ConfigError(f"method 'diffusers' -O backend={self.backend} quantized no layer of {', '.join(self.components)}")
        self._report = {
            "backend": self.backend, "config": self.config_name, "libraries": dict(self.library), "quantization_config": self.config_dict(),
            "layers_quantized": n, "kernel_path": self.execution, "execution": self.execution, "components": comps,
            "bytes_before": sum(r["bytes_before"] for r in comps.values()), "bytes_after": sum(r["bytes_after"] for r in comps.values()),
            "grad_mode": "inference_mode" if model.inference_mode else "no_grad (quanto's packed weights cannot run under inference_mode)",
        }

    def _unfit(self, module) -> list[tuple[str, str]]:
        """Linear layers torchao's int4 per-group config cannot take (it asserts on them):
        ``[(name, why)]``, left in floating point and listed in the report."""
        from torch import nn

        if self.config_name != "intx4wo":
            return []
        return [(n, f"in_features {m.in_features} is not a multiple of group_size 32") for n, m in module.named_modules()
                if isinstance(m, nn.Linear) and m.in_features % 32]

    @staticmethod
    def _quantized(mod) -> bool:
        """A layer whose weight is a backend's quantized tensor (a tensor subclass or bitsandbytes parameter)."""
        import torch
        from torch import nn

        w = getattr(mod, "weight", None)
        return isinstance(w, torch.Tensor) and type(w) not in (nn.Parameter, torch.Tensor)

    def _tensor_types(self, module) -> dict[str, int]:
        types: dict[str, int] = {}
        for _, m in module.named_modules():
            if self._quantized(m):
                types[type(m.weight).__name__] = types.get(type(m.weight).__name__, 0) + 1
        return types

    # -- bookkeeping ----------------------------------------------------------------------------------------
    @property
    def mode(self) -> str:
        return "kernel"  # the backend's stored low-bit tensors and its own layers run (what executes: report's kernel_path)

    def describe(self) -> dict[str, Any]:
        return {"method": self.name, "bits": self.bits, "mode": self.mode,
                "options": {"backend": self.backend, "config": self.config_name, "components": list(self.components)},
                "diffusers": {"backend": self.backend, "libraries": dict(self.library), "dtype": self.dtype, "quantization_config": self.config_dict()}}

    def report(self) -> dict[str, Any]:
        return dict(self._report)

    @property
    def label(self) -> str:
        return f"diffusers {self.backend} {self.config_name} {self.bits}"

    def bit_map(self, model: LoadedModel) -> dict[str, dict[str, Any]]:
        """Per Linear layer of the denoiser: the config's weight and activation bits where the
        backend quantized it, 16/16 where it left it in floating point."""
        from torch import nn

        from qbench.models.base import logical_numel

        w_bits, a_bits = int(self.bits[1:self.bits.index("A")]), int(self.bits[self.bits.index("A") + 1:])
        out: dict[str, dict[str, Any]] = {}
        for name, m in model.denoiser.named_modules():
            if isinstance(m, nn.Linear):
                q = self._quantized(m)
                out[name] = {"w": w_bits if q else 16, "a": a_bits if q else 16, "params": int(logical_numel(m.weight))}
        return out
