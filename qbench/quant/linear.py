"""Quantized drop-in layers: :class:`QuantLinear` and :class:`QuantConv2d` (``from_float``).

* ``simulate`` mode stores the fake-quantized (quantize-dequantize) weight in the model's dtype as
  ``weight`` and fake-quantizes activations on the fly: the numbers of a quantized model, the
  memory and speed of the float one.
* ``kernel`` mode stores only packed integer codes and their scales as buffers (``qweight``,
  ``s1``/``sg`` or ``scale``/``zero``) and runs :mod:`qbench.quant.kernels`; no float
  weight is kept, so ``module_nbytes`` is the true stored size.

``packed_nbytes`` is the size of the kernel format (computed from shapes), available in both
modes; in kernel mode it equals the bytes of the layer's parameters and buffers.

Saving: a layer's stored form is its persistent parameters and buffers (kernel: ``qweight``,
``s1``/``sg`` or ``scale``/``zero``; simulate: the fake-quantized ``weight``; both: ``bias``,
``a_scale``/``a_zero``) plus :meth:`~_QuantCore.to_config` (its LayerSpec and shapes);
:meth:`~_QuantCore.from_state` rebuilds the layer from the two without any float weight.
``state_dict()`` of a module holding these layers raises :class:`~qbench.errors.QBenchError`
(so ``save_pretrained`` refuses in one line instead of writing a checkpoint that reloads as
random or unquantized weights) except inside :func:`state_dict_allowed`, which
:mod:`qbench.quant.serialize` uses.

A Conv2d is an im2col GEMM: its weight is flattened to ``[N, Cin*kh*kw]`` and its "tokens" are
the unfolded input patches (one activation scale per output position), in both modes.

Input pre-scale (the SmoothQuant / AWQ slot, as torchao's ``act_pre_scale``): a layer made with
``pre_scale`` ``s`` (float32 ``[K]``, K = in features, or ``Cin*kh*kw`` in the im2col order of a
Conv2d) quantizes the weight ``W / s`` (each input column divided) and computes
``Q_a(x * s) @ Q_w(W / s)^T + b`` in both modes: the float product is unchanged, and a method
chooses ``s`` to move activation outliers into the weights (Xiao et al. 2023, SmoothQuant,
arXiv 2211.10438: ``s = 1 / smoothing factor``). ``s`` is stored as the buffer ``pre_scale`` and
saved and reloaded with the layer.
"""
from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from qbench.errors import ConfigError, QBenchError
from qbench.quant import backends, kernels
from qbench.quant import pack as packing
from qbench.quant.primitives import (
    EPS,
    calibrate_range,
    fake_quantize_act,
    pad_to_multiple,
    qparams_from_range,
    quantize_weight,
    two_level_weight,
)
from qbench.quant.spec import LayerSpec


def _quantize(w2: torch.Tensor, spec: LayerSpec):
    """(codes [N, Kp] int8, dict of scale tensors, two_level flag, group size used)."""
    if spec.w_granularity == "group" and spec.group_scales == "int8":
        tl = two_level_weight(w2, spec.w_bits, spec.group_size)
        return tl.q, {"s1": tl.s1, "sg": tl.sg}, True, tl
    qw = quantize_weight(
        w2, spec.w_bits, symmetric=spec.w_symmetric, granularity=spec.w_granularity, group_size=spec.group_size, clip=spec.w_clip
    )
    scales = {"scale": qw.scale.float()}
    if qw.zero is not None:
        scales["zero"] = qw.zero.to(torch.int8)
    return qw.q, scales, False, qw


_STATE_DICT_ALLOWED = [0]  # > 0 inside state_dict_allowed()
SAVE_REFUSED = ("this model holds qbench-quantized layers (packed integer weights, activation quantization in each layer's spec): "
                "a plain state_dict()/save_pretrained() would reload as random or unquantized weights; save it with `qbench export` "
                "or qbench.export.save_quantized(pipe, DIR), load it with qbench.load_quantized(DIR)")


@contextlib.contextmanager
def state_dict_allowed():
    """Let ``state_dict()`` collect quantized layers' stored tensors (:mod:`qbench.quant.serialize`)."""
    _STATE_DICT_ALLOWED[0] += 1
    try:
        yield
    finally:
        _STATE_DICT_ALLOWED[0] -= 1


class _QuantCore(nn.Module):
    """Shared storage and GEMM of a quantized layer over a 2-D weight [N, K]."""

    def _setup(self, w2: torch.Tensor, bias: torch.Tensor | None, spec: LayerSpec, pre_scale: torch.Tensor | None = None) -> None:
        self.spec = spec
        self.mode = spec.mode
        n, k = w2.shape
        self.n, self.k = n, k
        s = None if pre_scale is None else pre_scale_vector(pre_scale, k).to(w2.device)
        if s is not None:
            w2 = (w2.float() / s).to(w2.dtype)  # the layer sees x * s: its weight is W / s
        self.pre_scale: torch.Tensor | None
        self.register_buffer("pre_scale", s)  # None: no pre-scale (not stored)
        ppb = packing.per_byte(spec.w_bits)
        if spec.group_size is not None and spec.group_size % ppb:
            raise ConfigError(f"group_size {spec.group_size} must be a multiple of {ppb} for {spec.w_bits}-bit packing")
        q, scales, self.two_level, qobj = _quantize(w2, spec)
        q = pad_to_multiple(q, ppb)
        self.kp = q.shape[1]
        self.group_size = spec.group_size if spec.w_granularity == "group" else None
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        # the kernel format's size (identical to the stored bytes in kernel mode)
        nbytes = n * self.kp // ppb + sum(t.numel() * t.element_size() for t in scales.values())
        nbytes += 8 if spec.a_static else 0
        nbytes += 0 if bias is None else bias.numel() * bias.element_size()
        nbytes += 0 if self.pre_scale is None else self.pre_scale.numel() * self.pre_scale.element_size()
        self.packed_nbytes = int(nbytes)
        # what kernel mode would store for this layer: float per-group scales (simulate's default,
        # the papers' convention) have no integer kernel; kernel mode stores <= 4-bit symmetric
        # per-group weights with integer group scales (uint8 per group + one float32 per row)
        self.kernel_nbytes = self.packed_nbytes
        if spec.w_granularity == "group" and spec.group_scales == "float" and spec.w_bits <= 4 and spec.w_symmetric:
            groups = -(-k // spec.group_size)
            self.kernel_nbytes = int(nbytes - sum(t.numel() * t.element_size() for t in scales.values()) + n * 4 + n * groups)
        self.a_scale: torch.Tensor | None
        self.a_zero: torch.Tensor | None
        if spec.a_static:
            self.register_buffer("a_scale", torch.zeros(1, dtype=torch.float32, device=w2.device))
            self.register_buffer("a_zero", torch.zeros(1, dtype=torch.int32, device=w2.device))
            self.calibrated = False
            self._obs: list[torch.Tensor] = []
            self._obs_min = float("inf")
            self._obs_max = float("-inf")
        else:
            self.a_scale = self.a_zero = None
            self.calibrated = True
        self.observing = False
        if self.mode == "simulate":
            self.weight = nn.Parameter(qobj.dequantize(w2.dtype), requires_grad=False)
        else:
            backends.kernel_path(w2.device)  # refuse devices without an integer GEMM now
            self.register_buffer("qweight", packing.pack(q, spec.w_bits))
            for name, t in scales.items():
                self.register_buffer(name, t.contiguous())
            if spec.a_bits is not None and not self.two_level and "s1" not in scales:
                # per-channel / per-tensor scale: the row scale of the int GEMM
                self.register_buffer("s1", self._buffers.pop("scale").reshape(-1))
            self.compute_dtype = w2.dtype

    # -- saving and rebuilding -----------------------------------------------------------------------
    def _save_to_state_dict(self, destination, prefix, keep_vars):
        if not _STATE_DICT_ALLOWED[0]:
            raise QBenchError(SAVE_REFUSED)
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def _stored(self) -> dict[str, torch.Tensor]:
        """The persistent parameters and buffers (what ``state_dict`` holds for this layer)."""
        out = {k: v for k, v in self._parameters.items() if v is not None}
        out.update({k: v for k, v in self._buffers.items() if v is not None and k not in self._non_persistent_buffers_set})
        return out

    def to_config(self) -> dict[str, Any]:
        """JSON-able description that, with the stored tensors, rebuilds the layer
        (:meth:`from_state`): type, LayerSpec, shapes ``n``/``k``/``kp``, group size, two-level
        flag, sizes, the float dtype it was made in, and every stored tensor's shape and dtype.
        Raises QBenchError for a static-activation layer that was never calibrated."""
        if not self.calibrated:
            raise QBenchError("a static-activation layer was not calibrated: calibrate (observe_ -> data -> freeze_) before saving")
        d: dict[str, Any] = {
            "type": "conv2d" if isinstance(self, QuantConv2d) else "linear",
            "spec": self.spec.to_dict(), "n": self.n, "k": self.k, "kp": self.kp, "group_size": self.group_size,
            "two_level": self.two_level, "packed_nbytes": self.packed_nbytes, "kernel_nbytes": self.kernel_nbytes,
            "dtype": str(getattr(self, "compute_dtype", None) or self.weight.dtype).replace("torch.", ""),
            "tensors": {k: {"shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", "")} for k, v in self._stored().items()},
        }
        if isinstance(self, QuantConv2d):
            d["conv"] = {"in_channels": self.in_channels, "out_channels": self.out_channels, "kernel_size": list(self.kernel_size),
                         "stride": list(self.stride), "padding": list(self.padding), "dilation": list(self.dilation)}
        return d

    @classmethod
    def from_state(cls, config: dict[str, Any], state: dict[str, torch.Tensor]) -> _QuantCore:
        """The layer described by ``config`` (:meth:`to_config`) holding ``state`` (its stored
        tensors, used as given: no copy, no float weight recomputed). Raises QBenchError when a
        tensor is missing, unexpected, or of another shape or dtype than ``config`` records."""
        kind = config.get("type")
        layer_cls = {"linear": QuantLinear, "conv2d": QuantConv2d}.get(kind)
        if layer_cls is None or (cls is not _QuantCore and cls is not layer_cls):
            raise QBenchError(f"cannot rebuild a {cls.__name__} from a layer of type {kind!r}")
        want = config["tensors"]
        if set(want) != set(state):
            raise QBenchError(f"stored tensors {sorted(state)} do not match the layer's {sorted(want)}")
        for name, t in state.items():
            if list(t.shape) != want[name]["shape"] or str(t.dtype).replace("torch.", "") != want[name]["dtype"]:
                raise QBenchError(f"stored tensor {name!r} is {str(t.dtype)} {list(t.shape)}, the layer needs {want[name]['dtype']} {want[name]['shape']}")
        layer = layer_cls.__new__(layer_cls)
        nn.Module.__init__(layer)
        spec = LayerSpec(**config["spec"])
        layer.spec, layer.mode = spec, spec.mode
        layer.n, layer.k, layer.kp, layer.group_size = int(config["n"]), int(config["k"]), int(config["kp"]), config["group_size"]
        layer.two_level = bool(config["two_level"])
        layer.packed_nbytes, layer.kernel_nbytes = int(config["packed_nbytes"]), int(config["kernel_nbytes"])
        if layer_cls is QuantLinear:
            layer.in_features, layer.out_features = layer.k, layer.n
        else:
            c = config["conv"]
            layer.in_channels, layer.out_channels = c["in_channels"], c["out_channels"]
            layer.kernel_size, layer.stride, layer.padding, layer.dilation = (tuple(c[x]) for x in ("kernel_size", "stride", "padding", "dilation"))
        for name, t in state.items():
            if name in ("weight", "bias"):
                setattr(layer, name, nn.Parameter(t, requires_grad=False))
            else:
                layer.register_buffer(name, t)
        for name in ("bias", "a_scale", "a_zero", "pre_scale"):
            if name not in state:
                setattr(layer, name, None)
        layer.calibrated, layer.observing = True, False
        if layer.mode == "kernel":
            layer.compute_dtype = getattr(torch, config["dtype"])
        return layer

    def _kernel_buffers(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self._buffers.items() if v is not None and k != "pre_scale"}

    # -- static activation calibration ------------------------------------------------------------
    def _observe(self, x2: torch.Tensor) -> None:
        x2 = x2.detach().float()
        if self.spec.a_calib == "minmax":
            self._obs_min = min(self._obs_min, float(x2.min()))
            self._obs_max = max(self._obs_max, float(x2.max()))
        else:  # keep a strided subsample (<= 65536 values per call) for percentile / MSE search
            flat = x2.flatten()
            self._obs.append(flat[:: max(1, flat.numel() // 65536)].cpu())

    def freeze_activations(self) -> None:
        """End calibration: compute the static activation scale/zero from what was observed."""
        if not self.spec.a_static:
            return
        if self.spec.a_calib == "minmax":
            if self._obs_min == float("inf"):
                raise RuntimeError("static activation quantization: this layer saw no calibration data")
            lo, hi = self._obs_min, self._obs_max
        else:
            if not self._obs:
                raise RuntimeError("static activation quantization: this layer saw no calibration data")
            lo, hi = calibrate_range(torch.cat(self._obs), self.spec.a_calib, bits=self.spec.a_bits, symmetric=self.spec.a_symmetric)
        scale, zero = qparams_from_range(torch.tensor([lo]), torch.tensor([hi]), self.spec.a_bits, self.spec.a_symmetric)
        self.a_scale.copy_(scale.clamp_min(EPS))
        self.a_zero.copy_(zero if zero is not None else torch.zeros(1, dtype=torch.int32))
        self._obs = []
        self.calibrated = True
        self.observing = False

    def _static(self) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        if not self.spec.a_static:
            return None
        return self.a_scale.view(1, 1), (None if self.spec.a_symmetric else self.a_zero.view(1, 1))

    # -- the GEMM on 2-D inputs ------------------------------------------------------------------------
    def _gemm(self, x2: torch.Tensor) -> torch.Tensor:
        spec = self.spec
        if self.pre_scale is not None:  # before observing and quantizing: the activation the layer quantizes
            x2 = x2 * self.pre_scale.to(x2.dtype)
        quant_act = spec.a_bits is not None
        if spec.a_static and not self.calibrated:
            if not self.observing:
                raise RuntimeError("static activation quantization: calibrate the layer (observing=True) before use")
            self._observe(x2)
            quant_act = False  # calibration runs with float activations and quantized weights
        if self.mode == "simulate":
            if quant_act:
                x2 = fake_quantize_act(x2, spec.a_bits, spec.a_symmetric, spec.a_granularity, self._static())
            return F.linear(x2, self.weight, self.bias)
        bufs = self._kernel_buffers()
        if not quant_act:
            w = kernels.dequant_weight(bufs, spec.w_bits, self.group_size, self.two_level, self.k, x2.dtype)
            return F.linear(x2, w, None if self.bias is None else self.bias.to(x2.dtype))
        # the integer GEMM chosen for this machine and layer (qbench.quant.backends)
        y = backends.operand(self, x2.device).linear(
            x2,
            self.s1,
            self.bias,
            a_bits=spec.a_bits,
            a_symmetric=spec.a_symmetric,
            a_granularity=spec.a_granularity,
            static=self._static(),
        )
        return y.to(x2.dtype)

    def stored_nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in list(self.parameters()) + list(self.buffers()))

    def extra_repr(self) -> str:
        return f"in={self.k}, out={self.n}, {self.spec.bits}, mode={self.mode}, w={self.spec.w_granularity}" + (
            f"/{self.group_size} scales={self.spec.group_scales}" if self.group_size else ""
        )


def pre_scale_vector(pre_scale: torch.Tensor, k: int) -> torch.Tensor:
    """``pre_scale`` as a contiguous float32 vector of ``k`` elements; ConfigError unless it has
    ``k`` elements, all finite and > 0."""
    s = torch.as_tensor(pre_scale).detach().reshape(-1).float().contiguous()
    if s.numel() != k:
        raise ConfigError(f"pre_scale has {s.numel()} elements, the layer has {k} input features")
    if not bool(torch.isfinite(s).all()) or not bool((s > 0).all()):
        raise ConfigError("pre_scale must be finite and > 0 in every input feature")
    return s


class QuantLinear(_QuantCore):
    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, spec: LayerSpec, pre_scale: torch.Tensor | None = None):
        super().__init__()
        self.in_features = weight.shape[1]
        self.out_features = weight.shape[0]
        self._setup(weight.detach(), bias, spec, pre_scale)

    @classmethod
    def from_float(cls, mod: nn.Linear, spec: LayerSpec, pre_scale: torch.Tensor | None = None) -> QuantLinear:
        """``pre_scale``: float ``[in_features]``, > 0 (module docstring); None: no pre-scale."""
        if not isinstance(mod, nn.Linear):
            raise TypeError(f"QuantLinear.from_float expects nn.Linear, got {type(mod).__name__}")
        return cls(mod.weight, mod.bias, spec, pre_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        y = self._gemm(x.reshape(-1, x.shape[-1]))
        return y.view(*lead, self.n)


def conv2d_supported(mod: nn.Conv2d) -> str | None:
    """None if :class:`QuantConv2d` can replace ``mod``, else the reason."""
    if mod.groups != 1:
        return f"grouped convolution (groups={mod.groups})"
    if mod.padding_mode != "zeros":
        return f"padding_mode={mod.padding_mode!r}"
    if isinstance(mod.padding, str):
        return f"string padding {mod.padding!r}"
    return None


class QuantConv2d(_QuantCore):
    def __init__(self, mod: nn.Conv2d, spec: LayerSpec, pre_scale: torch.Tensor | None = None):
        super().__init__()
        why = conv2d_supported(mod)
        if why:
            raise ConfigError(f"cannot quantize Conv2d: {why} is not supported")
        self.in_channels, self.out_channels = mod.in_channels, mod.out_channels
        self.kernel_size, self.stride, self.padding, self.dilation = mod.kernel_size, mod.stride, mod.padding, mod.dilation
        w = mod.weight.detach()
        self._setup(w.reshape(w.shape[0], -1), mod.bias, spec, pre_scale)

    @classmethod
    def from_float(cls, mod: nn.Conv2d, spec: LayerSpec, pre_scale: torch.Tensor | None = None) -> QuantConv2d:
        """``pre_scale``: float ``[Cin*kh*kw]`` (im2col order: channel-major), > 0; None: none."""
        if not isinstance(mod, nn.Conv2d):
            raise TypeError(f"QuantConv2d.from_float expects nn.Conv2d, got {type(mod).__name__}")
        return cls(mod, spec, pre_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        kh, kw = self.kernel_size
        ho = (h + 2 * self.padding[0] - self.dilation[0] * (kh - 1) - 1) // self.stride[0] + 1
        wo = (w + 2 * self.padding[1] - self.dilation[1] * (kw - 1) - 1) // self.stride[1] + 1
        if kh == kw == 1 and self.stride == (1, 1) and self.padding == (0, 0):
            cols = x.permute(0, 2, 3, 1).reshape(-1, self.k)
        else:
            cols = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)  # [B, K, L]
            cols = cols.transpose(1, 2).reshape(-1, self.k)
        y = self._gemm(cols)  # [B*L, N]
        return y.view(b, ho, wo, self.n).permute(0, 3, 1, 2).contiguous()
