"""pytest-benchmark suite: quantized linear (kernel mode) vs FP32 on this CPU, small GEMM shapes.

Run with ``pytest tests/bench -m bench --benchmark-enable`` (or ``make bench``); compare groups
with ``--benchmark-group-by=param:shape``. The full-size table is ``qbench bench-kernels``.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from qbench.quant.api import quantize_
from qbench.quant.spec import QuantConfig

pytestmark = pytest.mark.bench

SHAPES = {"sdxl-like 1024x640x640": (1024, 640, 640), "flux-like 256x3072x3072": (256, 3072, 3072)}


def _layer(k, n, bits):
    torch.manual_seed(0)
    lin = nn.Sequential(nn.Linear(k, n))
    with torch.no_grad():
        lin[0].weight.mul_(0.5)
    ref = nn.Linear(k, n)
    ref.load_state_dict(lin[0].state_dict())
    if bits != "fp32":
        quantize_(lin, QuantConfig(bits=bits, mode="kernel"))
    return ref, lin[0]


@pytest.mark.parametrize("bits", ["fp32", "W8A8", "W4A8"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_linear_latency(benchmark, shape, bits):
    m, k, n = SHAPES[shape]
    ref, layer = _layer(k, n, bits)
    x = torch.randn(m, k)
    benchmark.group = shape
    benchmark.extra_info.update(bits=bits, m=m, k=k, n=n)
    with torch.inference_mode():
        y = benchmark(layer, x)
        y_ref = ref(x)
    rel = float((y - y_ref).norm() / y_ref.norm())
    benchmark.extra_info["rel_err"] = rel
    assert y.shape == (m, n)
    assert rel < {"fp32": 1e-6, "W8A8": 0.02, "W4A8": 0.15}[bits]
