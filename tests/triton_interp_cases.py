"""The fused Triton W4A8 kernels (qbench.quant.triton_w4a8) under Triton's interpreter on CPU
tensors: bit-exact against the reference path (``int_linear`` with ``torch._int_mm``) at small
shapes. Triton reads ``TRITON_INTERPRET`` when ``triton.language`` is first imported, so these
run in their own process (tests/test_triton_w4a8.py starts it with the variable set); the same
kernels on a GPU: tests/test_gpu_kernels.py."""
from __future__ import annotations

import os

import pytest
import torch

from qbench.errors import NonFiniteOutputError
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
        with backends.forced_path("int_mm"):
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


def test_small_tiles_many_k_steps(tw):
    """16x16 tiles over 16-byte steps: several K iterations, tiles and group boundaries per tile."""
    w, b, x = _data(50, 200, 72, seed=4)
    layer = QuantLinear(w, b, _spec(4, "asym"))
    bufs = layer._kernel_buffers()
    act = dict(a_bits=8, a_symmetric=False, a_granularity="token")
    ref = backends.IntMMOperand(lambda: packing.unpack_scaled(bufs["qweight"], 4, bufs["sg"], 32), layer.n, layer.kp).linear(
        x, layer.s1, layer.bias, **act)
    y = tw.TritonOperand(bufs, 4, 32, layer.n, layer.kp).linear(x, layer.s1, layer.bias, block=(16, 16, 16), **act)
    assert torch.equal(y, ref)


def test_activation_codes_match_reference(tw):
    from qbench.quant.kernels import quantize_act_int

    _, _, x = _data(9, 70, 8)
    x[3, 5] = 1e30  # a huge outlier (per-token scale follows it)
    for sym in (False, True):
        xq, sx, zx, per_row = tw.quantize_act(x, 72, 8, sym, "token")
        rq, rs, rz = quantize_act_int(x, 8, sym, "token", None)
        assert per_row and torch.equal(xq[:, :70], rq) and not xq[:, 70:].any()
        assert torch.equal(sx, rs.view(-1)) and (zx is None) == sym and (sym or torch.equal(zx, rz.view(-1)))


def test_nonfinite_activation_raises_the_reference_error(tw):
    w, b, x = _data(6, 64, 8)
    layer = QuantLinear(w, b, _spec(4, "asym"))
    x[2, 7] = float("nan")
    with backends.forced_path("triton"), pytest.raises(NonFiniteOutputError):
        layer(x)


def test_self_check_passes_in_the_interpreter(tw):
    ok, note = tw.self_check("cpu")
    assert ok, note
