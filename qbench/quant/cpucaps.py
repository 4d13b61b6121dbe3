"""What this CPU can do for int8 GEMMs: instruction-set flags, and a short probe of the paths.

``cpu_caps()`` reads the flags that decide int8 GEMM speed and exactness (``/proc/cpuinfo`` on
Linux; elsewhere only torch's ``get_cpu_capability()`` is known). The facts behind the flags:

* ``avx512_vnni`` / ``avx_vnni`` (``VPDPBUSD``) and ``amx_int8`` (``TDPBUSD``) sum four u8 x s8
  products straight into int32: exact, and fast. ``torch._int_mm`` calls oneDNN only when
  cpuinfo reports AVX512-VNNI; on any other x86 CPU it runs a reference loop (measured ~125x
  slower than the FP32 ``F.linear`` on an AVX2-only EPYC, issue 15).
* without VNNI, oneDNN and fbgemm multiply u8 x s8 with ``VPMADDUBSW``, which adds two products
  into int16 *with saturation* (oneDNN's "Nuances of int8 computations": ``255*127 + 255*127``
  gives 32767, not 64770): full-range 8-bit activations then give wrong sums. Reproduced here
  with ``ONEDNN_MAX_CPU_ISA=AVX2`` (tests/test_kernel_backends.py).

``probe(...)`` therefore checks every candidate path for *exactness* on operands built to
saturate an int16 pair sum (and on random ones) against a float64 reference, then times the
exact ones at one small shape; :mod:`qbench.quant.backends` picks from that. Everything is pure
data (``CpuCaps``, ``PathProbe``) so the choice can be tested with faked capabilities.
"""
from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

#: the /proc/cpuinfo flags recorded with every kernel-mode result
FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")
#: environment variables that restrict the instruction sets the libraries use (recorded when set)
ISA_ENV = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS")


@dataclass(frozen=True)
class CpuCaps:
    """``flags``: which of :data:`FLAGS` the CPU reports (None: unknown, no /proc/cpuinfo)."""

    arch: str
    model: str
    torch_capability: str
    flags: tuple[str, ...] | None
    isa_env: dict[str, str] = field(default_factory=dict)

    @property
    def int8_dot(self) -> bool | None:
        """True if the CPU sums u8 x s8 into int32 in one instruction (VNNI or AMX); None: unknown."""
        if self.flags is None:
            return None
        return any(f in self.flags for f in ("avx512_vnni", "avx_vnni", "amx_int8"))

    def summary(self) -> str:
        if self.flags is None:
            fl = "flags unknown"
        else:
            have = [f for f in FLAGS if f in self.flags]
            missing = [f for f in ("avx512_vnni", "amx_int8") if f not in self.flags]
            fl = ", ".join(have) + ("; no " + ", no ".join(missing) if missing else "")
        env = "".join(f"; {k}={v}" for k, v in self.isa_env.items())
        return f"CPU {self.model or self.arch} (torch capability {self.torch_capability}; {fl}{env})"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["flags"] = None if self.flags is None else list(self.flags)
        d["int8_dot"] = self.int8_dot
        return d


def parse_cpuinfo(text: str) -> tuple[str, tuple[str, ...] | None]:
    """(model name, present :data:`FLAGS`) from the text of ``/proc/cpuinfo`` (first CPU)."""
    model, flags = "", None
    for line in text.splitlines():
        key, _, val = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = val.strip()
        elif key in ("flags", "Features") and flags is None:
            present = set(val.split())
            flags = tuple(f for f in FLAGS if f in present)
    return model, flags


def read_cpu_caps(cpuinfo: str | None = None) -> CpuCaps:
    """The capabilities of this machine (``cpuinfo``: the text of /proc/cpuinfo, for tests)."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
                cpuinfo = f.read()
        except OSError:
            cpuinfo = ""
    model, flags = parse_cpuinfo(cpuinfo)
    try:
        cap = torch.backends.cpu.get_cpu_capability()
    except Exception:  # pragma: no cover - very old torch
        cap = "unknown"
    env = {k: os.environ[k] for k in ISA_ENV if os.environ.get(k)}
    return CpuCaps(arch=platform.machine(), model=model, torch_capability=cap, flags=flags, isa_env=env)


_CAPS: CpuCaps | None = None


def cpu_caps() -> CpuCaps:
    """:func:`read_cpu_caps`, read once per process."""
    global _CAPS
    if _CAPS is None:
        _CAPS = read_cpu_caps()
    return _CAPS


# -- the probe ------------------------------------------------------------------------------------------
@dataclass
class PathProbe:
    """One candidate path: ``exact`` on the saturation test, ``ms`` at the probe shape (None: not
    timed), ``vs_fp32`` = ms / FP32 ``F.linear`` ms at the same shape, ``note`` why not usable."""

    path: str
    available: bool
    exact: bool | None = None
    ms: float | None = None
    vs_fp32: float | None = None
    note: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def saturation_operands(k: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """(xq int8 [20, k], w8 int8 [16, k]) whose products overflow an int16 pair sum in every way
    ``VPMADDUBSW`` can (after oneDNN's +128 shift of activations), plus random rows."""
    g = torch.Generator().manual_seed(1234)
    x = torch.randint(-128, 128, (20, k), dtype=torch.int8, generator=g)
    w = torch.randint(-128, 128, (16, k), dtype=torch.int8, generator=g)
    x[0], x[1], x[2], x[3] = 127, -128, 0, 100
    x[4, ::2], x[4, 1::2] = 127, -128
    w[0], w[1], w[2], w[3] = 127, -128, 64, -65
    w[4, ::2], w[4, 1::2] = -128, 127
    return x, w


def check_exact(mm: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, w: torch.Tensor) -> bool:
    """Does ``mm(x)`` (float32 [M, N]) equal float32(x @ w^T) computed exactly (float64)?"""
    ref = (x.double() @ w.double().t()).float()
    out = mm(x)
    return bool(torch.equal(out.float(), ref))


def time_ms(fn: Callable[[], object], repeats: int, slow_ms: float | None = None) -> float:
    """Median wall time (ms) of ``repeats`` calls after one warm-up; if the warm-up alone takes
    more than ``slow_ms``, that single time is returned (a slow path is not worth repeating)."""
    t0 = time.perf_counter()
    fn()
    first = (time.perf_counter() - t0) * 1e3
    if slow_ms is not None and first > slow_ms:
        return first
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(ts)


def probe(
    candidates: dict[str, Callable[[torch.Tensor, int], Callable[[torch.Tensor], torch.Tensor] | None]],
    shape: tuple[int, int, int] = (256, 1024, 1024),
    repeats: int = 3,
) -> dict[str, PathProbe]:
    """Check and time each candidate: ``candidates[name](w8, a_bits)`` builds the int GEMM for
    int8 weights ``w8`` [N, K] (returns ``mm(xq) -> float32 [M, N]``, or None if unavailable).

    Exactness: the :func:`saturation_operands`. Timing: ``shape`` = (M, K, N), random int8,
    median of ``repeats``, next to FP32 ``F.linear`` at the same shape (``vs_fp32``); a path
    whose warm-up call takes more than 20x the FP32 time is timed once (the ~125x reference
    loop of ``_int_mm`` on CPUs without VNNI would otherwise dominate the probe)."""
    xs, ws = saturation_operands()
    m, k, n = shape
    g = torch.Generator().manual_seed(0)
    xq = torch.randint(-128, 128, (m, k), dtype=torch.int8, generator=g)
    w8 = torch.randint(-128, 128, (n, k), dtype=torch.int8, generator=g)
    xf, wf = torch.randn(m, k, generator=g), torch.randn(n, k, generator=g)
    with torch.inference_mode():
        fp_ms = time_ms(lambda: torch.nn.functional.linear(xf, wf), repeats)
        out: dict[str, PathProbe] = {}
        for name, build in candidates.items():
            try:
                small = build(ws, 8)
            except Exception as e:  # an op missing from this torch build, an unsupported CPU
                out[name] = PathProbe(name, False, note=f"unavailable: {type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}")
                continue
            if small is None:
                out[name] = PathProbe(name, False, note="unavailable on this build")
                continue
            res = PathProbe(name, True, exact=check_exact(small, xs, ws))
            if not res.exact:
                res.note = "inexact: int16 pair sums saturate (no VNNI/AMX int8 dot on this CPU, or the ISA is restricted)"
            else:
                mm = build(w8, 8)
                res.ms = time_ms(lambda: mm(xq), repeats, slow_ms=20 * fp_ms)
                res.vs_fp32 = res.ms / fp_ms
            out[name] = res
        out["fp32"] = PathProbe("fp32 F.linear", True, exact=None, ms=fp_ms, vs_fp32=1.0, note="reference for vs_fp32")
    return out
