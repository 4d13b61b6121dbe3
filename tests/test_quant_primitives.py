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


def _torchao_qparams_and_codes(x, block, bits, symmetric):
    from torchao.quantization.quant_primitives import MappingType, choose_qparams_affine, quantize_affine

    qmin, qmax = P.qrange(bits)
    mt = MappingType.SYMMETRIC if symmetric else MappingType.ASYMMETRIC
    # eps: the value torchao's int8 workflow (Int8Tensor) passes; float32 scales, int32 zeros
    s, z = choose_qparams_affine(x, mt, block, torch.int8, qmin, qmax, eps=torch.finfo(torch.float32).eps,
                                 scale_dtype=torch.float32, zero_point_dtype=torch.int32)
    return s, z, quantize_affine(x, block, s, z, torch.int8, qmin, qmax)


def _near_tie_activations(rows: int, k: int, g: torch.Generator) -> torch.Tensor:
    """Rows spanning [-1, 3] (scale 4/255, zero -64) whose other values sit within 1e-5 of a
    half-integer code x/scale in [-3.5, 3.5]: there ``round(x/s + zero)`` (the float32 sum loses
    the low bits of x/s) and torchao's ``round(x/s) + zero`` part ways."""
    s = torch.tensor(4.0) / 255
    half = torch.randint(-4, 3, (rows, k), generator=g).float() + 0.5
    x = (half + (torch.rand(rows, k, generator=g) * 2 - 1) * 1e-5) * s
    x[:, 0], x[:, 1] = -1.0, 3.0
    return x


def test_codes_scales_and_zeros_equal_torchao_primitives():
    """Code-exact agreement with torchao's choose_qparams_affine + quantize_affine on ~8 M values:
    per-token int8 activations (asymmetric and symmetric, random, near-tie, tiny ranges) and
    symmetric / asymmetric int8 / int4 weights per channel and per group (exact ties included)."""
    g = torch.Generator().manual_seed(0)
    ties = torch.randint(-255, 256, (512, 1024), generator=g).float() / 2
    ties[:, 0] = 127.5  # absmax 127.5: scale exactly 1, every odd entry an exact tie
    cases = [  # (name, x, granularity, bits, symmetric)
        ("act asym", torch.randn(1024, 1024, generator=g) * 3 + 0.5, "token", 8, False),
        ("act asym near-ties", _near_tie_activations(1024, 1024, g), "token", 8, False),
        ("act asym heavy tails", torch.randn(512, 1024, generator=g) ** 3, "token", 8, False),
        ("act asym tiny ranges (eps floor)", torch.randn(64, 1024, generator=g) * 1e-6, "token", 8, False),
        ("act sym", torch.randn(512, 1024, generator=g) * 2, "token", 8, True),
        ("w int8 sym channel exact ties", ties, "channel", 8, True),
        ("w int8 sym channel", torch.randn(1024, 1024, generator=g) * 0.02, "channel", 8, True),
        ("w int4 sym channel", torch.randn(1024, 1024, generator=g) * 0.02, "channel", 4, True),
        ("w int4 sym group 64", torch.randn(1024, 1024, generator=g) * 0.02, "group", 4, True),
        ("w int4 asym group 128", torch.randn(1024, 1024, generator=g) * 0.02 + 0.01, "group", 4, False),
    ]
    differ, old_order_differs, total = {}, 0, 0
    for name, x, gran, bits, sym in cases:
        n, k = x.shape
        if gran == "token":
            s, z = P.act_qparams(x, bits, sym, "token")
            q, block = P.quantize(x, s, z, bits), (1, k)
        else:
            gs = (64 if sym else 128) if gran == "group" else None
            qw = P.quantize_weight(x, bits, symmetric=sym, granularity=gran, group_size=gs)
            q, s, z, block = qw.q, qw.scale, qw.zero, (1, gs or k)
        s_ao, z_ao, q_ao = _torchao_qparams_and_codes(x, block, bits, sym)
        z_diff = int((z_ao != 0).sum()) if z is None else int((z.reshape(-1) != z_ao.reshape(-1)).sum())
        differ[name] = (int((s.reshape(-1) != s_ao.reshape(-1)).sum()), z_diff, int((q.reshape(n, -1)[:, :k] != q_ao).sum()))
        total += x.numel()
        if not sym:  # the former order, round(x/s + zero), on the same qparams
            s4, z4 = s_ao.view(n, -1, 1), z_ao.view(n, -1, 1).float()
            old = torch.clamp(torch.round(x.view(n, -1, block[1]) * (1.0 / s4) + z4), *P.qrange(bits)).view(n, k)
            old_order_differs += int((old != q_ao).sum())
    assert total > 7_900_000
    assert all(d == (0, 0, 0) for d in differ.values()), f"(scales, zeros, codes) differing from torchao: {differ}"
    assert old_order_differs > 1000, f"the near-tie inputs must tell the two rounding orders apart ({old_order_differs} codes)"


def test_scales_have_the_same_bits_under_the_cuda_division_rule():
    """PyTorch's CUDA kernel multiplies by float32(1/d) when a tensor is divided by a Python number
    (tests/cuda_div_emulation.py emulates that rule on CPU); the CPU divides. The scales divide by
    a same-device tensor instead (P.div_by), so they have the same bits under both rules."""
    from cuda_div_emulation import CudaDivRule

    g = torch.Generator().manual_seed(0)
    x = torch.randn(4096, 64, generator=g) * torch.rand(4096, 1, generator=g) * 10
    for sym in (True, False):
        for bits in (8, 4):
            ref = P.act_qparams(x, bits, sym, "token")
            with CudaDivRule() as rule:
                emu = P.act_qparams(x, bits, sym, "token")
            assert rule.hits == 0 and torch.equal(emu[0], ref[0]) and (sym or torch.equal(emu[1], ref[1]))
    w = torch.randn(64, 256, generator=g)
    ref = P.two_level_weight(w, 4, 32)
    with CudaDivRule() as rule:
        emu = P.two_level_weight(w, 4, 32)
    assert rule.hits == 0 and torch.equal(emu.s1, ref.s1) and torch.equal(emu.q, ref.q) and torch.equal(emu.sg, ref.sg)
    # the emulation does see a Python-number divisor, and then most rows differ by 1 ulp
    amax = x.abs().amax(-1)
    with CudaDivRule() as rule:
        cuda_like = amax / 127.5
    frac = float((cuda_like != amax / 127.5).float().mean())
    assert rule.hits == 1 and frac > 0.5, frac
    assert float(((cuda_like - amax / 127.5).abs() / torch.finfo(torch.float32).eps / cuda_like).max()) <= 1.0  # at most 1 ulp
