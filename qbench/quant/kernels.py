"""Real low-bit execution: integer activations x packed integer weights, int32 accumulation.

The math of an ``A``-quantized linear layer with per-row weight scale ``s1[n]`` (two-level W4
folds the integer group scales into the int8 weight ``w8 = sg * q``)::

    x[m, k] ~= sx[m] * (xq[m, k] - zx[m])
    w[n, k] ~= s1[n] * w8[n, k]
    y[m, n]  = sx[m] * s1[n] * (sum_k xq[m, k] * w8[n, k]  -  zx[m] * sum_k w8[n, k])
                               '---- int8 x int8 -> int32 ----'   '- wsum[n], per call -'

CPU path (measured with ``qbench bench-kernels --paths``; numbers in the README): unpack the
int4 codes into int8 (times the integer group scales) per call, then ``torch._int_mm`` (oneDNN
s8s8 GEMM, AMX/VNNI on this CPU). Measured alternatives, 1024x3072x3072, 2 threads,
``OMP_WAIT_POLICY=PASSIVE``, relative to FP32 (qbench W8A8 0.38x, W4A8 0.54x, bare
``torch._int_mm`` 0.18x): ``aten._weight_int4pack_mm_for_cpu`` takes bf16 activations (W4A16,
not A8) and ran 1.90x; torchao ``Int8DynamicActivationIntxWeightConfig(int4, PerGroup(32))``
stores int4 in int8 bytes and ran 1.66x; torchao ``Int8DynamicActivationInt8WeightConfig``
(W8A8) 0.40x; ``aten._dyn_quant_matmul_4bit`` is a float reference on x86 (~25 s); torchao 0.18's
``da8w4_linear_cpu`` has no compiled CPU kernel in the installed wheel.

CUDA path (UNTESTED on a GPU: none was available when it was written): the same functions run
on CUDA tensors; ``torch._int_mm`` dispatches to cuBLASLt's int8 GEMM there and needs
``M > 16`` and ``K, N`` multiples of 8, so :func:`int8_mm` pads. The installed torchao 0.18 build
has neither the CUTLASS s8s4 nor the Marlin-QQQ W4A8 op (no such op in ``torchao.ops``, no such
symbol in its ``_C_cutlass_90a`` library), so there is no torchao W4A8 GEMM to call; int4
weights are unpacked to int8 on the GPU per call.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from qbench.quant import pack as packing
from qbench.quant.primitives import act_qparams, check_finite, quantize

CPU_PATH = "int4/int8 unpack + torch._int_mm (int8 x int8 -> int32), oneDNN"
CUDA_PATH = "int4/int8 unpack + torch._int_mm (cuBLASLt int8 GEMM) [untested on GPU]"


WEIGHT_ONLY_PATH = "packed int weights dequantized per call + float GEMM (weight-only)"


def kernel_path(device: torch.device | str, weight_only: bool = False) -> str:
    dev = torch.device(device)
    if dev.type in ("cpu", "cuda") and weight_only:
        return WEIGHT_ONLY_PATH + (" [untested on GPU]" if dev.type == "cuda" else "")
    if dev.type == "cpu":
        return CPU_PATH
    if dev.type == "cuda":
        return CUDA_PATH
    raise RuntimeError(f"kernel mode has no integer GEMM for device {dev.type!r}; use --mode simulate")


def int8_mm(xq: torch.Tensor, w8: torch.Tensor) -> torch.Tensor:
    """``xq`` [M, K] int8 @ ``w8`` [N, K] int8 ^T -> int32 [M, N]."""
    if xq.device.type == "cuda":  # cuBLASLt: M > 16, K and N multiples of 8
        m, k = xq.shape
        n = w8.shape[0]
        pm, pk, pn = max(17, -(-m // 8) * 8) - m, (-k) % 8, (-n) % 8
        if pm or pk or pn:
            xq = F.pad(xq, (0, pk, 0, pm))
            w8 = F.pad(w8, (0, pk, 0, pn))
            return torch._int_mm(xq, w8.t())[:m, :n]
    return torch._int_mm(xq, w8.t())


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


def int_linear(
    x2: torch.Tensor,
    w8: torch.Tensor,
    s1: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    a_bits: int,
    a_symmetric: bool,
    a_granularity: str,
    static: tuple[torch.Tensor, torch.Tensor | None] | None = None,
) -> torch.Tensor:
    """Quantize ``x2`` [M, K] to integers, int GEMM with ``w8`` [N, Kp], rescale; float32 [M, N].

    Runs in row chunks (per-token scales are row-local; a dynamic per-tensor scale is computed
    over all rows first), writing each chunk's rescaled output into one [M, N] result."""
    m, k = x2.shape
    n, kp = w8.shape
    if static is None and a_granularity == "tensor":  # one scale for the whole tensor, not per chunk
        static = act_qparams(x2, a_bits, a_symmetric, "tensor")
        static = (static[0].reshape(1, 1), None if static[1] is None else static[1].reshape(1, 1))
    s1 = s1.to(torch.float32).view(1, -1)
    asym = (static[1] is not None) if static is not None else not a_symmetric
    ws1 = None
    if asym:
        # column sums of the int8 weight by the same int GEMM with a row of ones (exact int32;
        # computed per call rather than stored, to keep the W4A8 format at <= 0.27x FP16 bytes)
        wsum = int8_mm(torch.ones(1, kp, dtype=torch.int8, device=w8.device), w8).view(-1)
        ws1 = wsum.to(torch.float32) * s1.view(-1)
    b = None if bias is None else bias.to(torch.float32).view(1, -1)
    out = torch.empty(m, n, dtype=torch.float32, device=x2.device)
    step = chunk_rows(m, k, n)
    for i in range(0, m, step):
        xq, sx, zx = quantize_act_int(x2[i : i + step], a_bits, a_symmetric, a_granularity, static)
        if kp != k:  # zero-padded weight columns: any activation value there contributes 0
            xq = F.pad(xq, (0, kp - k))
        y = int8_mm(xq, w8).to(torch.float32).mul_(s1)  # (a type-promoting mul measured 2x slower)
        if zx is not None:
            y.addr_(zx.to(torch.float32).expand(y.shape[0], 1).reshape(-1), ws1, alpha=-1.0)
        sx = sx.to(torch.float32).expand(y.shape[0], 1)
        dst = out[i : i + step]
        if b is not None:
            torch.addcmul(b, y, sx, out=dst)
        else:
            torch.mul(y, sx, out=dst)
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
