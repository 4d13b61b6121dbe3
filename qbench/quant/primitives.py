"""Pure quantizer functions: integer ranges, scales/zero-points, (fake) quantization, clipping.

Conventions (torchao's ``choose_qparams_affine`` / ``quantize_affine``):

* an ``n``-bit code is a signed integer in ``[-2**(n-1), 2**(n-1) - 1]`` (held in ``torch.int8``);
* symmetric: ``scale = amax / ((qmax - qmin) / 2)``, no zero-point, ``q = clamp(round(x * (1/s)))``;
* asymmetric: ``scale = (max(x_max, 0) - min(x_min, 0)) / (qmax - qmin)``,
  ``zero = clamp(qmin - round(min(x_min, 0) / scale), qmin, qmax)``,
  ``q = clamp(round(x * (1/s)) + zero, qmin, qmax)`` (round first, then shift: torchao's
  ``quantize_affine`` order; ``round(x/s + zero)`` differs from it at near-ties, where the float32
  sum ``x/s + zero`` loses the low bits of ``x/s``), dequantized as ``(q - zero) * scale`` (zero
  is representable exactly, so 0.0 round-trips);
* all in float32 (``x`` is upcast first; ``1/s`` is ``torch.reciprocal``, as torchao's
  ``1.0 / scale``); round-to-nearest, ties to even (``torch.round``);
* the range is divided by ``(qmax - qmin)/2`` or ``qmax - qmin`` as an IEEE float32 *true
  division by a float32 tensor on the input's device* (:func:`div_by`), never by a Python number:
  PyTorch's CUDA ``div_true`` turns a CPU-scalar divisor into a multiply by its float32
  reciprocal (``aten/src/ATen/native/cuda/BinaryDivTrueKernel.cu``: ``inv_b = 1 / b``; the CPU
  kernel divides), which puts ~72% of per-token scales 1 ulp away from the CPU's and from the
  Triton kernel's ``tl.div_rn``. With a same-device tensor divisor CPU, CUDA and Triton all
  divide, so a scale has the same bits on every device by construction (tested on CPU with an
  emulation of the CUDA rule, ``tests/cuda_div_emulation.py``);
* scales are never zero: they are floored at ``EPS`` = float32 machine epsilon (1.19e-7), the
  ``eps`` torchao's int8 workflow (``Int8Tensor``) passes to ``choose_qparams_affine`` (whose own
  default, float32's smallest normal, only matters for ranges below ~1e-5); an all-zero tensor
  quantizes to zeros;
* NaN or inf in an input raises :class:`~qbench.errors.NonFiniteOutputError`.

Scales, zero-points and codes equal torchao's ``choose_qparams_affine`` / ``quantize_affine``
(``eps=torch.finfo(torch.float32).eps``, float32 scales, int32 zeros) code for code; tested in
``tests/test_quant_primitives.py`` on ~12 M values incl. exact ties.

Weights are ``[N, K]`` (output rows x input features; a Conv2d weight is flattened to
``[N, Cin*kh*kw]``, the order of ``F.unfold``). Weight granularities: ``tensor`` (one scale),
``channel`` (one per output row), ``group`` (one per row and run of ``group_size`` input
features; K is zero-padded to a whole number of groups). Activations are ``[..., K]``:
``token`` (one scale per row of K features) or ``tensor``.

``two_level_weight`` is the storage format of the real W4A8 kernel (progressive group
quantization as in QServe / QQQ): per-row float scale ``s1`` and *integer* group scales
``sg`` in ``[1, 2**(8-bits)]`` so that ``sg * q`` is an int8 number and the matmul can run on
int8 with int32 accumulation.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from qbench.errors import ConfigError, NonFiniteOutputError

EPS = float(torch.finfo(torch.float32).eps)  # smallest scale, as torchao's int8 workflow (see the module docstring)


# -- ranges and checks ------------------------------------------------------------------------------
def qrange(bits: int) -> tuple[int, int]:
    """Signed integer range of an ``bits``-bit code (2..8)."""
    if not isinstance(bits, int) or not 1 <= bits <= 8:
        raise ConfigError(f"integer quantization supports 1..8 bits, got {bits!r}")
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def check_finite(x: torch.Tensor, what: str = "tensor") -> None:
    """Raise :class:`NonFiniteOutputError` if ``x`` holds NaN or inf.

    A sum propagates NaN/inf in one cheap reduction; only if it is not finite (or overflowed) is
    the exact element-wise test run."""
    total = x.detach().sum(dtype=torch.float32) if x.is_floating_point() else None
    if total is not None and bool(torch.isfinite(total)):
        return
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        raise NonFiniteOutputError(f"cannot quantize {what}: it holds {int(bad.sum())} NaN/inf value(s)")


def pad_to_multiple(w: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad the last dimension of ``w`` to a multiple of ``multiple``."""
    k = w.shape[-1]
    kp = -(-k // multiple) * multiple
    if kp == k:
        return w
    return torch.nn.functional.pad(w, (0, kp - k))


# -- scales and zero-points -------------------------------------------------------------------------
def div_by(a: torch.Tensor, d: float) -> torch.Tensor:
    """``a / d`` (float32, ``a``'s shape) as IEEE float32 division on every device: the divisor is a
    0-dim float32 tensor made on ``a``'s device (``torch.full``: a fill kernel, no host copy), so
    PyTorch's CUDA kernel divides instead of multiplying by ``float32(1/d)`` as it does for a
    Python-number divisor (see the module docstring). ``d`` must be exact in float32."""
    return torch.div(a, torch.full((), d, dtype=torch.float32, device=a.device))


def qparams_from_range(
    amin: torch.Tensor, amax: torch.Tensor, bits: int, symmetric: bool, check: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scale (float32) and zero-point (int32 or None) for ranges ``[amin, amax]`` (same shapes).

    ``check=False`` skips the NaN/inf test (a host sync on CUDA) for callers that detect
    non-finite inputs themselves (the Triton kernel flags them per row)."""
    qmin, qmax = qrange(bits)
    amin = amin.float()
    amax = amax.float()
    if check:
        check_finite(amin, "range minimum")
        check_finite(amax, "range maximum")
    if symmetric:
        absmax = torch.maximum(amax.abs(), amin.abs())
        scale = div_by(absmax, (qmax - qmin) / 2).clamp_min(EPS)
        return scale, None
    lo = torch.clamp(amin, max=0.0)
    hi = torch.clamp(amax, min=0.0)
    scale = div_by(hi - lo, float(qmax - qmin)).clamp_min(EPS)
    zero = torch.clamp(qmin - torch.round(lo / scale), qmin, qmax).to(torch.int32)
    return scale, zero


def quantize(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, bits: int) -> torch.Tensor:
    """Integer codes (``torch.int8``, ``x``'s shape) of ``x`` (any float dtype, upcast to float32):
    ``clamp(round(x * (1/scale)) + zero, qmin, qmax)``, ties to even - torchao's
    ``quantize_affine`` order, code for code.

    ``scale`` (float32) / ``zero`` (int32 or None) broadcast against ``x``. Simulate and kernel
    modes both call this function, so they agree code for code. Five element-wise passes
    (mul, round, add, clamp, cast) measured as fast as the former two-pass ``addcmul`` +
    ``torch.quantize_per_tensor`` (4096x3072 float32, 1 thread: 37 vs 47 ms; a 512-row chunk as
    kernel mode uses: 0.5 vs 1.5 ms): the time is the output allocation, not the passes."""
    qmin, qmax = qrange(bits)
    q = torch.mul(x.float(), torch.reciprocal(scale.float()))
    q.round_()
    if zero is not None:
        q.add_(zero)  # integer-valued float32 + int32: exact
    return q.clamp_(qmin, qmax).to(torch.int8)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, dtype=torch.float32) -> torch.Tensor:
    v = q.float()
    if zero is not None:
        v = v - zero
    return (v * scale).to(dtype)


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, bits: int) -> torch.Tensor:
    """Quantize-dequantize, returned in ``x``'s dtype."""
    return dequantize(quantize(x, scale, zero, bits), scale, zero, x.dtype)


# -- weights ---------------------------------------------------------------------------------------
@dataclass
class QuantizedWeight:
    """Integer codes ``q`` [N, Kp] (int8), ``scale`` [N, G] float32, ``zero`` [N, G] int32 or None.

    ``G`` is 1 for tensor/channel granularity (scale broadcast over rows for tensor).
    ``k`` is the true number of input features (``Kp >= k`` is the zero-padded width)."""

    q: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor | None
    bits: int
    group_size: int  # = Kp for tensor/channel granularity
    k: int

    def dequantize(self, dtype=torch.float32) -> torch.Tensor:
        n, kp = self.q.shape
        g = kp // self.group_size
        q = self.q.view(n, g, self.group_size)
        scale = self.scale.expand(n, g).unsqueeze(-1)
        zero = None if self.zero is None else self.zero.expand(n, g).unsqueeze(-1)
        return dequantize(q, scale, zero, dtype).view(n, kp)[:, : self.k]


def _grouped(w: torch.Tensor, granularity: str, group_size: int | None) -> tuple[torch.Tensor, int]:
    """View ``w`` [N, K] as [N, G, L] blocks sharing one scale (zero-padding K for groups)."""
    n, k = w.shape
    if granularity == "group":
        if not group_size or group_size < 1:
            raise ConfigError(f"per-group weight quantization needs a positive group size, got {group_size!r}")
        wp = pad_to_multiple(w, group_size)
        return wp.view(n, wp.shape[1] // group_size, group_size), group_size
    if granularity in ("channel", "tensor"):
        return w.view(n, 1, k), k
    raise ConfigError(f"unknown weight granularity {granularity!r}; expected tensor, channel or group")


def clip_ratio_mse(
    blocks: torch.Tensor, bits: int, symmetric: bool, grid: int = 20, lo: float = 0.5, norm: float = 2.0
) -> torch.Tensor:
    """Per-block clipping ratio in ``[lo, 1]`` minimising the ``norm``-error of fake quantization.

    ``blocks`` is [..., L]; returns [..., 1]. A ratio of 1 is plain min-max."""
    bmin = blocks.amin(-1, keepdim=True)
    bmax = blocks.amax(-1, keepdim=True)
    best_err = torch.full_like(bmax, math.inf)
    best = torch.ones_like(bmax)
    for r in torch.linspace(1.0, lo, grid).tolist():
        scale, zero = qparams_from_range(bmin * r, bmax * r, bits, symmetric)
        err = (fake_quantize(blocks.float(), scale, zero, bits) - blocks.float()).abs().pow(norm).sum(-1, keepdim=True)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = torch.where(better, torch.full_like(best, r), best)
    return best


def quantize_weight(
    w: torch.Tensor,
    bits: int,
    *,
    symmetric: bool = True,
    granularity: str = "channel",
    group_size: int | None = None,
    clip: str = "minmax",
) -> QuantizedWeight:
    """Round-to-nearest weight quantization of ``w`` [N, K] (``clip``: ``minmax`` or ``mse``)."""
    if w.dim() != 2:
        raise ValueError(f"weights must be 2-D [N, K], got shape {tuple(w.shape)}")
    check_finite(w, "weight")
    n, k = w.shape
    blocks, gs = _grouped(w.float(), granularity, group_size)
    if granularity == "tensor":
        bmin, bmax = blocks.amin().view(1, 1, 1), blocks.amax().view(1, 1, 1)
    else:
        bmin, bmax = blocks.amin(-1, keepdim=True), blocks.amax(-1, keepdim=True)
    if clip == "mse":
        r = clip_ratio_mse(blocks.reshape(1, 1, -1) if granularity == "tensor" else blocks, bits, symmetric)
        bmin, bmax = bmin * r, bmax * r
    elif clip != "minmax":
        raise ConfigError(f"unknown weight clipping {clip!r}; expected minmax or mse")
    scale, zero = qparams_from_range(bmin, bmax, bits, symmetric)
    q = quantize(blocks, scale, zero, bits).view(n, -1)
    return QuantizedWeight(
        q=q,
        scale=scale.view(scale.shape[0], -1),
        zero=None if zero is None else zero.view(zero.shape[0], -1),
        bits=bits,
        group_size=gs,
        k=k,
    )


@dataclass
class TwoLevelWeight:
    """``w ~= s1[n] * sg[n, g] * q[n, k]`` with ``q`` ``bits``-bit and ``sg`` integer in ``[1, 2**(8-bits)]``.

    ``sg * q`` is then an int8 number (|.| <= 128), the operand of an int8 GEMM."""

    q: torch.Tensor  # [N, Kp] int8
    s1: torch.Tensor  # [N] float32
    sg: torch.Tensor  # [N, G] uint8
    bits: int
    group_size: int
    k: int

    def int8_weight(self) -> torch.Tensor:
        n, kp = self.q.shape
        g = kp // self.group_size
        return (self.q.view(n, g, self.group_size) * self.sg.view(n, g, 1).to(torch.int8)).view(n, kp)

    def dequantize(self, dtype=torch.float32) -> torch.Tensor:
        return (self.int8_weight().float() * self.s1.view(-1, 1))[:, : self.k].to(dtype)


def max_group_scale(bits: int) -> int:
    """Largest integer group scale keeping ``sg * q`` inside int8 for ``bits``-bit codes."""
    qmin, _ = qrange(bits)
    return 128 // -qmin


def two_level_weight(w: torch.Tensor, bits: int, group_size: int) -> TwoLevelWeight:
    """Symmetric per-group weights with integer group scales (progressive group quantization).

    Ideal group scales ``s = amax_g / ((qmax - qmin) / 2)`` are expressed as integer multiples
    ``sg = clamp(round(s / s1), 1, S)`` of a per-row scale ``s1 = max_g(s) / S``,
    ``S = max_group_scale(bits)``; codes are then ``round(w / (s1 * sg))`` (RTN, clamped)."""
    if bits > 4:
        raise ConfigError(f"integer group scales need weights of at most 4 bits, got {bits}")
    check_finite(w, "weight")
    n, k = w.shape
    blocks, gs = _grouped(w.float(), "group", group_size)
    smax = max_group_scale(bits)
    ideal, _ = qparams_from_range(blocks.amin(-1), blocks.amax(-1), bits, symmetric=True)  # [N, G]
    s1 = div_by(ideal.amax(-1), float(smax)).clamp_min(EPS)  # [N]; device-independent bits (div_by)
    sg = torch.clamp(torch.round(ideal / s1.unsqueeze(-1)), 1, smax)
    q = quantize(blocks, (s1.unsqueeze(-1) * sg).unsqueeze(-1), None, bits).view(n, -1)
    return TwoLevelWeight(q=q, s1=s1, sg=sg.to(torch.uint8), bits=bits, group_size=gs, k=k)


# -- activations ---------------------------------------------------------------------------------
def act_range(x: torch.Tensor, granularity: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic min/max of ``x`` [..., K]: per token ([..., 1]) or per tensor (scalar-shaped)."""
    if granularity == "token":
        return x.amin(-1, keepdim=True), x.amax(-1, keepdim=True)
    if granularity == "tensor":
        return x.amin().reshape([1] * x.dim()), x.amax().reshape([1] * x.dim())
    raise ConfigError(f"unknown activation granularity {granularity!r}; expected token or tensor")


def act_qparams(x: torch.Tensor, bits: int, symmetric: bool, granularity: str,
                check: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Dynamic scale/zero of ``x``; NaN/inf in ``x`` raise (min/max reductions propagate them).

    The check reads one bool back to the host (a sync per call on CUDA: the reference / ``int_mm``
    path keeps it); ``check=False`` leaves it to the caller (the Triton path flags bad rows in
    its kernel and poisons their outputs instead)."""
    amin, amax = act_range(x, granularity)
    if check and not (bool(torch.isfinite(amin).all()) and bool(torch.isfinite(amax).all())):
        raise NonFiniteOutputError("cannot quantize activation: it holds NaN/inf value(s)")
    return qparams_from_range(amin, amax, bits, symmetric, check=False)


def fake_quantize_act(
    x: torch.Tensor,
    bits: int,
    symmetric: bool,
    granularity: str,
    static: tuple[torch.Tensor, torch.Tensor | None] | None = None,
) -> torch.Tensor:
    """Dynamic (or, with ``static=(scale, zero)``, calibrated) fake quantization of activations."""
    if static is not None:
        check_finite(x, "activation")
        scale, zero = static
    else:
        scale, zero = act_qparams(x, bits, symmetric, granularity)
    return fake_quantize(x, scale, zero, bits)


def calibrate_range(
    x: torch.Tensor, method: str = "minmax", *, bits: int = 8, symmetric: bool = False, percentile: float = 99.99
) -> tuple[float, float]:
    """Static range ``(lo, hi)`` of calibration samples ``x`` (any shape), one per tensor.

    ``minmax``: the extremes; ``percentile``: the ``100-p`` / ``p`` percentiles; ``mse``: the
    min-max range shrunk by the ratio that minimises the squared fake-quantization error."""
    check_finite(x, "calibration activations")
    flat = x.detach().float().flatten()
    if flat.numel() == 0:
        raise ValueError("no calibration samples")
    if method == "minmax":
        return float(flat.min()), float(flat.max())
    if method == "percentile":
        if not 50.0 < percentile <= 100.0:
            raise ConfigError(f"percentile must be in (50, 100], got {percentile}")
        if flat.numel() > 2**24:  # torch.quantile's limit; a strided subsample keeps the tails' order
            flat = flat[:: -(-flat.numel() // 2**24)]
        qs = torch.quantile(flat, torch.tensor([1.0 - percentile / 100.0, percentile / 100.0]))
        return float(qs[0]), float(qs[1])
    if method == "mse":
        r = float(clip_ratio_mse(flat.view(1, -1), bits, symmetric, grid=40, lo=0.2))
        return float(flat.min()) * r, float(flat.max()) * r
    raise ConfigError(f"unknown calibration method {method!r}; expected minmax, percentile or mse")
