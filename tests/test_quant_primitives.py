"""Quantizer primitives against hand-computed cases, error bounds, clipping and calibration."""
from __future__ import annotations

import pytest
import torch

from qbench.errors import ConfigError, NonFiniteOutputError
from qbench.quant import primitives as P


def test_qrange_and_bad_bits():
    assert P.qrange(8) == (-128, 127)
    assert P.qrange(4) == (-8, 7)
    assert P.qrange(2) == (-2, 1)
    for bad in (0, 9, 4.0):
        with pytest.raises(ConfigError):
            P.qrange(bad)


def test_symmetric_int4_per_channel_hand_case():
    w = torch.tensor([[1.0, -0.5, 0.25, 0.0], [0.3, 0.0, 2.0, -0.6]])
    qw = P.quantize_weight(w, 4, symmetric=True, granularity="channel")
    # scale = amax / 7.5 per row; codes = round(w / scale) clamped to [-8, 7]
    assert torch.allclose(qw.scale.view(-1), torch.tensor([1 / 7.5, 2 / 7.5]))
    assert qw.zero is None
    assert qw.q.tolist() == [[7, -4, 2, 0], [1, 0, 7, -2]]  # 7.5 -> clamp 7; -3.75 -> -4; 1.125 -> 1; -2.25 -> -2
    deq = qw.dequantize()
    assert torch.allclose(deq[1], torch.tensor([2 / 7.5, 0.0, 14 / 7.5, -4 / 7.5]))


def test_asymmetric_hand_cases():
    # 2-bit asymmetric per tensor on [0, 3]: scale 1, zero -2, exact round trip
    x = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    s, z = P.qparams_from_range(x.amin().view(1, 1), x.amax().view(1, 1), 2, symmetric=False)
    assert float(s) == pytest.approx(1.0) and int(z) == -2
    q = P.quantize(x, s, z, 2)
    assert q.tolist() == [[-2, -1, 0, 1]]
    assert torch.equal(P.dequantize(q, s, z), x)
    # 8-bit per token on [-1, 3]: scale 4/255, zero = -128 - round(-63.75) = -64; 0.0 is exact
    x = torch.tensor([[-1.0, 0.0, 3.0]])
    s, z = P.act_qparams(x, 8, symmetric=False, granularity="token")
    assert float(s) == pytest.approx(4 / 255) and int(z) == -64
    fq = P.fake_quantize(x, s, z, 8)
    assert float(fq[0, 1]) == 0.0
    assert torch.allclose(fq, x, atol=float(s) / 2)


def test_range_excludes_positive_min():
    # torchao convention: the range always contains 0, so zero is representable
    x = torch.tensor([[2.0, 3.0, 4.0]])
    s, z = P.act_qparams(x, 8, symmetric=False, granularity="token")
    assert float(s) == pytest.approx(4 / 255) and int(z) == -128


@pytest.mark.parametrize("bits", [2, 3, 4, 6, 8])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("gran", ["tensor", "channel", "group"])
def test_weight_round_trip_error_bound(bits, symmetric, gran):
    g = torch.Generator().manual_seed(bits)
    w = torch.randn(16, 96, generator=g)
    qw = P.quantize_weight(w, bits, symmetric=symmetric, granularity=gran, group_size=32)
    qmin, qmax = P.qrange(bits)
    assert int(qw.q.min()) >= qmin and int(qw.q.max()) <= qmax
    err = (qw.dequantize() - w).abs()
    n, gcount = 16, (96 // 32 if gran == "group" else 1)
    step = qw.scale.expand(n, gcount).repeat_interleave(96 // gcount, dim=1)
    # RTN: within half a step, except symmetric's top value clipped at qmax (one step at most)
    bound = step * (1.0 if symmetric else 0.5) + 1e-6
    assert bool((err <= bound).all())
    assert bool((qw.scale > 0).all())


def test_finer_granularity_is_more_accurate():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(32, 256, generator=g) * torch.linspace(0.1, 3, 256)
    errs = [
        (P.quantize_weight(w, 4, granularity=gr, group_size=32).dequantize() - w).pow(2).mean()
        for gr in ("tensor", "channel", "group")
    ]
    assert errs[0] > errs[1] > errs[2]


def test_group_padding_when_k_not_multiple():
    w = torch.randn(3, 36)
    qw = P.quantize_weight(w, 4, granularity="group", group_size=32)
    assert qw.q.shape == (3, 64) and qw.scale.shape == (3, 2)
    assert qw.dequantize().shape == (3, 36)
    assert bool((qw.q[:, 36:] == 0).all())


def test_scales_never_zero_and_zero_tensor_round_trips():
    w = torch.zeros(4, 32)
    qw = P.quantize_weight(w, 4, granularity="group", group_size=32)
    assert bool((qw.scale >= P.EPS).all())
    assert bool((qw.dequantize() == 0).all())
    x = torch.zeros(2, 8)
    assert bool((P.fake_quantize_act(x, 8, False, "token") == 0).all())
    tl = P.two_level_weight(w, 4, 32)
    assert bool((tl.s1 > 0).all()) and bool((tl.dequantize() == 0).all())


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_inputs_raise(bad):
    w = torch.randn(4, 32)
    w[1, 3] = bad
    with pytest.raises(NonFiniteOutputError):
        P.quantize_weight(w, 8)
    with pytest.raises(NonFiniteOutputError):
        P.two_level_weight(w, 4, 32)
    with pytest.raises(NonFiniteOutputError):
        P.fake_quantize_act(w, 8, False, "token")
    with pytest.raises(NonFiniteOutputError):
        P.fake_quantize_act(w, 8, True, "tensor", static=(torch.ones(1, 1), None))
    with pytest.raises(NonFiniteOutputError):
        P.calibrate_range(w)


def test_mse_clipping_beats_minmax_on_outliers():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(8, 128, generator=g)
    w[:, 0] = 12.0  # one outlier per row
    e_mm = (P.quantize_weight(w, 4, clip="minmax").dequantize() - w).pow(2).sum()
    e_mse = (P.quantize_weight(w, 4, clip="mse").dequantize() - w).pow(2).sum()
    assert e_mse < e_mm


def test_calibrate_range_methods():
    x = torch.arange(10001, dtype=torch.float32) - 5000.0  # -5000 .. 5000
    assert P.calibrate_range(x, "minmax") == (-5000.0, 5000.0)
    lo, hi = P.calibrate_range(x, "percentile", percentile=99.0)
    assert lo == pytest.approx(-4900.0, abs=1.0) and hi == pytest.approx(4900.0, abs=1.0)
    g = torch.Generator().manual_seed(0)
    heavy = torch.randn(20000, generator=g)
    heavy[:5] = 60.0
    lo, hi = P.calibrate_range(heavy, "mse", bits=8, symmetric=True)
    assert hi < 60.0 and lo > heavy.min()
    with pytest.raises(ConfigError):
        P.calibrate_range(x, "entropy")


def test_two_level_weight_format():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(24, 128, generator=g) * torch.rand(24, 1, generator=g)
    tl = P.two_level_weight(w, 4, 32)
    assert tl.sg.dtype == torch.uint8 and int(tl.sg.min()) >= 1 and int(tl.sg.max()) <= 16
    assert bool((tl.sg.amax(1) == 16).all())  # the largest group of each row uses the full range
    w8 = tl.int8_weight().int()
    assert int(w8.abs().max()) <= 128
    # error: within one effective step of the float-scale format's error budget
    err_tl = (tl.dequantize() - w).pow(2).mean()
    err_fp = (P.quantize_weight(w, 4, granularity="group", group_size=32).dequantize() - w).pow(2).mean()
    assert err_tl < 1.5 * err_fp
    with pytest.raises(ConfigError):
        P.two_level_weight(w, 8, 32)
    assert P.max_group_scale(2) == 64 and P.max_group_scale(3) == 32
