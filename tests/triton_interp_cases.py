"""The fused Triton W4A8 kernels (qbench.quant.triton_w4a8) under Triton's interpreter on CPU
tensors: bit-exact against the reference path (``int_linear`` with ``torch._int_mm``), at the
tile shapes a GPU compiles (``triton_w4a8.tiles``: K tiles of 32 or 64, as NVIDIA's int8 ``tl.dot``
needs), with the reference's scales also computed under an emulation of PyTorch's CUDA division
rule (tests/cuda_div_emulation.py). Triton reads ``TRITON_INTERPRET`` when ``triton.language`` is first imported, so these
run in their own process (tests/test_triton_w4a8.py starts it with the variable set); the same
kernels on a GPU: tests/test_gpu_kernels.py."""
from __future__ import annotations

import os

import pytest
import torch
from cuda_div_emulation import CudaDivRule

from qbench.quant import backends
from qbench.quant import pack as packing
from qbench.quant.api import freeze_, observe_
from qbench.quant.linear import QuantLinear
from qbench.quant.spec import LayerSpec


@pytest.fixture(scope="module")
def tw():
    """The kernels module, its kernels interpreted (this process started with TRITON_INTERPRET=1)."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.fail("run through tests/test_triton_w4a8.py (needs TRITON_INTERPRET=1 before triton is imported)")
    from qbench.quant import triton_w4a8

    assert type(triton_w4a8._w4a8_gemm_kernel).__name__ == "InterpretedFunction"
    backends.reset()
    yield triton_w4a8
    backends.reset()


def _spec(w_bits: int, act: str) -> LayerSpec:
    return LayerSpec(w_bits=w_bits, a_bits=8, w_granularity="group", group_size=32, w_symmetric=True, w_clip="minmax",
                     group_scales="int8", a_granularity="tensor" if act in ("static", "tensor") else "token",
                     a_symmetric=act in ("sym", "tensor"), a_static=act == "static", a_calib="minmax", mode="kernel")


def _exact_cpu_reference() -> str:
    """The reference path on this CPU: ``int_mm`` where it is exact (a VNNI/AMX int8 dot, as on a
    GPU), else the exact oneDNN path this CPU selects (every exact path gives the same int32 sums)."""
    r = backends.selection("cpu").probe.get("int_mm")
    return "int_mm" if (r is not None and r.available and r.exact) else backends.selection("cpu").path


REF_PATH = _exact_cpu_reference()


def _data(m: int, k: int, n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g)
    w[:4] = torch.where(torch.arange(k) % 2 == 0, 1.0, -1.0)  # codes at the extremes
    x = torch.randn(m, k, generator=g) * 3
    x[0] = torch.where(torch.arange(k) % 2 == 0, 5.0, -5.0)
    x[1] = 5.0  # all-positive row: asymmetric zero point at qmin
    if m > 2:
        x[2] = 0.0  # all-zero row: scale = eps
    return w, torch.randn(n, generator=g), x


def _pair(layer, x, tw):
    with torch.inference_mode():
        with backends.forced_path(REF_PATH):
            ref = layer(x)
        with backends.forced_path("triton"):
            y = layer(x)
            op = backends.operand(layer, torch.device("cpu"))
    assert isinstance(op, tw.TritonOperand)
    return y, ref


@pytest.mark.parametrize("w_bits", [4, 2])
@pytest.mark.parametrize("act", ["asym", "sym", "static", "tensor"])
@pytest.mark.parametrize("k,bias", [(96, True), (90, False)])
def test_triton_matches_int_mm_bit_for_bit(tw, w_bits, act, k, bias):
    w, b, x = _data(37, k, 40)
    layer = QuantLinear(w, b if bias else None, _spec(w_bits, act))
    if act == "static":
        observe_(layer)
        layer(x)
        freeze_(layer)
    y, ref = _pair(layer, x, tw)
    assert torch.equal(y, ref), f"max |triton - int_mm| = {float((y - ref).abs().max())}"


def test_triton_bf16_activations(tw):
    w, b, x = _data(20, 64, 24)
    layer = QuantLinear(w, b, _spec(4, "asym"))
    y, ref = _pair(layer, x.bfloat16(), tw)
    assert y.dtype == torch.bfloat16 and torch.equal(y, ref)


@pytest.mark.parametrize("m,k,n,gs,w_bits,sg_col", [
    (130, 512, 136, 64, 4, True),   # BK 64, one group scale per K tile; 2 x 2 output tiles, 4 K steps
    (70, 256, 40, 32, 4, True),     # BK 32 (group 32), 4 K steps
    (50, 200, 72, 32, 4, False),    # K pads to 224: 112 bytes per row, per-element group-scale gathers
    (129, 640, 130, 128, 2, True),   # W2: 160 bytes per row, group 128: BK 32
    (129, 200, 130, 32, 2, False),   # W2: K pads to 224, 56 bytes per row: gathers
])
def test_gpu_tile_shapes(tw, m, k, n, gs, w_bits, sg_col):
    """The kernels at the tiles the GPU path launches (no block override)."""
    g = torch.Generator().manual_seed(m + k)
    w, b, x = torch.randn(n, k, generator=g), torch.randn(n, generator=g), torch.randn(m, k, generator=g) * 3
    spec = LayerSpec(w_bits=w_bits, a_bits=8, w_granularity="group", group_size=gs, w_symmetric=True, w_clip="minmax",
                     group_scales="int8", a_granularity="token", a_symmetric=False, a_static=False, a_calib="minmax", mode="kernel")
    layer = QuantLinear(w, b, spec)
    bm, bn, bk, col = tw.tiles(m, layer.kp // packing.per_byte(w_bits), gs)
    assert bk >= 32 and bn == 128 and bm == (64 if m <= 64 else 128) and col == sg_col
    y, ref = _pair(layer, x, tw)
    assert torch.equal(y, ref), f"max |triton - int_mm| = {float((y - ref).abs().max())}"


def test_activation_codes_match_reference(tw):
    """Codes, scales and zero points equal the reference's, also with the reference's divisions
    evaluated as PyTorch's CUDA kernels would (a Python-number divisor -> multiply by its float32
    reciprocal): the reference divides only by same-device tensors, so nothing changes."""
    from qbench.quant.kernels import quantize_act_int

    g = torch.Generator().manual_seed(5)
    x = torch.randn(300, 70, generator=g) * torch.rand(300, 1, generator=g) * 10
    x[3, 5] = 1e30  # a huge outlier (per-token scale follows it)
    for sym in (False, True):
        xq, sx, zx, per_row, bad = tw.quantize_act(x, 72, 8, sym, "token")
        with CudaDivRule() as rule:
            cq, cs, cz = quantize_act_int(x, 8, sym, "token", None)
        assert rule.hits == 0
        rq, rs, rz = quantize_act_int(x, 8, sym, "token", None)
        assert per_row and not bad.any() and torch.equal(xq[:, :70], rq) and not xq[:, 70:].any()
        assert torch.equal(sx, rs.view(-1)) and torch.equal(cs, rs) and torch.equal(cq, rq)
        assert (zx is None) == sym and (sym or (torch.equal(zx, rz.view(-1)) and torch.equal(cz, rz)))


def test_nonfinite_activation_gives_nan_rows_without_a_host_sync(tw):
    """NaN/inf rows are flagged in the kernel and come out as NaN rows (which the image decode
    turns into NonFiniteOutputError); the other rows are the reference's."""
    w, b, x = _data(6, 64, 8)
    layer = QuantLinear(w, b, _spec(4, "asym"))
    ref = layer(x)
    x[2, 7], x[4, 0] = float("nan"), float("inf")
    with torch.inference_mode(), backends.forced_path("triton"):
        y = layer(x)
    bad = torch.tensor([False, False, True, False, True, False])
    assert y[bad].isnan().all() and torch.equal(y[~bad], ref[~bad])


def test_self_check_passes_in_the_interpreter(tw):
    if REF_PATH != "int_mm":  # the self-check's reference is torch._int_mm (exact on every GPU)
        pytest.skip(f"torch._int_mm is inexact on this CPU (no VNNI/AMX int8 dot, or a restricted ISA): the cases above use {REF_PATH}")
    ok, note = backends.triton_self_check("cpu")
    assert ok, note
