"""Real low-bit execution: integer activations x packed integer weights, int32 accumulation.

The math of an ``A``-quantized linear layer with per-row weight scale ``s1[n]`` (two-level W4
folds the integer group scales into the int8 weight ``w8 = sg * q``)::

    x[m, k] ~= sx[m] * (xq[m, k] - zx[m])
    w[n, k] ~= s1[n] * w8[n, k]
    y[m, n]  = sx[m] * s1[n] * (sum_k xq[m, k] * w8[n, k]  -  zx[m] * sum_k w8[n, k])
                               '---- int8 x int8 -> int32 ----'   '- colsum[n] -'

Evaluated in float32 as the exact sequence (each step one IEEE-rounded operation, no fused
multiply-add, so that every backend - ``_int_mm``, oneDNN, the Triton kernel - gives the same
bits; :func:`epilogue`)::

    y = float32(acc) * s1;  y = y - zx * (float32(colsum) * s1);  y = y * sx;  y = y + bias

The integer GEMM itself is chosen per machine and per layer by :mod:`qbench.quant.backends`
(``torch._int_mm`` on VNNI/AMX CPUs and CUDA, oneDNN's u8s8 qlinear on other x86 CPUs, a fused
Triton W4A8 kernel on CUDA); this module holds the math they share and imports none of them
(``backends`` imports it; the layers reach both through ``backends``).
"""
from __future__ import annotations

from typing import Any

import torch

from qbench.quant import pack as packing
from qbench.quant.primitives import act_qparams, check_finite, quantize


def quantize_act_int(
    x2: torch.Tensor, bits: int, symmetric: bool, granularity: str, static: tuple[torch.Tensor, torch.Tensor | None] | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Integer activations: ``xq`` int8 [M, K], ``scale`` f32 [M|1, 1], ``zero`` int32 or None."""
    if static is not None:
        check_finite(x2, "activation")
        scale, zero = static
    else:
        scale, zero = act_qparams(x2, bits, symmetric, granularity)
    return quantize(x2, scale, zero, bits), scale, zero


def weight_int8(layer_buffers: dict[str, torch.Tensor], bits: int, group_size: int | None, two_level: bool) -> torch.Tensor:
    """The int8 weight [N, Kp] (``sg * q`` for two-level W<=4) from the stored packed buffers."""
    qweight = layer_buffers["qweight"]
    if two_level:
        return packing.unpack_scaled(qweight, bits, layer_buffers["sg"], group_size)
    return packing.unpack(qweight, bits)


#: rows of activations processed per step of :func:`int_linear` (None: :func:`chunk_rows` decides)
CHUNK_ROWS: int | None = None


def chunk_rows(m: int, k: int, n: int) -> int:
    """Rows per chunk of :func:`int_linear`: 256 per thread.

    A chunk's activation and output slices then stay in cache across the quantize -> GEMM ->
    rescale passes, and oneDNN's int8 GEMM ran ~2x faster on 256-row pieces than on 4096 rows at
    once (1 thread, W4A8: 4096x640x640 went from 1.28x to 0.76x the FP32 time, 4096x640x2560
    from 0.98x to 0.58x; 2 threads: 1.16x -> 0.82x and 1.05x -> 0.77x; K >= 3072 unchanged).
    Measured with ``OMP_WAIT_POLICY=PASSIVE``: on an oversubscribed machine GNU OpenMP's default
    active wait makes every parallel region (each element-wise pass) cost ~10 ms with 2 threads.
    ``CHUNK_ROWS`` overrides."""
    if CHUNK_ROWS is not None:
        return max(1, CHUNK_ROWS)
    return 256 * max(1, torch.get_num_threads())


def epilogue(y: torch.Tensor, sx: torch.Tensor, zx: torch.Tensor | None, ws1: torch.Tensor | None, bias: torch.Tensor | None, out: torch.Tensor) -> torch.Tensor:
    """``out = (y - zx * ws1) * sx + bias`` for ``y = float32(acc) * s1`` [M, N] (overwritten).

    ``sx`` float32 [M|1, 1], ``zx`` int32 [M|1, 1] or None, ``ws1 = float32(colsum) * s1`` [1, N],
    ``bias`` float32 [1, N] or None. One IEEE-rounded float32 operation per step (torch's
    ``addr``/``addcmul`` fuse multiply-adds on AVX2/AVX512 CPUs, which no other backend
    reproduces), mirrored operation for operation by the Triton kernel's epilogue."""
    if zx is not None:
        y.sub_(zx.to(torch.float32) * ws1)
    if bias is None:
        return torch.mul(y, sx, out=out)
    y.mul_(sx)
    return torch.add(y, bias, out=out)


def int_linear(
    x2: torch.Tensor,
    op: Any,
    s1: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    a_bits: int,
    a_symmetric: bool,
    a_granularity: str,
    static: tuple[torch.Tensor, torch.Tensor | None] | None = None,
) -> torch.Tensor:
    """Quantize ``x2`` [M, K] to integers, int GEMM with the operand ``op`` (a
    :mod:`qbench.quant.backends` operand over the int8 weight [N, Kp]: ``op.bind(s1)`` gives
    ``xq -> float32(acc) * s1``, ``op.colsum()`` int32 [N]), rescale; float32 [M, N].

    Runs in row chunks (per-token scales are row-local; a dynamic per-tensor scale is computed
    over all rows first), writing each chunk's rescaled output into one [M, N] result."""
    m, k = x2.shape
    n, kp = op.n, op.kp
    if static is None and a_granularity == "tensor":  # one scale for the whole tensor, not per chunk
        static = act_qparams(x2, a_bits, a_symmetric, "tensor")
        static = (static[0].reshape(1, 1), None if static[1] is None else static[1].reshape(1, 1))
    s1 = s1.to(torch.float32).view(1, -1)
    asym = (static[1] is not None) if static is not None else not a_symmetric
    # column sums of the int8 weight (exact int32), for the activation zero point
    ws1 = op.colsum().to(torch.float32).view(1, -1) * s1 if asym else None
    b = None if bias is None else bias.to(torch.float32).view(1, -1)
    mm = op.bind(s1)
    out = torch.empty(m, n, dtype=torch.float32, device=x2.device)
    step = chunk_rows(m, k, n)
    for i in range(0, m, step):
        xq, sx, zx = quantize_act_int(x2[i : i + step], a_bits, a_symmetric, a_granularity, static)
        if kp != k:  # zero-padded weight columns: any activation value there contributes 0
            xq = torch.nn.functional.pad(xq, (0, kp - k))
        epilogue(mm(xq), sx.to(torch.float32), zx, ws1, b, out[i : i + step])
    return out


def dequant_weight(layer_buffers: dict[str, torch.Tensor], bits: int, group_size: int | None, two_level: bool, k: int, dtype: torch.dtype) -> torch.Tensor:
    """Weight-only path: the float weight [N, K] rebuilt from packed storage (per call)."""
    if two_level:
        w8 = weight_int8(layer_buffers, bits, group_size, True)
        return (w8[:, :k].to(torch.float32) * layer_buffers["s1"].view(-1, 1)).to(dtype)
    q = packing.unpack(layer_buffers["qweight"], bits)
    n, kp = q.shape
    gs = group_size or kp
    g = kp // gs
    scale = layer_buffers["scale"] if "scale" in layer_buffers else layer_buffers["s1"].view(-1, 1)  # A-quant layers keep it as s1
    scale = scale.expand(n, g).unsqueeze(-1)
    v = q.view(n, g, gs).to(torch.float32)
    zero = layer_buffers.get("zero")
    if zero is not None:
        v = v - zero.to(torch.float32).expand(n, g).unsqueeze(-1)
    return (v * scale).view(n, kp)[:, :k].to(dtype)
