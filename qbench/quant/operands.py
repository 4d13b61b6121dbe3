"""The integer GEMM operands of :mod:`qbench.quant.backends`' paths (``int_mm``, ``onednn``,
``onednn-split``): each computes ``float32(xq @ w8^T)`` with int32-exact accumulation for one
layer, and holds what its kernel needs resident. :mod:`qbench.quant.backends` chooses among them.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from qbench.quant import kernels

INT16_MAX = 32767


def int8_mm(xq: torch.Tensor, w8: torch.Tensor) -> torch.Tensor:
    """``xq`` [M, K] int8 @ ``w8`` [N, K] int8 ^T -> int32 [M, N] (``torch._int_mm``)."""
    if xq.device.type == "cuda":  # cuBLASLt: M > 16, K and N multiples of 8
        m, k = xq.shape
        n = w8.shape[0]
        pm, pk, pn = max(17, -(-m // 8) * 8) - m, (-k) % 8, (-n) % 8
        if pm or pk or pn:
            return torch._int_mm(F.pad(xq, (0, pk, 0, pm)), F.pad(w8, (0, pk, 0, pn)).t())[:m, :n]
    return torch._int_mm(xq, w8.t())


# -- operands: a layer's int8 weight, ready for one path ---------------------------------------------------
class _IntGemm:
    """An operand whose layer runs :func:`qbench.quant.kernels.int_linear` (quantize, GEMM, epilogue)."""

    def linear(self, x2: torch.Tensor, s1: torch.Tensor, bias: torch.Tensor | None, **act: Any) -> torch.Tensor:
        return kernels.int_linear(x2, self, s1, bias, **act)


class IntMMOperand(_IntGemm):
    """``torch._int_mm``; ``w8_fn()`` gives the int8 weight [N, Kp] (unpacked per call for W<=4)."""

    path = "int_mm"

    def __init__(self, w8_fn: Callable[[], torch.Tensor], n: int, kp: int):
        self._w8_fn, self.n, self.kp = w8_fn, n, kp
        self._colsum: torch.Tensor | None = None

    def colsum(self) -> torch.Tensor:
        """int32 [N]: sum_k w8[n, k] (exact; cached: 4 bytes per output channel)."""
        if self._colsum is None:
            w8 = self._w8_fn()
            self._colsum = int8_mm(torch.ones(1, self.kp, dtype=torch.int8, device=w8.device), w8).view(-1)
        return self._colsum

    def bind(self, s1: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """Per forward: ``mm(xq int8 [M, Kp]) -> float32(acc) * s1`` [M, N] (``s1`` float32 [1, N])."""
        w8 = self._w8_fn()
        return lambda xq: int8_mm(xq, w8).to(torch.float32).mul_(s1)

    def resident_nbytes(self) -> int:
        return 0 if self._colsum is None else self._colsum.numel() * 4


def needs_split(a_bits: int, w_absmax: int) -> bool:
    """Could ``VPMADDUBSW`` saturate? u8 activations reach ``2^A - 1`` (+2^(A-1) shift); a pair of
    products is at most ``umax * 2 * max|w8|``; int16 holds 32767 (oneDNN, "Nuances of int8")."""
    umax = 2**a_bits - 1
    return umax * 2 * w_absmax > INT16_MAX


class OneDNNOperand(_IntGemm):
    """``onednn::qlinear_pointwise`` on a prepacked int8 weight (``split``: 7-bit digits along K)."""

    def __init__(self, w8: torch.Tensor, a_bits: int, split: bool):
        n, kp = w8.shape
        self.n, self.kp, self.a_bits = n, kp, a_bits
        self.shift = 2 ** (a_bits - 1)
        self.split = bool(split) and needs_split(a_bits, int(w8.to(torch.int16).abs().max()) if w8.numel() else 0)
        self.path = "onednn-split" if self.split else "onednn"
        wp = torch.cat([w8, w8], 1) if self.split else w8.contiguous()
        self._packed = torch.ops.onednn.qlinear_prepack(wp, None)
        self._packed_nbytes = wp.numel()  # oneDNN's blocked layout is opaque; its int8 elements
        self._colsum = w8.sum(1, dtype=torch.int32)
        self._zeros = torch.zeros(n, dtype=torch.int64)

    def colsum(self) -> torch.Tensor:
        return self._colsum

    def _u8(self, xq: torch.Tensor) -> torch.Tensor:
        if self.shift == 128:  # two's complement + 128 = flip the sign bit
            u = xq.view(torch.uint8).bitwise_xor(128)
        else:  # codes in [-2^(A-1), 2^(A-1) - 1]: no int8 overflow
            u = (xq + self.shift).view(torch.uint8)
        if not self.split:
            return u
        m, k = u.shape
        buf = torch.empty(m, 2 * k, dtype=torch.uint8)
        torch.bitwise_and(u, 127, out=buf[:, :k])
        torch.bitwise_and(u, 128, out=buf[:, k:])
        return buf

    def bind(self, s1: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        zp = 64 if self.split else self.shift  # split: (lo - 64) + (128*hi - 64) = u - 128
        scales = s1.reshape(-1).contiguous()
        packed, zeros = self._packed, self._zeros

        def mm(xq: torch.Tensor) -> torch.Tensor:
            return torch.ops.onednn.qlinear_pointwise(self._u8(xq), 1.0, zp, packed, scales, zeros, None, 1.0, 0, torch.float32, "none", [], "")

        return mm

    def resident_nbytes(self) -> int:
        return self._packed_nbytes + self._colsum.numel() * 4 + self._zeros.numel() * 8


# -- the machine's choice ------------------------------------------------------------------------------
