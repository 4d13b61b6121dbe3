"""Kernel mode on a CUDA GPU (``pytest -m gpu``; ``make gpu-check`` runs these): the Triton
kernels compiled for the GPU, bit-exact vs ``_int_mm``, and CUDA kernel mode giving the CPU's bits.
Skipped, with the reason shown (``-rs``), where no CUDA device exists; the same kernels run
under Triton's interpreter on CPU in tests/test_triton_w4a8.py."""
from __future__ import annotations

import pytest
import torch

from qbench.quant import backends
from qbench.quant.linear import QuantLinear
from qbench.quant.spec import QuantConfig

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device (torch.cuda.is_available() is False): run on a GPU machine (make gpu-check)"),
]


@pytest.fixture(autouse=True)
def _fresh():
    backends.reset()
    yield
    backends.reset()


def _layer(bits: str, a_symmetric: bool, m: int, k: int, n: int, device: str):
    g = torch.Generator().manual_seed(1)
    w, b, x = torch.randn(n, k, generator=g) * 0.05, torch.randn(n, generator=g), torch.randn(m, k, generator=g) * 2
    spec = QuantConfig(bits=bits, mode="kernel", group_size=32, a_symmetric=a_symmetric).spec_for("layer")
    return QuantLinear(w, b, spec).to(device), x.to(device)


def test_cuda_selects_the_triton_path_after_its_self_check():
    sel = backends.selection("cuda")
    assert sel.path == "triton", sel.reason
    assert sel.probe["triton"].exact


@pytest.mark.parametrize("a_symmetric", [False, True])
@pytest.mark.parametrize("m,k,n", [(1, 640, 640), (77, 1280, 1000), (1024, 3072, 3072)])
def test_triton_equals_int_mm_on_gpu(a_symmetric, m, k, n):
    layer, x = _layer("W4A8", a_symmetric, m, k, n, "cuda")
    with torch.inference_mode():
        with backends.forced_path("int_mm", "cuda"):
            ref = layer(x)
        with backends.forced_path("triton", "cuda"):
            y = layer(x)
    assert torch.equal(y, ref), float((y - ref).abs().max())


@pytest.mark.parametrize("bits", ["W8A8", "W4A8"])
def test_cuda_kernel_mode_gives_the_cpu_bits(bits):
    layer, x = _layer(bits, False, 300, 640, 320, "cpu")
    with torch.inference_mode(), backends.forced_path("int_mm", "cpu"):
        ref = layer(x)
    layer_c = layer.to("cuda")
    with torch.inference_mode():
        y = layer_c(x.to("cuda")).cpu()
    assert torch.equal(y, ref), float((y - ref).abs().max())
