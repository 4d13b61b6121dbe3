"""``torchao``: the baselines users would deploy instead — torchao's own quantization configs,
run through the same harness (images, metrics, latency, memory, sizes), labelled with torchao's
version and the config's repr.

    qbench run --method torchao -O config=int8dq --model toy-flux
    qbench run --method torchao --bits W4A8 --model toy-flux          # = -O config=int8dq_int4w

``-O config=`` (or ``--bits``, mapped as in the table; both given: they must agree):

============  =====  ===================================================  =========  ==========================================
config        bits   torchao 0.18 config                                  mode       what executes (CPU)
============  =====  ===================================================  =========  ==========================================
int8dq        W8A8   Int8DynamicActivationInt8WeightConfig()              kernel     int8 per-token dynamic activations x int8
                                                                                     per-row weights: ``torch._int_mm`` + rescale
int8dq_int4w  W4A8   Int8DynamicActivationIntxWeightConfig(int4,          simulate   activations quantize-dequantized (asym int8
                     PerGroup(group_size))                                           per token), int4 weights (one per int8 byte)
                                                                                     dequantized per call, float GEMM
int8wo        W8A16  Int8WeightOnlyConfig()                               kernel     int8 per-row weights converted per call,
                                                                                     float GEMM, per-row rescale
intx4wo       W4A16  IntxWeightOnlyConfig(int4, PerGroup(group_size))     kernel     int4 weights (one per int8 byte) dequantized
                                                                                     per call, float GEMM
int4wo        W4A16  Int4WeightOnlyConfig(group_size)                     kernel     needs the package ``mslk``: refused without it
============  =====  ===================================================  =========  ==========================================

``mode`` says how the numbers are made, with qbench's words: ``kernel`` = the weights are stored
in their integer format and the layer runs from it (as qbench's own weight-only kernel mode does,
weight-only configs convert the weights per call); ``simulate`` = fake quantization (float GEMMs
plus quantize-dequantize), so its latency is not a deployment latency. ``--mode`` is refused:
the config decides. ``--bits`` maps W8A8 -> int8dq, W4A8 -> int8dq_int4w, W8A16 -> int8wo,
W4A16 -> int4wo. Every ``nn.Linear`` of the denoiser is quantized (torchao's default filter),
except layers whose input features are not a multiple of ``group_size`` for the per-group
configs (torchao would refuse them; the report lists them). ``set_inductor_config=False`` where the
config has it: qbench does not ``torch.compile``, and torchao would otherwise change global
inductor settings. Sizes count what torchao's tensor subclasses store (int8 codes, scales, zero
points: :func:`qbench.models.base.tensor_parts`). Not exportable with ``qbench export``.
"""
from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any

from qbench.api import Capabilities, Method
from qbench.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from qbench.models.base import LoadedModel

#: config -> (bits, torchao class, mode, per-group, what executes)
CONFIGS: dict[str, tuple[str, str, str, bool, str]] = {
    "int8dq": ("W8A8", "Int8DynamicActivationInt8WeightConfig", "kernel", False,
               "torchao Int8Tensor: int8 per-token dynamic activations x int8 per-row weights, torch._int_mm (int8 x int8 -> int32) + rescale"),
    "int8dq_int4w": ("W4A8", "Int8DynamicActivationIntxWeightConfig", "simulate", True,
                     "torchao IntxUnpackedToInt8Tensor: activations quantize-dequantized (asymmetric int8 per token), int4 weights stored one per "
                     "int8 byte and dequantized per call, float GEMM (no integer GEMM)"),
    "int8wo": ("W8A16", "Int8WeightOnlyConfig", "kernel", False, "torchao Int8Tensor weight-only: int8 per-row weights converted per call, float GEMM, per-row rescale"),
    "intx4wo": ("W4A16", "IntxWeightOnlyConfig", "kernel", True,
                "torchao IntxUnpackedToInt8Tensor weight-only: int4 weights stored one per int8 byte, dequantized per call, float GEMM"),
    "int4wo": ("W4A16", "Int4WeightOnlyConfig", "kernel", True, "torchao Int4Tensor weight-only (needs mslk)"),
}
BITS_TO_CONFIG = {"W8A8": "int8dq", "W4A8": "int8dq_int4w", "W8A16": "int8wo", "W4A16": "int4wo"}
#: configs that need an extra package: config -> (module, pip name)
NEEDS = {"int4wo": ("mslk", "mslk")}


def _options() -> tuple:
    from qbench.options import Opt

    return (
        Opt("config", "str", None, "torchao config: " + ", ".join(f"{k} ({v[0]})" for k, v in CONFIGS.items()), choices=tuple(CONFIGS)),
        Opt("group_size", "int", None, "input features per weight group of the int4 configs (default 32)", minimum=2),
    )


def torchao_version() -> str:
    from importlib import metadata

    return metadata.version("torchao")


class TorchAO(Method):
    name = "torchao"
    description = "torchao's own configs (int8dq W8A8, int8dq_int4w W4A8, int8wo, intx4wo, int4wo) as deployment baselines"
    uses_bits = True
    OPTIONS = _options()
    CAPABILITIES = Capabilities(exportable=False, export_hint="torchao-quantized models are saved with torchao's own serialization")
    LIBRARIES = ("torchao",)  # its kernels and quantization rules change with its version: part of every identity

    def __init__(self, cfg):
        super().__init__(cfg)
        if cfg.mode:
            raise ConfigError(f"method 'torchao' runs torchao's own kernels: --mode {cfg.mode} does not apply (the config decides; see `qbench list methods`)")
        cfg_name = self.options.get("config")
        if cfg.bits:
            mapped = BITS_TO_CONFIG.get(cfg.bits)
            if mapped is None:
                raise ConfigError(f"method 'torchao' has no config for --bits {cfg.bits} (torchao configs: "
                                  + ", ".join(f"{k} = {v[0]}" for k, v in CONFIGS.items()) + ")")
            if cfg_name is None:
                cfg_name = mapped
            elif CONFIGS[cfg_name][0] != cfg.bits:
                raise ConfigError(f"method 'torchao': --bits {cfg.bits} and -O config={cfg_name} ({CONFIGS[cfg_name][0]}) disagree; give one of them")
        if cfg_name is None:
            raise ConfigError("method 'torchao' needs -O config=" + "|".join(CONFIGS) + " (or --bits W8A8|W4A8|W8A16|W4A16)")
        self.config_name = cfg_name
        self.bits, self._cls_name, self._mode, self.per_group, self.execution = CONFIGS[cfg_name]
        if self.options.get("group_size") is not None and not self.per_group:
            raise ConfigError(f"method 'torchao' option group_size applies to the per-group int4 configs, not {cfg_name}")
        self.group_size = int(self.options.get("group_size") or 32) if self.per_group else None
        if cfg_name in NEEDS and importlib.util.find_spec(NEEDS[cfg_name][0]) is None:
            raise ConfigError(f"torchao {self._cls_name} (-O config={cfg_name}) needs the package {NEEDS[cfg_name][1]}, which is not installed "
                              f"(pip install {NEEDS[cfg_name][1]}); -O config=intx4wo is int4 weight-only without it")
        import torchao.quantization as tq

        if getattr(tq, self._cls_name, None) is None:
            raise ConfigError(f"the installed torchao {torchao_version()} has no {self._cls_name} (-O config={cfg_name})")
        self.config = self._make_config(tq)
        self._report: dict[str, Any] = {}

    def _make_config(self, tq) -> Any:
        import torch
        from torchao.quantization.granularity import PerGroup

        cls = getattr(tq, self._cls_name)
        if self.config_name == "int8dq_int4w":
            return cls(weight_dtype=torch.int4, weight_granularity=PerGroup(self.group_size))
        if self.config_name == "intx4wo":
            return cls(weight_dtype=torch.int4, granularity=PerGroup(self.group_size))
        if self.config_name == "int4wo":
            return cls(group_size=self.group_size, set_inductor_config=False)
        return cls(set_inductor_config=False)

    # -- which layers ---------------------------------------------------------------------------------
    def _why_not(self, mod) -> str | None:
        if self.group_size and mod.in_features % self.group_size:
            return f"in_features {mod.in_features} is not a multiple of group_size {self.group_size}"
        return None

    def check_layers(self, denoiser) -> None:
        from torch import nn

        if not any(isinstance(m, nn.Linear) and self._why_not(m) is None for m in denoiser.modules()):
            raise ConfigError(f"method 'torchao' -O config={self.config_name}: no Linear layer of the denoiser can be quantized"
                              + (f" (none has in_features divisible by group_size {self.group_size})" if self.group_size else ""))

    # -- convert ----------------------------------------------------------------------------------------
    def convert(self, model: LoadedModel) -> None:
        from torch import nn
        from torchao.quantization import quantize_

        from qbench.models.base import module_nbytes

        den = model.denoiser
        skipped: list[dict[str, str]] = []

        def filter_fn(mod, fqn: str) -> bool:
            if not isinstance(mod, nn.Linear):
                return False
            why = self._why_not(mod)
            if why:
                skipped.append({"name": fqn, "reason": why})
            return why is None

        before = module_nbytes(den)
        quantize_(den, self.config, filter_fn=filter_fn)
        types: dict[str, int] = {}
        n = 0
        for _, m in den.named_modules():
            if isinstance(m, nn.Linear) and type(m.weight) is not nn.Parameter:
                types[type(m.weight).__name__] = types.get(type(m.weight).__name__, 0) + 1
                n += 1
        if not n:
            raise ConfigError(f"method 'torchao' -O config={self.config_name} quantized no layer of the denoiser")
        self._report = {
            "torchao": torchao_version(),
            "config": repr(self.config),
            "layers_quantized": n,
            "tensor_types": types,
            "skipped": skipped,
            "kernel_path": self.execution,
            "execution": self.execution,
            "bytes_before": before,
            "bytes_after": module_nbytes(den),
        }

    # -- bookkeeping ------------------------------------------------------------------------------------
    @property
    def mode(self) -> str:
        return self._mode

    def describe(self) -> dict[str, Any]:
        opts: dict[str, Any] = {"config": self.config_name}
        if self.group_size:
            opts["group_size"] = self.group_size
        return {"method": self.name, "bits": self.bits, "mode": self.mode, "options": opts,
                "torchao": {"version": torchao_version(), "config": repr(self.config)}}

    def report(self) -> dict[str, Any]:
        return dict(self._report)

    @property
    def label(self) -> str:
        return f"torchao {self.config_name} {self.bits} {self.mode}"

    def bit_map(self, model: LoadedModel) -> dict[str, dict[str, Any]]:
        """Per Linear layer of the denoiser: weight and activation bits of torchao's tensor
        (``Int8Tensor``: 8, activations 8 when it quantizes them; ``IntxUnpackedToInt8Tensor``: its
        ``target_dtype``'s bits), 16/16 for layers left in floating point (the harness's
        effective-bits map, as :func:`qbench.quant.api.bit_map`)."""
        import torch
        from torch import nn

        out: dict[str, dict[str, Any]] = {}
        for name, m in model.denoiser.named_modules():
            if not isinstance(m, nn.Linear):
                continue
            w = m.weight
            bits = {"w": 16, "a": 16, "params": int(w.numel())}
            if type(w) is not nn.Parameter:
                target = str(getattr(w, "target_dtype", torch.int8))  # "torch.int4"; Int8Tensor has none
                bits["w"] = int(target[len("torch.int"):]) if target[len("torch.int"):].isdigit() else 8
                act = getattr(w, "act_quant_kwargs", None) or getattr(w, "activation_quantization", None)
                bits["a"] = 8 if act is not None else 16
            out[name] = bits
        return out
