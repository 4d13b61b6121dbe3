"""Kernel benchmark: the quantized linear layer vs the FP32 layer at diffusion GEMM shapes.

``bench_kernels(...) -> list[BenchRow]``; ``main(argv)`` prints a rich table
(``qbench bench-kernels`` / ``python -m qbench.quant.bench``). Shapes are tokens x in x out:

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

import argparse
import functools
import statistics
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
    path: str
    fp32_ms: float
    quant_ms: float
    ratio: float  # quant / fp32 latency
    bytes_ratio_fp16: float  # stored weight bytes / (2*K*N)
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


def bench_shape(
    name: str, m: int, k: int, n: int, bits: str, *, repeats: int = 5, seed: int = 0, group_size: int = 32
) -> BenchRow:
    from qbench.quant.api import quantize_
    from qbench.quant.kernels import kernel_path
    from qbench.quant.spec import QuantConfig

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
    with torch.inference_mode():
        y = fp(x)
        yq = q(x)
        fp_ms, q_ms = _median_ms([lambda: fp(x), lambda: q(x)], repeats)
    err = (yq - y).abs()
    return BenchRow(
        shape=name,
        m=m,
        k=k,
        n=n,
        bits=bits,
        path=kernel_path("cpu"),
        fp32_ms=fp_ms,
        quant_ms=q_ms,
        ratio=q_ms / fp_ms,
        bytes_ratio_fp16=_weight_bytes(q) / (2 * k * n),
        max_abs_err=float(err.max()),
        mean_abs_err=float(err.mean()),
        rel_err=float((yq - y).norm() / y.norm()),
    )


def bench_kernels(
    shapes: Sequence[tuple[str, int, int, int]] | None = None,
    bits: Sequence[str] = ("W8A8", "W4A8"),
    *,
    repeats: int = 5,
    flux_tokens: int | None = 1024,
    progress: Callable[[BenchRow], None] | None = None,
) -> list[BenchRow]:
    rows = []
    for name, m, k, n in shapes or SHAPES:
        if flux_tokens and name.startswith("flux"):
            m = flux_tokens
        for b in bits:
            row = bench_shape(name, m, k, n, b, repeats=repeats)
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
    from rich.table import Table

    t = Table(title=title)
    for col in ("shape", "M x K x N", "bits", "fp32 ms", "quant ms", "ratio", "bytes/fp16", "max err", "mean err", "rel err"):
        t.add_column(col, justify="left" if col in ("shape", "bits") else "right")
    for r in rows:
        t.add_row(
            r.shape,
            f"{r.m}x{r.k}x{r.n}",
            r.bits,
            f"{r.fp32_ms:.1f}",
            f"{r.quant_ms:.1f}",
            f"{r.ratio:.2f}",
            f"{r.bytes_ratio_fp16:.3f}",
            f"{r.max_abs_err:.2e}",
            f"{r.mean_abs_err:.2e}",
            f"{r.rel_err:.4f}",
        )
    return t


def main(argv: Sequence[str] | None = None) -> int:
    from rich.console import Console

    p = argparse.ArgumentParser(prog="qbench bench-kernels", description=__doc__.splitlines()[0])
    p.add_argument("--bits", default="W8A8,W4A8", help="comma-separated bit specs (default W8A8,W4A8)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per layer (median reported)")
    p.add_argument("--flux-tokens", type=int, default=1024, help="tokens for the FLUX shapes (real: 4096 at 1024 px)")
    p.add_argument("--only", default=None, help="substring filter on shape names (e.g. sdxl)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--chunk-rows", type=int, default=None, help="rows per int_linear chunk (default: 256 per thread)")
    p.add_argument("--paths", action="store_true", help="also time the candidate CPU paths at 1024x3072x3072")
    p.add_argument("--json", default=None, help="write the rows to this JSON file")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.chunk_rows:
        from qbench.quant import kernels

        kernels.CHUNK_ROWS = a.chunk_rows
    console = Console()
    shapes = [s for s in SHAPES if not a.only or a.only in s[0]]
    bits = [b.strip().upper() for b in a.bits.split(",") if b.strip()]
    console.print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability {torch.backends.cpu.get_cpu_capability()}")
    rows = bench_kernels(shapes, bits, repeats=a.repeats, flux_tokens=a.flux_tokens, progress=lambda r: console.print(f"  {r.shape} {r.bits}: {r.ratio:.2f}x", highlight=False))
    console.print(rows_table(rows, f"quantized linear (kernel mode) vs FP32 on CPU; median of {a.repeats}"))
    if a.paths:
        from rich.table import Table

        t = Table(title="CPU execution paths, 1024x3072x3072")
        t.add_column("path")
        t.add_column("ms", justify="right")
        t.add_column("vs fp32", justify="right")
        for label, ms, ratio in compare_cpu_paths(repeats=a.repeats):
            t.add_row(label, f"{ms:.1f}", f"{ratio:.2f}")
        console.print(t)
    if a.json:
        import json

        with open(a.json, "w", encoding="utf-8") as f:
            json.dump([r.to_dict() for r in rows], f, indent=2)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
