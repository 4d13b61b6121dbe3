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

from qbench.errors import QBenchError
from qbench.quant import cpucaps, kernels
from qbench.quant.operands import INT16_MAX, IntMMOperand, OneDNNOperand, _IntGemm, int8_mm, needs_split  # noqa: F401 (re-exported)
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
