"""Fused W4A8 (and W2A8) for CUDA in Triton: per-token activation quantization + a GEMM that
unpacks int4 weights in registers (QServe / QQQ style) and runs int8 tensor-core dots.

Two kernels, bit-exact against the reference path (:func:`qbench.quant.kernels.int_linear` with
``torch._int_mm``; tested under ``TRITON_INTERPRET=1`` on CPU tensors at the tile shapes a GPU
compiles, and on a GPU by :func:`qbench.quant.backends.triton_self_check` before the path is
chosen):

* :func:`_act_quant_kernel`, one program per token row ``x`` [M, K] (float32/16, bf16):
  the row's min/max, then ``scale``/``zero`` exactly as
  :func:`qbench.quant.primitives.qparams_from_range` (``absmax / ((qmax-qmin)/2)`` or
  ``(hi-lo) / (qmax-qmin)`` as IEEE float32 divisions, clamped to float32 eps;
  ``zero = clamp(qmin - round(lo/scale))``), then codes as
  :func:`~qbench.quant.primitives.quantize` (``x * (1/scale)``, round half to even, ``+ zero``,
  clamp) into int8 ``xq`` [M, Kp] (zero-padded to the weight's ``Kp``). Divisions are
  ``tl.div_rn`` (IEEE, round to nearest); the reference divides by a same-device float32 tensor
  (:func:`~qbench.quant.primitives.div_by`), which PyTorch evaluates as an IEEE division on CPU
  and CUDA alike, so the scales agree on every device by construction (PyTorch's CUDA kernel
  would multiply by ``float32(1/d)`` for a Python-number divisor: 1 ulp off in ~72% of rows).
  Rounding is the float32 ``(v + 1.5*2^23) - 1.5*2^23`` identity, exact round-half-even for
  ``|v| < 2^22`` (larger magnitudes clamp to the same code either way). A static (calibrated, or
  dynamic per-tensor computed on the device) scale/zero is read instead. A row holding NaN/inf
  is flagged in ``bad`` [M] int32.
* :func:`_w4a8_gemm_kernel`: tiles ``[BM, BN]`` of ``y``; for each tile of ``BK`` packed bytes
  of the weight (:mod:`qbench.quant.pack`'s blocked layout: byte ``j`` of a row holds code
  ``j + f*Kp/ppb`` in bit field ``f``), each field is sign-extended with int8 shifts, multiplied
  by its integer group scale ``sg`` (two-level format: ``|sg*q| <= 128``) and fed to
  ``tl.dot(int8, int8) -> int32`` with the matching activation columns. Where the group size and
  ``Kp/ppb`` are multiples of ``BK`` (:func:`tiles` picks such a ``BK`` when one exists) a K tile
  lies inside one group and its group scales are one ``[BN]`` load; otherwise they are gathered
  per element (``[BN, BK]`` loads, served from cache). Epilogue, one IEEE float32 operation per
  step and no fused multiply-add (``enable_fp_fusion=False``), the order of
  :func:`qbench.quant.kernels.epilogue`::

      y = float32(acc) * s1[n];  y = y - float32(zx[m]) * ws1[n];  y = y * sx[m];  y = y + bias[n]

  with ``ws1 = float32(colsum(w8)) * s1`` computed on the device, as the reference does. Rows
  flagged ``bad`` are written as NaN.

Launch facts (each a known limit, stated): tiles are fixed by :func:`tiles` (``BM`` 64 for
M <= 64 else 128, ``BN`` 128, ``BK`` 64 or 32: NVIDIA's int8 ``tl.dot`` needs K tiles >= 32), with
no ``triton.autotune`` (the interpreter tests run exactly these shapes; autotuning would pick
shapes no CPU test ran); pointer offsets are int64 (``row * stride`` cannot wrap at 2^31
elements); there is no host synchronisation per layer: instead of raising at the layer as the
reference does, NaN/inf activations turn the layer's output rows into NaN, which propagate to the
image and raise :class:`~qbench.errors.NonFiniteOutputError` when it is decoded
(``qbench.models.base``). ``triton`` must be importable (it ships with the CUDA torch wheel).
"""
from __future__ import annotations

import os
from typing import Any

import torch
import triton
import triton.language as tl

from qbench.quant import pack as packing
from qbench.quant.primitives import EPS, act_qparams, qrange

_RNE = 12582912.0  # 1.5 * 2**23: (v + c) - c rounds a float32 |v| < 2**22 to nearest, ties to even


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "") not in ("", "0")


@triton.jit
def _act_quant_kernel(x_ptr, xq_ptr, sx_ptr, zx_ptr, bad_ptr, s_ptr, z_ptr, K, KP, stride_x, stride_q,
                      QMIN: tl.constexpr, QMAX: tl.constexpr, MODE: tl.constexpr, BLOCK: tl.constexpr, EPS_: tl.constexpr):
    """MODE 0: dynamic symmetric, 1: dynamic asymmetric (per row), 2: static scale (``s_ptr``) and
    zero (``z_ptr``, int32) for every row."""
    row = tl.program_id(0).to(tl.int64)  # int64 offsets: row * stride may pass 2^31
    xrow = x_ptr + row * stride_x
    bad = tl.zeros((BLOCK,), dtype=tl.int32)
    if MODE == 2:
        scale = tl.load(s_ptr)
        zero = tl.load(z_ptr).to(tl.float32)
        for k0 in range(0, K, BLOCK):
            offs = k0 + tl.arange(0, BLOCK)
            v = tl.load(xrow + offs, mask=offs < K, other=0.0).to(tl.float32)
            bad += ((v != v) | (tl.abs(v) == float("inf"))).to(tl.int32)
    else:
        lo = tl.full((BLOCK,), float("inf"), tl.float32)
        hi = tl.full((BLOCK,), float("-inf"), tl.float32)
        for k0 in range(0, K, BLOCK):
            offs = k0 + tl.arange(0, BLOCK)
            m = offs < K
            v = tl.load(xrow + offs, mask=m, other=0.0).to(tl.float32)
            bad += ((v != v) | (tl.abs(v) == float("inf"))).to(tl.int32)
            lo = tl.minimum(lo, tl.where(m, v, float("inf")))
            hi = tl.maximum(hi, tl.where(m, v, float("-inf")))
        amin = tl.min(lo, axis=0)
        amax = tl.max(hi, axis=0)
        if MODE == 0:
            absmax = tl.maximum(tl.abs(amax), tl.abs(amin))
            scale = tl.maximum(tl.div_rn(absmax, (QMAX - QMIN) / 2), EPS_)
            zero = 0.0
            tl.store(zx_ptr + row, 0)
        else:
            lo0 = tl.minimum(amin, 0.0)
            hi0 = tl.maximum(amax, 0.0)
            scale = tl.maximum(tl.div_rn(hi0 - lo0, (QMAX - QMIN) * 1.0), EPS_)
            r = (tl.div_rn(lo0, scale) + _RNE) - _RNE
            zero = tl.minimum(tl.maximum(QMIN - r, QMIN * 1.0), QMAX * 1.0)
            tl.store(zx_ptr + row, zero.to(tl.int32))
        tl.store(sx_ptr + row, scale)
    inv = tl.div_rn(1.0, scale)
    for k0 in range(0, KP, BLOCK):
        offs = k0 + tl.arange(0, BLOCK)
        v = tl.load(xrow + offs, mask=offs < K, other=0.0).to(tl.float32)
        q = v * inv
        q = (q + _RNE) - _RNE
        q = q + zero
        q = tl.minimum(tl.maximum(q, QMIN * 1.0), QMAX * 1.0).to(tl.int8)
        q = tl.where(offs < K, q, 0)  # padded columns: code 0 (their weight columns are 0 too)
        tl.store(xq_ptr + row * stride_q + offs, q, mask=offs < KP)
    tl.store(bad_ptr + row, tl.sum(bad, axis=0))


@triton.jit
def _w4a8_gemm_kernel(xq_ptr, qw_ptr, sg_ptr, s1_ptr, ws1_ptr, sx_ptr, zx_ptr, b_ptr, bad_ptr, out_ptr, M, N, KB,
                      stride_x, stride_w, stride_g, stride_o,
                      PPB: tl.constexpr, CB: tl.constexpr, GS: tl.constexpr, HAS_ZERO: tl.constexpr, HAS_BIAS: tl.constexpr,
                      PER_ROW: tl.constexpr, SG_COL: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    mm = rm < M
    mn = rn < N
    rm64 = rm.to(tl.int64)  # int64 offsets: row * stride may pass 2^31
    rn64 = rn.to(tl.int64)
    acc = tl.zeros((BM, BN), dtype=tl.int32)
    for j0 in range(0, KB, BK):
        rj = j0 + tl.arange(0, BK)
        mj = rj < KB
        p = tl.load(qw_ptr + rn64[:, None] * stride_w + rj[None, :], mask=mn[:, None] & mj[None, :], other=0)
        p = p.to(tl.int8, bitcast=True)  # [BN, BK] packed bytes
        for f in tl.static_range(PPB):
            code = (p << (8 - CB * (f + 1))) >> (8 - CB)  # field f, sign-extended (int8 arithmetic shift)
            rk = f * KB + rj
            if SG_COL:  # the K tile lies inside one group: one scale per output row
                sg = tl.load(sg_ptr + rn64 * stride_g + (f * KB + j0) // GS, mask=mn, other=0)
                w8 = (code.to(tl.int16) * sg.to(tl.int16)[:, None]).to(tl.int8)  # |sg * q| <= 128 (two-level format)
            else:
                sg = tl.load(sg_ptr + rn64[:, None] * stride_g + (rk // GS)[None, :], mask=mn[:, None] & mj[None, :], other=0)
                w8 = (code.to(tl.int16) * sg.to(tl.int16)).to(tl.int8)
            x = tl.load(xq_ptr + rm64[:, None] * stride_x + rk[None, :], mask=mm[:, None] & mj[None, :], other=0)
            acc += tl.dot(x, tl.trans(w8), out_dtype=tl.int32)
    s1 = tl.load(s1_ptr + rn, mask=mn, other=0.0)
    y = acc.to(tl.float32) * s1[None, :]
    if PER_ROW:
        sx = tl.load(sx_ptr + rm, mask=mm, other=1.0)
    else:
        sx = tl.load(sx_ptr + rm * 0)
    if HAS_ZERO:
        ws1 = tl.load(ws1_ptr + rn, mask=mn, other=0.0)
        if PER_ROW:
            zx = tl.load(zx_ptr + rm, mask=mm, other=0)
        else:
            zx = tl.load(zx_ptr + rm * 0)
        y = y - zx.to(tl.float32)[:, None] * ws1[None, :]
    y = y * sx[:, None]
    if HAS_BIAS:
        y = y + tl.load(b_ptr + rn, mask=mn, other=0.0)[None, :]
    bad = tl.load(bad_ptr + rm, mask=mm, other=0)
    y = tl.where((bad != 0)[:, None], float("nan"), y)  # NaN/inf activations: a NaN row, no host sync
    tl.store(out_ptr + rm64[:, None] * stride_o + rn[None, :], y, mask=mm[:, None] & mn[None, :])


def tiles(m: int, kb: int, group_size: int) -> tuple[int, int, int, bool]:
    """``(BM, BN, BK, sg_col)`` for ``m`` rows and ``kb`` packed bytes per weight row: what a GPU
    runs and what the interpreter tests run. ``BK`` is 64 or 32 (NVIDIA's int8 ``tl.dot`` needs
    K >= 32): the larger one dividing both the group size and ``kb`` (then ``sg_col``: one group
    scale per row and K tile), else 64 with per-element group-scale gathers."""
    bm = 64 if m <= 64 else 128
    for bk in (64, 32):
        if group_size % bk == 0 and kb % bk == 0:
            return bm, 128, bk, True
    return bm, 128, 64, False


def _launch_opts() -> dict[str, Any]:
    return {} if interpreting() else {"enable_fp_fusion": False}


def quantize_act(x2: torch.Tensor, kp: int, a_bits: int, a_symmetric: bool, a_granularity: str,
                 static: tuple[torch.Tensor, torch.Tensor | None] | None = None):
    """``(xq int8 [M, kp], sx float32 [M] or [1], zx int32 [M] or [1] or None, per_row, bad int32 [M])``:
    the reference's codes and scales (:func:`qbench.quant.kernels.quantize_act_int`) for finite
    rows, ``bad[m] != 0`` where row ``m`` holds NaN/inf. Nothing is read back to the host."""
    m, k = x2.shape
    x2 = x2.contiguous()
    qmin, qmax = qrange(a_bits)
    dev = x2.device
    if static is None and a_granularity == "tensor":  # one scale over all rows, as the reference
        s, z = act_qparams(x2, a_bits, a_symmetric, "tensor", check=False)  # NaN/inf: flagged by the kernel
        static = (s.reshape(1, 1), None if z is None else z.reshape(1, 1))
    xq = torch.empty(m, kp, dtype=torch.int8, device=dev)
    bad = torch.empty(m, dtype=torch.int32, device=dev)
    if static is not None:
        s = static[0].reshape(1).to(device=dev, dtype=torch.float32).contiguous()
        z = torch.zeros(1, dtype=torch.int32, device=dev) if static[1] is None else static[1].reshape(1).to(device=dev, dtype=torch.int32).contiguous()
        sx, zx, mode = s, z, 2
    else:
        sx = torch.empty(m, dtype=torch.float32, device=dev)
        zx = torch.empty(m, dtype=torch.int32, device=dev)
        s, z, mode = sx, zx, 0 if a_symmetric else 1
    if m:
        _act_quant_kernel[(m,)](x2, xq, sx, zx, bad, s, z, k, kp, x2.stride(0), xq.stride(0),
                                QMIN=qmin, QMAX=qmax, MODE=mode, BLOCK=256 if k >= 256 else 32, EPS_=EPS, **_launch_opts())
    has_zero = (static[1] is not None) if static is not None else not a_symmetric
    return xq, sx, (zx if has_zero else None), static is None, bad


class TritonOperand:
    """A two-level W<=4 layer's packed weight for the fused kernel (``qweight`` uint8 [N, Kp/ppb],
    ``sg`` uint8 [N, G]); holds only the int32 column sums beyond the stored buffers."""

    path = "triton"

    def __init__(self, bufs: dict[str, torch.Tensor], w_bits: int, group_size: int, n: int, kp: int):
        self.qweight, self.sg = bufs["qweight"].contiguous(), bufs["sg"].contiguous()
        self.bits, self.gs, self.n, self.kp = w_bits, int(group_size), n, kp
        self.ppb = packing.per_byte(w_bits)
        self.cb = packing.container_bits(w_bits)
        self._colsum: torch.Tensor | None = None

    def colsum(self) -> torch.Tensor:
        """int32 [N]: sum_k w8[n, k] (exact; from one host-side unpack, cached)."""
        if self._colsum is None:
            w8 = packing.unpack_scaled(self.qweight, self.bits, self.sg, self.gs)
            self._colsum = w8.sum(1, dtype=torch.int32)
        return self._colsum

    def resident_nbytes(self) -> int:
        return 0 if self._colsum is None else self._colsum.numel() * 4

    def linear(self, x2: torch.Tensor, s1: torch.Tensor, bias: torch.Tensor | None, *, a_bits: int, a_symmetric: bool,
               a_granularity: str, static=None) -> torch.Tensor:
        """float32 [M, N] = the reference's :func:`~qbench.quant.kernels.int_linear` output, bit for bit."""
        m = x2.shape[0]
        xq, sx, zx, per_row, bad = quantize_act(x2, self.kp, a_bits, a_symmetric, a_granularity, static)
        s1 = s1.to(torch.float32).reshape(-1).contiguous()
        ws1 = (self.colsum().to(torch.float32) * s1).contiguous() if zx is not None else s1
        b = bias.to(torch.float32).reshape(-1).contiguous() if bias is not None else s1
        out = torch.empty(m, self.n, dtype=torch.float32, device=x2.device)
        if m == 0:
            return out
        kb = self.kp // self.ppb
        bm, bn, bk, sg_col = tiles(m, kb, self.gs)
        grid = (triton.cdiv(m, bm), triton.cdiv(self.n, bn))
        _w4a8_gemm_kernel[grid](xq, self.qweight, self.sg, s1, ws1, sx, zx if zx is not None else sx, b, bad, out,
                                m, self.n, kb, xq.stride(0), self.qweight.stride(0), self.sg.stride(0), out.stride(0),
                                PPB=self.ppb, CB=self.cb, GS=self.gs, HAS_ZERO=zx is not None, HAS_BIAS=bias is not None,
                                PER_ROW=per_row, SG_COL=sg_col, BM=bm, BN=bn, BK=bk, **_launch_opts())
        return out
