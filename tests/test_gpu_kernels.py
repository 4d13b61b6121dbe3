"""Kernel mode on a CUDA GPU (``pytest -m gpu``; ``make gpu-check`` runs these): the Triton
kernels compiled for the GPU, bit-exact vs ``_int_mm``, and CUDA kernel mode giving the CPU's bits.
Skipped, with the reason shown (``-rs``), where no CUDA device exists; the same kernels run
under Triton's interpreter on CPU in tests/test_triton_w4a8.py."""
from __future__ import annotations

import pytest
import torch

from qbench.quant import backends
from qbench.quant.linear import QuantLinear
from qbench.quant.primitives import act_qparams, two_level_weight
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


@pytest.mark.parametrize("symmetric", [False, True])
def test_scales_have_the_cpu_bits_on_cuda(symmetric):
    """PyTorch's CUDA kernel multiplies by float32(1/d) for a Python-number divisor; qbench divides
    by a same-device tensor, so per-token scales (and two-level weight scales) equal the CPU's."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4096, 256, generator=g) * torch.rand(4096, 1, generator=g) * 10
    s_cpu, z_cpu = act_qparams(x, 8, symmetric, "token")
    s_gpu, z_gpu = act_qparams(x.cuda(), 8, symmetric, "token")
    assert torch.equal(s_gpu.cpu(), s_cpu) and (symmetric or torch.equal(z_gpu.cpu(), z_cpu))
    w = torch.randn(256, 512, generator=g)
    assert torch.equal(two_level_weight(w.cuda(), 4, 64).s1.cpu(), two_level_weight(w, 4, 64).s1)


def test_triton_offsets_past_2_31_elements():
    """An output of more than 2^31 elements (int64 offsets in the kernels): the last rows equal
    int_mm's. Needs ~15 GiB of GPU memory."""
    free, _ = torch.cuda.mem_get_info()
    if free < 20 * 2**30:
        pytest.skip(f"needs 20 GiB free GPU memory, {free / 2**30:.1f} GiB free")
    m, k, n = 2**31 // 256 + 64, 64, 256  # m * n > 2^31
    layer, _ = _layer("W4A8", False, 1, k, n, "cuda")
    x = torch.randn(m, k, device="cuda", dtype=torch.float16)
    with torch.inference_mode():
        with backends.forced_path("triton", "cuda"):
            y = layer(x)[-300:].float()
        with backends.forced_path("int_mm", "cuda"):
            ref = layer(x[-300:]).float()
    assert torch.equal(y, ref), float((y - ref).abs().max())
