"""One command for a machine with a CUDA GPU (``make gpu-check``): what CPU CI cannot check.

1. ``pytest -m gpu`` (the Triton kernels compiled for this GPU, bit-exact vs ``_int_mm``; CUDA
   vs CPU kernel mode);
2. every method on every tiny twin (tiny-lcm, tiny-pcm, tiny-sdxl-turbo, tiny-flux) on CUDA in
   simulate and kernel modes (2 prompts, no metrics: the mechanics, not quality; a method that
   refuses a mode in its preflight is recorded as ``refused`` with its one-line reason);
3. the kernel benchmark at the SDXL/FLUX shapes of :mod:`qbench.quant.bench` (FLUX at its real
   4096 tokens): bf16 ``F.linear`` (= 1.0), ``torch._int_mm`` alone (int8 operands ready),
   qbench W8A8 (int_mm path), qbench W4A8 on the Triton path and on the int_mm path (int4
   unpacked per call), torchao ``Int8DynamicActivationInt8WeightConfig`` (eager); median of CUDA
   event timings; plus whether Triton's output equals int_mm's bit for bit at each shape.

Writes everything to ``--out`` (JSON) and prints a summary. Exit status: 0 all passed, 1 a step
failed, 2 no CUDA device (one line; nothing else is run). Target: under 8 minutes on one GPU.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import traceback
from typing import Any

TWINS = ("tiny-lcm", "tiny-pcm", "tiny-sdxl-turbo", "tiny-flux")
SKIP_METHODS = {"external": "evaluates a pipeline the user brings (run(cfg, pipe=...)); nothing to build here"}


def run_pytest(root: str) -> dict[str, Any]:
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-rs", "tests/"], cwd=root, capture_output=True, text=True)
    tail = (p.stdout + p.stderr).strip().splitlines()[-15:]
    return {"rc": p.returncode, "ok": p.returncode == 0, "summary": tail[-1] if tail else "", "tail": tail, "s": time.perf_counter() - t}


def run_methods(out_dir: str, models=TWINS) -> list[dict[str, Any]]:
    from qbench.catalog import METHODS
    from qbench.config import RunConfig
    from qbench.errors import ConfigError
    from qbench.harness import run

    cells = []
    for model in models:
        for method in METHODS.names():
            if method in SKIP_METHODS:
                cells.append({"model": model, "method": method, "status": "skipped", "why": SKIP_METHODS[method]})
                continue
            for mode in (None,) if method == "fp" else ("simulate", "kernel"):
                t = time.perf_counter()
                cell: dict[str, Any] = {"model": model, "method": method, "mode": mode}
                try:
                    cfg = RunConfig(model=model, method=method, mode=mode, device="cuda", prompts="coco2017:2", batch_size=2,
                                    out_dir=out_dir, latency_warmup=1, latency_repeats=2, metrics=[])
                    res = run(cfg, show_progress=False)
                    rep = res.method_report or {}
                    cell.update(status="ok", run_id=res.run_id, latency_s=((res.latency or {}).get("end_to_end_s") or {}).get("median"),
                                kernel_path=rep.get("kernel_path"), bits=res.bits)
                except ConfigError as e:
                    cell.update(status="refused", why=str(e).splitlines()[0])
                except Exception as e:  # recorded, the check goes on
                    cell.update(status="failed", why=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                                traceback=traceback.format_exc(limit=6))
                cell["s"] = time.perf_counter() - t
                print(f"  {model} {method} {mode or ''}: {cell['status']} {cell.get('why', '')}", flush=True)
                cells.append(cell)
    return cells


def _cuda_ms(fn, warmup: int = 3, repeats: int = 10) -> float:
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        ts.append(a.elapsed_time(b))
    return statistics.median(ts)


def bench(flux_tokens: int = 4096) -> list[dict[str, Any]]:
    import torch
    import torch.nn.functional as F
    from torch import nn

    from qbench.quant import backends
    from qbench.quant.bench import SHAPES
    from qbench.quant.linear import QuantLinear
    from qbench.quant.spec import QuantConfig

    dev = "cuda"
    rows = []
    for name, m, k, n in SHAPES:
        m = flux_tokens if name.startswith("flux") else m
        g = torch.Generator(device=dev).manual_seed(0)
        w = torch.randn(n, k, device=dev, generator=g, dtype=torch.bfloat16) * 0.02
        bias = torch.randn(n, device=dev, generator=g, dtype=torch.bfloat16) * 0.02
        x = torch.randn(m, k, device=dev, generator=g, dtype=torch.bfloat16)
        row: dict[str, Any] = {"shape": name, "m": m, "k": k, "n": n}
        t: dict[str, float | None] = {"bf16 F.linear": _cuda_ms(lambda: F.linear(x, w, bias))}
        xq = torch.randint(-128, 127, (m, k), dtype=torch.int8, device=dev)
        wq = torch.randint(-128, 127, (n, k), dtype=torch.int8, device=dev)
        t["torch._int_mm alone"] = _cuda_ms(lambda: backends.int8_mm(xq, wq))
        with torch.inference_mode():
            for bits in ("W8A8", "W4A8"):
                spec = QuantConfig(bits=bits, mode="kernel", group_size=32).spec_for("layer")
                layer = QuantLinear(w, bias, spec)
                for path in ("int_mm", "triton") if bits == "W4A8" else ("int_mm",):
                    with backends.forced_path(path, "cuda"):
                        t[f"qbench {bits} {path}"] = _cuda_ms(lambda: layer(x))
                        if bits == "W4A8":
                            row[f"out_{path}"] = layer(x).float()
                del layer
        row["triton_equals_int_mm"] = bool(torch.equal(row.pop("out_int_mm"), row.pop("out_triton")))
        try:
            from torchao.quantization import Int8DynamicActivationInt8WeightConfig
            from torchao.quantization import quantize_ as ao_quantize_

            lin = nn.Linear(k, n, device=dev, dtype=torch.bfloat16)
            lin.weight.data.copy_(w)
            lin.bias.data.copy_(bias)
            ao_quantize_(lin, Int8DynamicActivationInt8WeightConfig())
            with torch.inference_mode():
                t["torchao W8A8 (eager)"] = _cuda_ms(lambda: lin(x))
        except Exception as e:  # recorded: torchao's GPU path missing on this build
            t["torchao W8A8 (eager)"] = None
            row["torchao_error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        base = t["bf16 F.linear"]
        row["ms"] = t
        row["vs_bf16"] = {kk: (v / base if v is not None else None) for kk, v in t.items()}
        print(f"  {name} {m}x{k}x{n}: " + ", ".join(f"{kk} {v:.2f}x" for kk, v in row["vs_bf16"].items() if v is not None), flush=True)
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tools/gpu_check.py", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="reports/gpu_check.json", help="JSON of every result (default reports/gpu_check.json)")
    p.add_argument("--out-dir", default=None, help="qbench out dir for the method runs (default: a folder next to --out)")
    p.add_argument("--skip", default="", help="comma-separated steps to skip: pytest, methods, bench")
    p.add_argument("--flux-tokens", type=int, default=4096, help="tokens at the FLUX shapes (default 4096: 1024 px)")
    a = p.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("gpu-check: error: no CUDA device (torch.cuda.is_available() is False); this check needs one GPU", file=sys.stderr)
        return 2
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    skip = {s.strip() for s in a.skip.split(",") if s.strip()}
    t0 = time.perf_counter()
    import triton

    from qbench.quant import backends

    out: dict[str, Any] = {"gpu": torch.cuda.get_device_name(0), "capability": list(torch.cuda.get_device_capability(0)),
                           "torch": torch.__version__, "cuda": torch.version.cuda, "triton": triton.__version__,
                           "selection": backends.kernel_info("cuda")}
    print(f"gpu-check on {out['gpu']} (torch {out['torch']}, CUDA {out['cuda']}, triton {out['triton']}); kernel path {out['selection']['path']}", flush=True)
    ok = True
    if "pytest" not in skip:
        out["pytest"] = run_pytest(root)
        ok &= out["pytest"]["ok"]
        print(f"pytest -m gpu: {out['pytest']['summary']}", flush=True)
    if "methods" not in skip:
        out["methods"] = run_methods(a.out_dir or os.path.join(os.path.dirname(os.path.abspath(a.out)), "gpu_check_runs"))
        ok &= not any(c["status"] == "failed" for c in out["methods"])
    if "bench" not in skip:
        out["bench"] = bench(a.flux_tokens)
        ok &= all(r["triton_equals_int_mm"] for r in out["bench"])
    out["wall_s"] = time.perf_counter() - t0
    out["ok"] = bool(ok)
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w", encoding="utf-8") as f:
        json.dump(out, f, indent=2, default=str)
    print(f"gpu-check {'passed' if ok else 'FAILED'} in {out['wall_s']:.0f} s; results in {a.out}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
