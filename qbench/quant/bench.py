"""Kernel benchmark: the quantized linear layer on every CPU GEMM path vs the FP32 layer.

``bench_kernels(...) -> list[BenchRow]`` (one row per shape x bits x timed path);
``main(argv)`` prints the path kernel mode chose for this machine (:mod:`qbench.quant.backends`:
CPU flags, probe) and a table with, per shape and bit width, FP32 ``F.linear`` = 1.0 and the
time of every path it timed, the chosen one marked (``qbench bench-kernels`` /
``python -m qbench.quant.bench``). All paths give the same bits (checked here too: ``same``).
Paths that the probe found inexact on this CPU, or slower than ``--max-probe-ratio`` x FP32 at
the probe shape (``torch._int_mm``'s ~125x reference loop on CPUs without VNNI), are listed
with the probe's numbers and not timed at full size (``--all-paths`` times them anyway).
Shapes are tokens x in x out:

* SDXL-Turbo UNet transformer blocks (attention projections and GEGLU feed-forward) of the
  640- and 1280-channel stages: 4096/1024 tokens are the 64x64 / 32x32 latent grids of those
  stages at 1024 px (the shapes the issue names; at 512 px the token counts are 4x smaller).
* FLUX.1-schnell double/single-stream blocks (3072 hidden, 12288 MLP) at 1024 px have 4096
  image tokens; the default scales them to ``--flux-tokens 1024`` for time (the per-token cost is
  the same; say so when quoting) — ``--flux-tokens 4096`` runs the real count.

Every latency is the median of ``repeats`` timed runs after one warm-up, FP and quantized
interleaved in the same process (so a busy machine slows both alike). On a shared machine set
``OMP_WAIT_POLICY=PASSIVE`` (before Python starts): with GNU OpenMP's default active wait and more
runnable threads than cores, every parallel region (each element-wise pass of the quantized
layer; the FP32 GEMM is one region) stalls ~10 ms with 2 threads, which measures the scheduler,
not the kernel. Errors are against the FP32
output of the same input; weight bytes are the quantized layer's stored weight, scales and
(no bias) over the FP16 weight's ``2*K*N`` bytes.
"""
from __future__ import annotations

import functools
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

SHAPES: list[tuple[str, int, int, int]] = [
    ("sdxl attn-640 qkvo", 4096, 640, 640),
    ("sdxl ff-640 down", 4096, 2560, 640),
    ("sdxl ff-640 proj (geglu half)", 4096, 640, 2560),
    ("sdxl attn-1280 qkvo", 1024, 1280, 1280),
    ("sdxl ff-1280 up (geglu)", 1024, 1280, 5120),
    ("flux attn qkv/out", 4096, 3072, 3072),
    ("flux mlp up", 4096, 3072, 12288),
    ("flux mlp down", 4096, 12288, 3072),
]


@dataclass
class BenchRow:
    shape: str
    m: int
    k: int
    n: int
    bits: str
    path: str  # the backends path timed (int_mm, onednn, onednn-split)
    chosen: bool  # the path kernel mode uses on this machine
    fp32_ms: float
    quant_ms: float
    ratio: float  # quant / fp32 latency
    bytes_ratio_fp16: float  # stored weight bytes / (2*K*N)
    resident_ratio_fp16: float  # (stored + what the path holds resident, e.g. prepacked int8) / (2*K*N)
    same_as_chosen: bool  # output bit-identical to the chosen path's
    max_abs_err: float
    mean_abs_err: float
    rel_err: float  # ||y_q - y|| / ||y||

    def to_dict(self) -> dict:
        return asdict(self)


def _median_ms(fns: Sequence[Callable[[], object]], repeats: int) -> list[float]:
    """Interleaved timing: one warm-up each, then ``repeats`` rounds; medians in ms."""
    for f in fns:
        f()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for i, f in enumerate(fns):
            t0 = time.perf_counter()
            f()
            times[i].append(time.perf_counter() - t0)
    return [statistics.median(t) * 1e3 for t in times]


def _weight_bytes(layer: nn.Module) -> int:
    return sum(b.numel() * b.element_size() for name, b in layer.named_buffers() if name in ("qweight", "s1", "sg", "scale", "zero"))


def timed_paths(all_paths: bool = False, max_probe_ratio: float = 10.0) -> tuple[list[str], dict[str, str]]:
    """(paths to time, {path: why not timed}) on this CPU, from the process's probe."""
    from qbench.quant import backends

    sel = backends.selection("cpu")
    timed, skipped = [], {}
    for p in backends.CPU_PATHS:
        r = sel.probe.get(p)
        if p == sel.path or all_paths:
            timed.append(p)
        elif r is None or not r.available or not r.exact:
            skipped[p] = r.note if r else "not probed (path forced)"
        elif r.vs_fp32 is not None and r.vs_fp32 > max_probe_ratio:
            skipped[p] = f"{r.vs_fp32:.1f}x FP32 at the probe shape (> {max_probe_ratio:g}x: not timed at full size)"
        else:
            timed.append(p)
    return timed, skipped


def bench_shape(
    name: str, m: int, k: int, n: int, bits: str, *, paths: Sequence[str] | None = None, repeats: int = 5, seed: int = 0, group_size: int = 32
) -> list[BenchRow]:
    """One row per path in ``paths`` (default: :func:`timed_paths`) for a ``bits`` kernel-mode
    layer [K -> N] on ``m`` random tokens, FP32 ``F.linear`` timed interleaved with them."""
    from qbench.quant import backends
    from qbench.quant.api import quantize_
    from qbench.quant.spec import QuantConfig

    chosen = backends.selection("cpu").path
    paths = list(paths if paths is not None else timed_paths()[0])
    g = torch.Generator().manual_seed(seed)
    fp = nn.Linear(k, n, bias=True)
    with torch.no_grad():
        fp.weight.copy_(torch.randn(n, k, generator=g) * 0.02)
        fp.bias.copy_(torch.randn(n, generator=g) * 0.02)
    x = torch.randn(m, k, generator=g)
    holder = nn.Sequential(nn.Linear(k, n))
    holder[0].load_state_dict(fp.state_dict())
    quantize_(holder, QuantConfig(bits=bits, mode="kernel", group_size=group_size))
    q = holder[0]

    def on(path):
        def f():
            with backends.forced_path(path):
                return q(x)

        return f

    fns = [on(p) for p in paths]
    with torch.inference_mode():
        y = fp(x)
        outs = {p: f() for p, f in zip(paths, fns)}
        ms = _median_ms([lambda: fp(x)] + fns, repeats)
    ref = outs.get(chosen, next(iter(outs.values())))
    stored = _weight_bytes(q)
    rows = []
    for p, q_ms in zip(paths, ms[1:]):
        yq = outs[p]
        err = (yq - y).abs()
        extra = backends.operand_nbytes(q, p)
        rows.append(BenchRow(
            shape=name, m=m, k=k, n=n, bits=bits, path=p, chosen=p == chosen, fp32_ms=ms[0], quant_ms=q_ms, ratio=q_ms / ms[0],
            bytes_ratio_fp16=stored / (2 * k * n), resident_ratio_fp16=(stored + extra) / (2 * k * n),
            same_as_chosen=bool(torch.equal(yq, ref)), max_abs_err=float(err.max()), mean_abs_err=float(err.mean()),
            rel_err=float((yq - y).norm() / y.norm()),
        ))
    return rows


def bench_kernels(
    shapes: Sequence[tuple[str, int, int, int]] | None = None,
    bits: Sequence[str] = ("W8A8", "W4A8"),
    *,
    repeats: int = 5,
    flux_tokens: int | None = 1024,
    paths: Sequence[str] | None = None,
    progress: Callable[[BenchRow], None] | None = None,
) -> list[BenchRow]:
    rows = []
    for name, m, k, n in SHAPES if shapes is None else shapes:
        if flux_tokens and name.startswith("flux"):
            m = flux_tokens
        for b in bits:
            for row in bench_shape(name, m, k, n, b, paths=paths, repeats=repeats):
                rows.append(row)
                if progress:
                    progress(row)
    return rows


# -- the CPU execution paths measured before choosing one ---------------------------------------------
def compare_cpu_paths(m: int = 1024, k: int = 3072, n: int = 3072, repeats: int = 5) -> list[tuple[str, float, float]]:
    """(path, ms, ratio vs FP32) for the candidate CPU paths at one shape."""
    import torch.nn.functional as F

    from qbench.quant.api import quantize_
    from qbench.quant.spec import QuantConfig

    g = torch.Generator().manual_seed(0)
    w = torch.randn(n, k, generator=g) * 0.02
    x = torch.randn(m, k, generator=g)
    cands: list[tuple[str, Callable[[], object]]] = [("fp32 F.linear", lambda: F.linear(x, w))]
    xb, wb = x.bfloat16(), w.bfloat16()
    cands.append(("bf16 F.linear", lambda: F.linear(xb, wb)))
    for bits in ("W8A8", "W4A8", "W4A16"):
        mod = nn.Sequential(nn.Linear(k, n, bias=False))
        mod[0].weight.data.copy_(w)
        quantize_(mod, QuantConfig(bits=bits, mode="kernel"))
        cands.append((f"qbench {bits} kernel", functools.partial(mod[0], x)))
    xq = torch.randint(-128, 127, (m, k), dtype=torch.int8, generator=g)
    wq = torch.randint(-128, 127, (n, k), dtype=torch.int8, generator=g)
    cands.append(("torch._int_mm alone (int8 GEMM)", lambda: torch._int_mm(xq, wq.t())))
    if hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu"):
        wi = torch.randint(0, 16, (n, k), dtype=torch.int32, generator=g)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(wi, 1)
        sz = torch.rand(k // 32, n, 2, generator=g).bfloat16()
        cands.append(("aten._weight_int4pack_mm_for_cpu (W4A16 bf16)", lambda: torch.ops.aten._weight_int4pack_mm_for_cpu(xb, packed, 32, sz)))
    try:
        from torchao.quantization import (
            Int8DynamicActivationInt8WeightConfig,
            Int8DynamicActivationIntxWeightConfig,
        )
        from torchao.quantization import quantize_ as ao_quantize_
        from torchao.quantization.granularity import PerGroup

        for label, cfg in (
            ("torchao Int8DynActInt8Weight (W8A8)", Int8DynamicActivationInt8WeightConfig()),
            ("torchao Int8DynActIntxWeight int4 g32 (W4A8)", Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4, weight_granularity=PerGroup(32))),
        ):
            lin = nn.Linear(k, n, bias=False)
            lin.weight.data.copy_(w)
            ao_quantize_(lin, cfg)
            cands.append((label, functools.partial(lin, x)))
    except ImportError as e:  # torchao is a declared dependency; say which part is missing
        cands.append((f"torchao unavailable: {e}", lambda: None))
    with torch.inference_mode():
        ms = _median_ms([f for _, f in cands], repeats)
    return [(label, t, t / ms[0]) for (label, _), t in zip(cands, ms)]


def rows_table(rows: Sequence[BenchRow], title: str):
    """One line per shape x bits: FP32 ms, each timed path's time as a multiple of FP32 (the
    chosen path marked ``*``), stored and resident weight bytes over FP16, error vs FP32."""
    from rich.table import Table

    paths = list(dict.fromkeys(r.path for r in rows))
    t = Table(title=title)
    for col in ("shape", "M x K x N", "bits", "fp32 ms", *(f"{p} x" for p in paths), "stored/fp16", "resident/fp16 (chosen)", "rel err", "same bits"):
        t.add_column(col, justify="left" if col in ("shape", "bits") else "right")
    groups: dict[tuple, list[BenchRow]] = {}
    for r in rows:
        groups.setdefault((r.shape, r.m, r.k, r.n, r.bits), []).append(r)
    for (shape, m, k, n, bits), rs in groups.items():
        by = {r.path: r for r in rs}
        main_row = next((r for r in rs if r.chosen), rs[0])
        cells = [f"{by[p].ratio:.2f}{'*' if by[p].chosen else ''}" if p in by else "-" for p in paths]
        t.add_row(shape, f"{m}x{k}x{n}", bits, f"{main_row.fp32_ms:.1f}", *cells, f"{main_row.bytes_ratio_fp16:.3f}",
                  f"{main_row.resident_ratio_fp16:.3f}", f"{main_row.rel_err:.4f}", "yes" if all(r.same_as_chosen for r in rs) else "NO")
    return t


def main(argv: Sequence[str] | None = None) -> int:
    """``qbench bench-kernels``; raises ConfigError for bad ``--bits`` / an ``--only`` that matches nothing."""
    from rich.console import Console

    from qbench.errors import ConfigError
    from qbench.quant import backends
    from qbench.quant.spec import BitSpec

    from qbench.cli_parser import _Parser, bounded_int, positive_float

    p = _Parser(prog="qbench bench-kernels", description=__doc__.split("\n\n")[0].replace("\n", " "))
    p.add_argument("--bits", default="W8A8,W4A8", help="comma-separated bit specs with quantized activations (default W8A8,W4A8)")
    p.add_argument("--repeats", type=bounded_int(1, 1000), default=3, help="timed runs per layer and path, 1-1000 (median reported; default 3)")
    p.add_argument("--flux-tokens", type=bounded_int(1, 65536), default=1024, help="tokens for the FLUX shapes, 1-65536 (default 1024; real: 4096 at 1024 px)")
    p.add_argument("--only", default=None, help="substring filter on shape names (e.g. sdxl)")
    p.add_argument("--threads", type=bounded_int(1, 4096), default=None, help="torch.set_num_threads (>= 1)")
    p.add_argument("--chunk-rows", type=bounded_int(1, 1 << 20), default=None, help="rows per int_linear chunk (>= 1; default: 256 per thread)")
    p.add_argument("--all-paths", action="store_true", help="time every available path, even inexact or very slow ones")
    p.add_argument("--max-probe-ratio", type=positive_float, default=10.0, help="skip paths slower than this x FP32 at the probe shape (> 0; default 10)")
    p.add_argument("--paths", action="store_true", help="also time other libraries' CPU paths (bf16, torchao, aten) at 1024x3072x3072")
    p.add_argument("--json", default=None, help="write the selection and the rows to this JSON file")
    a = p.parse_args(argv)
    bits = [b.strip().upper() for b in a.bits.split(",") if b.strip()]
    for b in bits:
        if BitSpec.parse(b).a is None:
            raise ConfigError(f"--bits {b}: kernel mode's integer GEMM needs quantized activations (W#A8); weight-only layers dequantize")
    shapes = [s for s in SHAPES if not a.only or a.only in s[0]]
    if not shapes:
        raise ConfigError(f"--only {a.only!r} matches no shape; shapes: {', '.join(s[0] for s in SHAPES)}")
    if a.threads is not None:
        torch.set_num_threads(a.threads)
    if a.chunk_rows is not None:
        from qbench.quant import kernels

        kernels.CHUNK_ROWS = a.chunk_rows
    console = Console(width=None if sys.stdout.isatty() else 170)  # the table, unwrapped, in logs
    console.print(f"torch {torch.__version__}, {torch.get_num_threads()} threads", highlight=False)
    sel = backends.selection("cpu")
    console.print(f"chosen: {sel.describe()}\n  why: {sel.reason}", highlight=False)
    for name, r in sel.probe.items():
        console.print(f"  probe 256x1024x1024 {name}: " + (f"{r.ms:.2f} ms = {r.vs_fp32:.2f}x FP32" if r.ms else r.note), highlight=False)
    paths, skipped = timed_paths(a.all_paths, a.max_probe_ratio)
    for path, why in skipped.items():
        console.print(f"  not timed: {path} ({why})", highlight=False)
    rows = bench_kernels(shapes, bits, repeats=a.repeats, flux_tokens=a.flux_tokens, paths=paths,
                         progress=lambda r: console.print(f"  {r.shape} {r.bits} {r.path}: {r.ratio:.2f}x", highlight=False))
    console.print(rows_table(rows, f"kernel-mode linear vs FP32 F.linear (= 1.00) on CPU; median of {a.repeats}; * = chosen path"))
    if a.paths:
        from rich.table import Table

        t = Table(title="other CPU paths, 1024x3072x3072")
        t.add_column("path")
        t.add_column("ms", justify="right")
        t.add_column("vs fp32", justify="right")
        for label, ms, ratio in compare_cpu_paths(repeats=a.repeats):
            t.add_row(label, f"{ms:.1f}", f"{ratio:.2f}")
        console.print(t)
    if a.json:
        import json

        with open(a.json, "w", encoding="utf-8") as f:
            json.dump({"selection": sel.to_dict(), "threads": torch.get_num_threads(), "torch": torch.__version__,
                       "skipped": skipped, "rows": [r.to_dict() for r in rows]}, f, indent=2)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
