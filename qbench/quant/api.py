"""One entry point, torchao-style: ``report = quantize_(module, QuantConfig(bits="W4A8", mode="kernel"))``.

Swaps every targeted ``nn.Linear`` (and ``nn.Conv2d`` when ``layer_types`` includes ``conv2d`` or
an override names it) for :class:`QuantLinear` / :class:`QuantConv2d`, in place, and returns a
:class:`QuantReport`. Targeting: module name -> ``QuantConfig.spec_for(name)`` (include/exclude
patterns, then per-layer overrides). Overrides that name no module, or a module that cannot be
quantized, are refused before anything is changed.

Input pre-scales (SmoothQuant / AWQ style, torchao's ``act_pre_scale``): ``quantize_(module,
config, pre_scales={name: s})`` makes the named layers compute ``Q_a(x * s) @ Q_w(W / s)^T``
(:mod:`qbench.quant.linear`); a name that is not quantized by ``config`` is refused.

Static (calibrated) activations: ``quantize_`` leaves such layers uncalibrated (using them raises);
call :func:`observe_`, run calibration data through the module (float activations, quantized
weights), then :func:`freeze_` (the prepare -> calibrate -> convert flow).
"""
from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from qbench.errors import ConfigError
from qbench.models.base import logical_numel, module_nbytes, tensor_parts
from qbench.quant import backends
from qbench.quant.linear import QuantConv2d, QuantLinear, _QuantCore, conv2d_supported
from qbench.quant.spec import QuantConfig, _is_pattern

QUANT_LAYERS = (QuantLinear, QuantConv2d)


@dataclass
class QuantReport:
    mode: str
    bits: str
    kernel_path: str | None
    #: the GEMM selection behind ``kernel_path`` (qbench.quant.backends.Selection.to_dict: path,
    #: reason, forced, the CPU's flags and the probe's timings); None outside kernel mode
    kernel: dict[str, Any] | None = None
    layers: list[dict[str, Any]] = field(default_factory=list)  # name, type, bits, shape, packed_bytes
    skipped: list[dict[str, str]] = field(default_factory=list)  # name, reason (only layers of quantizable types)
    bytes_before: int = 0
    bytes_after: int = 0  # what the module stores now (module_nbytes)
    bytes_packed: int = 0  # what it stores in kernel mode (== bytes_after in kernel mode)

    @property
    def n_quantized(self) -> int:
        return len(self.layers)

    def to_dict(self, with_layers: bool = False) -> dict[str, Any]:
        d = {
            "mode": self.mode,
            "bits": self.bits,
            "kernel_path": self.kernel_path,
            "kernel": self.kernel,
            "layers_quantized": self.n_quantized,
            "layers_skipped": len(self.skipped),
            "bytes_before": self.bytes_before,
            "bytes_after": self.bytes_after,
            "bytes_packed": self.bytes_packed,
            "bits_by_layer_count": _count(self.layers),
        }
        if with_layers:
            d["layers"] = self.layers
            d["skipped"] = self.skipped
        return d


def _count(layers: list[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for layer in layers:
        out[layer["bits"]] = out.get(layer["bits"], 0) + 1
    return out


def _kind(mod: nn.Module) -> str | None:
    if isinstance(mod, QUANT_LAYERS):
        return None
    if isinstance(mod, nn.Linear):
        return "linear"
    if isinstance(mod, nn.Conv2d):
        return "conv2d"
    return None


def _is_lora_part(name: str) -> bool:
    return any(part.startswith("lora_") for part in name.split("."))


def candidate_layers(named: dict[str, nn.Module], config: QuantConfig) -> list[str]:
    """Names of the layers ``config`` may quantize: Linear/Conv2d of its ``layer_types`` (or
    named by an override), not LoRA adapter matrices."""
    explicit = {k for k, _ in config.overrides}
    return [n for n, m in named.items() if n and _kind(m) and not _is_lora_part(n) and (_kind(m) in config.layer_types or n in explicit)]


def _check_overrides(named: dict[str, nn.Module], config: QuantConfig) -> set[str]:
    """Validate override keys against the module; return the names overrides target explicitly."""
    explicit: set[str] = set()
    for key, ov in config.overrides:
        if _is_pattern(key):
            hits = [n for n, m in named.items() if fnmatch.fnmatchcase(n, key) and _kind(m)]
            if not hits:
                raise ConfigError(f"layer override pattern {key!r} matches no Linear/Conv2d layer")
            explicit.update(hits)
            continue
        if key not in named:
            close = difflib.get_close_matches(key, list(named), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"layer override names {key!r}, which is not a module of the model{hint}")
        mod = named[key]
        kind = _kind(mod)
        if kind is None:
            raise ConfigError(
                f"layer override names {key!r} ({type(mod).__name__}), which cannot be quantized: only Linear and Conv2d layers can"
            )
        if kind == "conv2d" and not ov.fp:
            why = conv2d_supported(mod)
            if why:
                raise ConfigError(f"layer override names {key!r}: Conv2d with {why} cannot be quantized")
        explicit.add(key)
    return explicit


def quantize_(module: nn.Module, config: QuantConfig, pre_scales: dict[str, Any] | None = None) -> QuantReport:
    """Quantize ``module`` in place according to ``config``; return what was done.

    ``pre_scales``: ``{layer name: float tensor [K]}`` (K: the layer's input features; Conv2d:
    ``Cin*kh*kw``), all > 0: those layers get the input pre-scale slot. Raises ConfigError for a
    name that this config does not quantize or a vector of the wrong size (nothing is changed)."""
    if not isinstance(config, QuantConfig):
        raise TypeError(f"quantize_ expects a QuantConfig, got {type(config).__name__}")
    named = dict(module.named_modules())
    explicit = _check_overrides(named, config)
    pre_scales = dict(pre_scales or {})
    device = next((p.device for p in module.parameters()), None)
    report = QuantReport(
        mode=config.mode,
        bits=str(config.bits),
        kernel_path=None,
        bytes_before=module_nbytes(module),
    )
    swaps: list[tuple[str, nn.Module]] = []
    for name, mod in named.items():
        kind = _kind(mod)
        if kind is None or name == "":
            continue
        if _is_lora_part(name):
            report.skipped.append({"name": name, "reason": "LoRA adapter matrix (its base layer is quantized)"})
            continue
        if kind not in config.layer_types and name not in explicit:
            report.skipped.append({"name": name, "reason": f"{kind} not in layer_types"})
            continue
        spec = config.spec_for(name)
        if spec is None:
            report.skipped.append({"name": name, "reason": "excluded or kept in floating point"})
            continue
        if kind == "conv2d":
            why = conv2d_supported(mod)
            if why:
                report.skipped.append({"name": name, "reason": f"unsupported Conv2d: {why}"})
                continue
            new: _QuantCore = QuantConv2d.from_float(mod, spec, pre_scales.pop(name, None))
        else:
            new = QuantLinear.from_float(mod, spec, pre_scales.pop(name, None))
        swaps.append((name, new))
        report.layers.append(
            {"name": name, "type": kind, "bits": spec.bits, "shape": [new.n, new.k], "packed_bytes": new.packed_nbytes}
        )
    if pre_scales:
        raise ConfigError(f"pre_scales name {len(pre_scales)} layer(s) this config does not quantize, e.g. {sorted(pre_scales)[0]!r}")
    for name, new in swaps:
        parent_name, _, attr = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, attr, new)
    if config.mode == "kernel" and device is not None and swaps:
        weight_only = all(new.spec.a_bits is None for _, new in swaps)
        report.kernel_path = backends.kernel_path(device, weight_only)
        report.kernel = backends.kernel_info(device)
    report.bytes_after = module_nbytes(module)
    stored = sum(new.stored_nbytes() for _, new in swaps)
    report.bytes_packed = report.bytes_after - stored + sum(new.packed_nbytes for _, new in swaps)
    return report


def quant_layers(module: nn.Module) -> list[tuple[str, _QuantCore]]:
    return [(n, m) for n, m in module.named_modules() if isinstance(m, _QuantCore)]


def guard_pipeline_save(pipe: Any) -> Any:
    """Make ``pipe.save_pretrained`` refuse, before it writes anything, while a component holds
    qbench-quantized layers (diffusers saves component by component, so the per-layer refusal came
    only after the other components were written: a half-written folder); the same for each
    component's own ``save_pretrained`` (its config.json came before the refusal). An unquantized
    pipeline saves as before. Raises :class:`~qbench.errors.QBenchError` (one line) on save."""
    if getattr(type(pipe), "save_pretrained", None) is None or getattr(pipe, "_qbench_save_guard", False):
        return pipe

    def modules(obj: Any) -> list[nn.Module]:
        return [obj] if isinstance(obj, nn.Module) else [c for c in (getattr(obj, "components", {}) or {}).values() if isinstance(c, nn.Module)]

    for obj in [pipe] + modules(pipe):
        if hasattr(type(obj), "save_pretrained"):
            _refuse_save_while_quantized(obj, lambda obj=obj: modules(obj))
    object.__setattr__(pipe, "_qbench_save_guard", True)
    return pipe


def _refuse_save_while_quantized(obj: Any, modules: Callable[[], list[nn.Module]]) -> None:
    """Shadow ``obj.save_pretrained`` with one that raises while any of ``modules()`` holds
    qbench-quantized layers (checked at call time) and otherwise calls the class's own."""
    from qbench.errors import QBenchError
    from qbench.quant.linear import SAVE_REFUSED

    original = type(obj).save_pretrained

    def save_pretrained(*args: Any, **kwargs: Any) -> Any:
        if any(quant_layers(m) for m in modules()):
            raise QBenchError(SAVE_REFUSED)
        return original(obj, *args, **kwargs)

    object.__setattr__(obj, "save_pretrained", save_pretrained)


def observe_(module: nn.Module, on: bool = True) -> int:
    """Switch observation of static-activation layers on/off; returns how many layers observe."""
    n = 0
    for _, m in quant_layers(module):
        if m.spec.a_static and not m.calibrated:
            m.observing = on
            n += 1
    return n


def freeze_(module: nn.Module) -> int:
    """Finish calibration of every static-activation layer; returns how many were frozen."""
    n = 0
    for _, m in quant_layers(module):
        if m.spec.a_static and not m.calibrated:
            m.freeze_activations()
            n += 1
    return n


def size_report(module: nn.Module) -> dict[str, Any]:
    """Sizes of a (possibly quantized) module in bytes, honestly labelled.

    * ``resident_bytes``: what its parameters and buffers hold in memory now (``module_nbytes``;
      a simulate-mode layer keeps a float weight, a kernel-mode layer its packed codes);
    * ``bytes_16bit``: the same module with every floating-point tensor at 2 bytes per element
      (quantized layers counted at their original float shapes): the FP16/BF16 model papers
      compare with;
    * ``kernel_cache_bytes``: what kernel mode's integer GEMM holds beyond the stored buffers, for
      the layers that have run (``qbench.quant.backends.resident_extra_nbytes``: oneDNN's
      prepacked int8 weights - 1 byte per weight, 2 with the 7-bit split, so more than the
      packed int4 codes - and cached int32 column sums); 0 before the first forward;
      ``resident_with_cache_bytes`` = ``resident_bytes + kernel_cache_bytes``;
    * ``deploy_bytes``: quantized layers in the packed kernel format (codes two per byte for
      <= 4 bits, scales, zeros; bias at 2 bytes) and every other floating tensor at 2 bytes.
      Equal to ``bytes_16bit`` for an unquantized module. In simulate mode it is *computed* (the
      layers are not stored that way); ``deploy_kind`` says which.
    """
    quant = dict(quant_layers(module))
    inside = {id(t) for m in quant.values() for t in list(m.parameters()) + list(m.buffers())}
    b16 = deploy = 0
    seen: set[int] = set()
    subclassed = 0  # tensors of another library's quantized tensors (torchao, quanto, bitsandbytes)
    for t in list(module.parameters()) + list(module.buffers()):
        if id(t) in inside or id(t) in seen:
            continue
        seen.add(id(t))
        parts = tensor_parts(t)
        # a quantized tensor subclass (torchao, quanto) or a bitsandbytes parameter stands for a
        # float weight: 2 bytes per element of that weight in the 16-bit model
        nb = logical_numel(t) * 2 if t.is_floating_point() or parts != [t] else t.numel() * t.element_size()
        b16 += nb
        if parts == [t]:
            deploy += nb
        else:  # stored as integer codes + scales: count what it stores, as stored
            subclassed += 1
            deploy += sum(p.numel() * p.element_size() for p in parts)
    modes = set()
    for m in quant.values():
        bias_n = 0 if m.bias is None else m.bias.numel()
        b16 += 2 * (m.n * m.k + bias_n)
        bias_bytes = 0 if m.bias is None else m.bias.numel() * m.bias.element_size()
        deploy += m.kernel_nbytes - bias_bytes + 2 * bias_n
        # float tensors a layer adds to its packed format (e.g. BOS-aware layers' cached BOS
        # key/value, qbench.quant.bos): counted at 16 bits, like every other float tensor
        for t in getattr(m, "extra_float_tensors", list)():
            deploy += 2 * t.numel() - t.numel() * t.element_size()
        modes.add(m.mode)
    if subclassed and not quant:
        kind = (f"packed (tensor subclasses: the codes, scales and zero points {subclassed} quantized tensors store, counted as stored; "
                "other tensors at 16 bits)")
    elif not quant:
        kind = "16-bit (no quantized layers)"
    elif modes == {"kernel"}:
        kind = "packed (kernel mode: the stored codes and scales, bias and other tensors counted at 16 bits)"
    else:
        kind = ("simulated (simulate mode stores float weights: the size these layers would have in kernel mode's packed format, "
                "integer group scales for per-group weights)")
    cache = sum(backends.resident_extra_nbytes(m) for m in quant.values() if m.mode == "kernel")
    return {
        "resident_bytes": module_nbytes(module),
        "kernel_cache_bytes": int(cache),
        "resident_with_cache_bytes": module_nbytes(module) + int(cache),
        "bytes_16bit": int(b16),
        "deploy_bytes": int(deploy),
        "deploy_vs_16bit": deploy / b16 if b16 else None,
        "deploy_kind": kind,
        "quantized_layers": len(quant),
    }


def bit_map(module: nn.Module, layer_types: tuple[str, ...] = ("linear",)) -> dict[str, dict[str, Any]]:
    """Per-layer bits of every candidate layer of ``module``: ``{name: {"w", "a", "params"}}``
    for each quantized layer and each float layer of ``layer_types`` (``w``/``a`` 16 when kept in
    floating point; ``a`` 16 for weight-only). ``params`` = weight elements (N*K). Conv2d layers
    count when quantized or when ``conv2d`` is among ``layer_types``."""
    out: dict[str, dict[str, Any]] = {}
    for name, m in module.named_modules():
        if isinstance(m, _QuantCore):
            a = 16 if m.spec.a_bits is None else m.spec.a_bits
            out[name] = {"w": m.spec.w_bits, "a": a, "params": int(m.n * m.k)}
        elif name and not _is_lora_part(name) and _kind(m) in layer_types:
            out[name] = {"w": 16, "a": 16, "params": int(m.weight.numel())}
    return out


def effective_bits(bits: dict[str, dict[str, Any]]) -> dict[str, float] | None:
    """Parameter-weighted mean weight and activation bits of a :func:`bit_map` (None if empty)."""
    total = sum(v["params"] for v in bits.values())
    if not total:
        return None
    w = sum(v["w"] * v["params"] for v in bits.values()) / total
    a = sum(v["a"] * v["params"] for v in bits.values()) / total
    return {"w": w, "a": a, "params": total, "label": f"W{_fmt_bits(w)}A{_fmt_bits(a)}"}


def _fmt_bits(x: float) -> str:
    return f"{x:.0f}" if abs(x - round(x)) < 5e-4 else f"{x:.2f}"
