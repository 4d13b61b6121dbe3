"""The integer GEMM behind kernel mode, chosen per machine (once per process) and per layer.

Every path computes the same thing, ``float32(xq @ w8^T)`` with int32-exact accumulation (so the
choice never changes an output value; tested bit for bit), and differs only in speed and in the
memory it holds:

============== ====================================================================================
path           what runs
============== ====================================================================================
int_mm         ``torch._int_mm`` (s8 x s8 -> s32). CPU: oneDNN's VNNI/AMX kernel where cpuinfo has
               AVX512-VNNI, else a reference loop (~125x FP32). CUDA: cuBLASLt. W<=4 weights are
               unpacked to int8 per call; nothing extra stays in memory.
onednn         ``onednn::qlinear_pointwise``: activations shifted to u8 (+2^(A-1)), the zero point
               compensated inside oneDNN in int32, ``s1`` applied in its epilogue; int8 weights
               prepacked at first use and kept (resident, non-persistent). Exact only where u8 x s8
               cannot saturate: a VNNI/AMX CPU, or a layer whose bound below holds.
onednn-split   as onednn, but an A8 layer whose int16 pair sums could saturate (``255 * 2 *
               max|w8| > 32767``) gets its activations split into 7-bit digits along K,
               ``u = lo + 128*hi`` with ``X' = [lo, 128*hi]``, ``W' = [w8, w8]`` and zero point 64:
               every pair is then at most ``2*128*128``, exact on any x86 CPU (oneDNN's own advice:
               "use u7 [0, 127]"), for 2x the multiply-adds and 2x the prepacked weight.
triton         CUDA (or the Triton interpreter): :mod:`qbench.quant.triton_w4a8`, fused per-token
               activation quantization + int4/int2-in-registers int8 tensor-core GEMM, for
               two-level W<=4 layers; other layers use int_mm.
============== ====================================================================================

Selection: ``QBENCH_KERNEL_PATH`` (``auto`` | a path) forces a path (refused, in one line, where it
is unavailable or inexact on this machine); ``auto`` reads the CPU's flags
(:mod:`qbench.quant.cpucaps`), runs a short probe (exactness on saturating operands, then time
at 256x1024x1024) and takes ``int_mm`` where the CPU has a VNNI/AMX int8 dot and int_mm is within
25% of the fastest exact path, else the fastest exact path. The choice, the reason, the CPU's
flags and the probe are recorded with every kernel-mode result (:func:`kernel_info`).
"""
from __future__ import annotations

import os
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from qbench.errors import QBenchError
from qbench.quant import cpucaps, kernels
from qbench.quant import pack as packing
from qbench.quant.primitives import two_level_weight

ENV = "QBENCH_KERNEL_PATH"
CPU_PATHS = ("int_mm", "onednn", "onednn-split")
CUDA_PATHS = ("int_mm", "triton")
DESCRIPTIONS = {
    "int_mm": "torch._int_mm int8 GEMM (W<=4 unpacked to int8 per call)",
    "onednn": "oneDNN qlinear u8s8 (int8 weights prepacked and resident)",
    "onednn-split": "oneDNN qlinear u8s8, activations split into 7-bit digits where int16 pairs could saturate (int8 weights prepacked and resident)",
    "triton": "Triton fused W4A8 (per-token activation quantization kernel + int4-in-registers int8 tensor-core GEMM) for two-level W<=4 layers; int_mm for the others",
}
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
@dataclass
class Selection:
    device: str
    path: str
    reason: str
    forced: bool = False
    caps: cpucaps.CpuCaps | None = None
    probe: dict[str, cpucaps.PathProbe] = field(default_factory=dict)

    def describe(self) -> str:
        where = self.caps.summary() if self.caps is not None else self.device
        return f"{self.device} {self.path}: {DESCRIPTIONS[self.path]} | {where}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "path": self.path,
            "description": DESCRIPTIONS[self.path],
            "reason": self.reason,
            "forced": self.forced,
            "cpu": None if self.caps is None else self.caps.to_dict(),
            "probe": {k: v.to_dict() for k, v in self.probe.items()},
        }


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "") not in ("", "0")


def _cpu_candidates() -> dict[str, Callable[[torch.Tensor, int], Callable[[torch.Tensor], torch.Tensor] | None]]:
    one = torch.ones(1, 1)

    def int_mm(w8, a_bits):
        return IntMMOperand(lambda: w8, *w8.shape).bind(one)

    def onednn(split):
        def build(w8, a_bits):
            if not hasattr(torch.ops.onednn, "qlinear_pointwise"):
                return None
            return OneDNNOperand(w8, a_bits, split).bind(torch.ones(1, w8.shape[0]))

        return build

    return {"int_mm": int_mm, "onednn": onednn(False), "onednn-split": onednn(True)}


def choose_cpu(caps: cpucaps.CpuCaps, probe: dict[str, cpucaps.PathProbe], forced: str | None) -> tuple[str, str]:
    """(path, reason) from the capabilities and the probe (pure; tested with faked inputs).

    Raises :class:`QBenchError` for a forced path that is unknown, unavailable or inexact here,
    and when no path is exact."""
    exact = {p: r for p, r in probe.items() if p in CPU_PATHS and r.available and r.exact}
    if forced:
        r = probe.get(forced)
        if r is None or not r.available:
            raise QBenchError(f"{ENV}={forced}: not available on this machine ({r.note if r else 'not probed'})")
        if not r.exact:
            raise QBenchError(f"{ENV}={forced}: not exact on this CPU ({r.note}); use onednn-split or auto")
        return forced, f"forced by {ENV}"
    if not exact:
        notes = "; ".join(f"{p}: {r.note}" for p, r in probe.items() if p in CPU_PATHS)
        raise QBenchError(f"kernel mode: no exact int8 GEMM on this CPU ({notes}); use --mode simulate")
    fastest = min(exact, key=lambda p: exact[p].ms or float("inf"))
    best = exact[fastest].ms or float("inf")
    im = exact.get("int_mm")
    if im is not None and caps.int8_dot and (im.ms or float("inf")) <= 1.25 * best:
        return "int_mm", f"int8 dot instruction (VNNI/AMX) and torch._int_mm within 25% of the fastest exact path ({im.ms:.2f} vs {best:.2f} ms); keeps W<=4 weights packed in memory"
    why = "no VNNI/AMX int8 dot" if caps.int8_dot is False else "fastest exact path"
    slow = ", ".join(f"{p} {r.ms:.1f} ms" if r.ms is not None else f"{p} ({r.note or 'inexact'})" for p, r in probe.items() if p in CPU_PATHS and p != fastest)
    return fastest, f"{why}: {fastest} {best:.2f} ms at the probe shape; others: {slow}"


_SELECTED: dict[str, Selection] = {}
_OVERRIDE: dict[str, str] = {}


def _forced(device_type: str) -> str | None:
    if device_type in _OVERRIDE:
        return _OVERRIDE[device_type]
    v = os.environ.get(ENV, "").strip().lower()
    return None if v in ("", "auto") else v


def selection(device: torch.device | str) -> Selection:
    """The path for ``device`` in this process (probed once; ``QBENCH_KERNEL_PATH`` / :func:`forced_path` win)."""
    dev = torch.device(device).type
    forced = _forced(dev)
    key = f"{dev}:{forced or 'auto'}"
    if key in _SELECTED:
        return _SELECTED[key]
    if dev == "cpu":
        sel = _select_cpu(forced)
    elif dev == "cuda":
        sel = _select_cuda(forced)
    else:
        raise QBenchError(f"kernel mode has no integer GEMM for device {dev!r}; use --mode simulate")
    _SELECTED[key] = sel
    return sel


def _select_cpu(forced: str | None) -> Selection:
    caps = cpucaps.cpu_caps()
    if forced == "triton":
        if not triton_interpreting():
            raise QBenchError(f"{ENV}=triton needs a CUDA device (or TRITON_INTERPRET=1, for tests)")
        return Selection("cpu", "triton", "forced; Triton interpreter on CPU (tests only: slow)", True, caps)
    if forced is not None and forced not in CPU_PATHS:
        raise QBenchError(f"{ENV}={forced}: unknown CPU path; expected auto, {', '.join(CPU_PATHS)}")
    cands = _cpu_candidates()
    if forced is not None:
        cands = {forced: cands[forced]}
    probe = cpucaps.probe(cands)
    path, reason = choose_cpu(caps, probe, forced)
    return Selection("cpu", path, reason, forced is not None, caps, probe)


def _select_cuda(forced: str | None) -> Selection:
    if forced is not None and forced not in CUDA_PATHS:
        raise QBenchError(f"{ENV}={forced}: unknown CUDA path; expected auto, {', '.join(CUDA_PATHS)}")
    ok, note = False, ""
    if forced in (None, "triton"):
        try:
            ok, note = triton_self_check("cuda")
        except Exception as e:  # no triton, a compile error on this GPU
            ok, note = False, f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    if forced == "triton" and not ok:
        raise QBenchError(f"{ENV}=triton: the Triton kernel is not usable here ({note})")
    probe = {"triton": cpucaps.PathProbe("triton", ok, exact=ok or None, note=note)}
    if ok:
        return Selection("cuda", "triton", "forced" if forced else "Triton kernel compiled and bit-exact vs int_mm on this GPU", forced is not None, None, probe)
    return Selection("cuda", "int_mm", f"forced by {ENV}" if forced else f"Triton kernel unusable ({note})", forced is not None, None, probe)


def reset() -> None:
    """Forget the choices (tests; after changing ``QBENCH_KERNEL_PATH``)."""
    _SELECTED.clear()


@contextmanager
def forced_path(path: str, device: str = "cpu") -> Iterator[Selection]:
    """Use ``path`` on ``device`` inside the block (the benchmark times the alternatives this way)."""
    old = _OVERRIDE.get(device)
    _OVERRIDE[device] = path
    try:
        yield selection(device)
    finally:
        if old is None:
            _OVERRIDE.pop(device, None)
        else:
            _OVERRIDE[device] = old


def kernel_info(device: torch.device | str) -> dict[str, Any]:
    return selection(device).to_dict()


def kernel_path(device: torch.device | str, weight_only: bool = False) -> str:
    """One line naming the GEMM kernel mode runs on ``device`` and the machine's capability
    (probes once per process); raises :class:`~qbench.errors.QBenchError` for a device without one."""
    dev = torch.device(device)
    sel = selection(dev)  # refuses devices without an integer GEMM
    if weight_only:
        where = sel.caps.summary() if sel.caps is not None else dev.type
        return f"{dev.type} dequant: packed int weights dequantized per call + float GEMM (weight-only) | {where}"
    return sel.describe()


#: (M, K, N) of the self-check: M not a multiple of any tile; K=200 pads to 224 and gathers group
#: scales per element; 130x256x136 spans two row and column tiles with one group scale per K tile
SELF_CHECK_SHAPES = ((37, 200, 72), (130, 256, 136))


def triton_self_check(device: str = "cuda") -> tuple[bool, str]:
    """Compile and run :mod:`qbench.quant.triton_w4a8`'s kernels on ``device`` at
    :data:`SELF_CHECK_SHAPES` with the tiles a GPU uses (W4A8 and W2A8, asymmetric and symmetric
    per-token, group size 32) and compare with the ``int_mm`` reference bit for bit: (ok, note).
    Raises ImportError where triton is missing."""
    from qbench.quant import (
        triton_w4a8,  # needs triton (the CUDA wheel's); only here and in operand()
    )

    g = torch.Generator().manual_seed(3)
    for m, k, n in SELF_CHECK_SHAPES:
        for w_bits, sym in ((4, False), (4, True), (2, False)):
            w, x, b = torch.randn(n, k, generator=g), torch.randn(m, k, generator=g) * 2, torch.randn(n, generator=g)
            tw = two_level_weight(w, w_bits, 32)
            q = tw.q.to(device)
            bufs = {"qweight": packing.pack(q, w_bits), "sg": tw.sg.to(device)}
            kp = q.shape[1]
            s1, b, x = tw.s1.to(device), b.to(device), x.to(device)
            act = dict(a_bits=8, a_symmetric=sym, a_granularity="token")
            w8 = packing.unpack_scaled(bufs["qweight"], w_bits, bufs["sg"], 32)
            ref = IntMMOperand(lambda w8=w8: w8, n, kp).linear(x, s1, b, **act)
            out = triton_w4a8.TritonOperand(bufs, w_bits, 32, n, kp).linear(x, s1, b, **act)
            if not torch.equal(out, ref):
                return False, f"{m}x{k}x{n} W{w_bits}A8 {'sym' if sym else 'asym'}: max |triton - int_mm| {float((out - ref).abs().max()):.3g}"
    shapes = ", ".join("x".join(map(str, s)) for s in SELF_CHECK_SHAPES)
    return True, f"bit-exact vs int_mm at {shapes} (W4A8/W2A8, asym/sym per-token, GPU tiles)"


# -- per layer ----------------------------------------------------------------------------------------------
_OPERANDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # layer -> {path: (key, operand)}


def layer_path(layer, device: torch.device) -> str:
    """The path this layer runs on ``device``: the machine's, except that ``triton`` applies only to
    two-level W<=4 layers (the others use int_mm)."""
    path = selection(device).path
    if path == "triton" and not (layer.two_level and layer.spec.w_bits <= 4):
        return "int_mm"
    return path


def operand(layer, device: torch.device) -> Any:
    """The layer's operand for its path, built from its stored buffers and cached (rebuilt when a
    buffer is replaced or written in place, e.g. by ``load_state_dict``). Not part of the
    ``state_dict``: the saved format stays the packed buffers."""
    path = layer_path(layer, device)
    bufs = layer._kernel_buffers()
    key = (path, str(device)) + tuple((n, t.data_ptr(), t._version) for n, t in sorted(bufs.items()))
    cache = _OPERANDS.setdefault(layer, {})
    hit = cache.get(path)
    if hit is not None and hit[0] == key:
        return hit[1]

    def w8_fn() -> torch.Tensor:
        return kernels.weight_int8(layer._kernel_buffers(), layer.spec.w_bits, layer.group_size, layer.two_level)

    if path == "int_mm":
        op: Any = IntMMOperand(w8_fn, layer.n, layer.kp)
    elif path in ("onednn", "onednn-split"):
        op = OneDNNOperand(w8_fn(), layer.spec.a_bits, split=path == "onednn-split")
    else:
        from qbench.quant import triton_w4a8

        op = triton_w4a8.TritonOperand(bufs, layer.spec.w_bits, layer.group_size, layer.n, layer.kp)
    cache[path] = (key, op)
    return op


def operand_nbytes(layer, path: str) -> int:
    """Bytes the layer's cached operand for ``path`` holds (0 if it has not run on that path)."""
    hit = _OPERANDS.get(layer, {}).get(path)
    return 0 if hit is None else hit[1].resident_nbytes()


def resident_extra_nbytes(layer) -> int:
    """Bytes the layer's cached operands hold beyond its stored buffers (prepacked int8 weights,
    column sums); 0 before its first forward."""
    return sum(op.resident_nbytes() for _, op in _OPERANDS.get(layer, {}).values())
