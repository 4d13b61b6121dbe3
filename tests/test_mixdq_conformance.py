"""MixDQ's public rules (github.com/thu-nics/MixDQ, ``mixed_precision_scripts/``), each encoded on a
model whose sensitivities are KNOWN because they are constructed: widths per group, the budget split,
the activation budget weighted by activation size with ~1 % of layers kept at 16 bits, SQNR over the
whole batch, the SSIM window, the BOS path, and the refusal of a budget the rule cannot reach."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from qbench.quant import allocate as al

# a constructed "model": 6 quality and 6 content layers. Quality layers lose a lot at 2 bits but
# are small, so the loose search (sum of dB, unweighted by size) is tempted to put the large ones
# at 2 bits to pay for 8 bits elsewhere: exactly the trade MixDQ's rule forbids.
QUALITY = {f"q{i}": p for i, p in enumerate([400, 400, 100, 100, 50, 50])}
CONTENT = {f"c{i}": p for i, p in enumerate([300, 300, 200, 200, 100, 100])}
PARAMS = {**QUALITY, **CONTENT}


def _scores():
    s = {}
    for i, n in enumerate(QUALITY):  # SQNR dB: +6 dB per bit, each layer its own offset
        s[n] = {2: 10.0 + i, 4: 22.0 + i, 8: 46.0 + i}
    for i, n in enumerate(CONTENT):  # SSIM: 1 - damage, damage quartered per 2 bits
        d = 0.01 * (i + 1)
        s[n] = {2: 1 - d, 4: 1 - d / 4, 8: 1 - d / 64}
    return s


def _mixdq_loop(params, content, target, ks, tol=0.02):
    """MixDQ's __main__ weight loop, restated: the splits it keeps and each group's widths."""
    pc = sum(p for n, p in params.items() if n in content)
    pq = sum(p for n, p in params.items() if n not in content)
    kept = []
    for b in np.linspace(target - 0.3, target, 10):
        for k in ks:
            b_q = b * (1 + pc / pq) / (k * pc / pq + 1)
            b_c = k * b_q
            if b_q < 4 or b_q > 8 or b_c < 2 or b_c > 8:
                continue
            kept.append((float(b), float(k), b_q, b_c))
    return kept


@pytest.mark.parametrize("target", [4.0, 5.0, 8.0])
def test_budget_split_keeps_exactly_mixdqs_points(target):
    content = set(CONTENT)
    pts = al.split_points(al.budget_grid(target), al.MIXDQ_K_SWEEP, PARAMS, content, (2, 8), (4, 8))
    want = _mixdq_loop(PARAMS, content, target, np.linspace(0.46, 1.36, 10))
    assert len(pts) == len(want) > 0
    assert np.allclose([(p.budget, p.k, p.b_q, p.b_c) for p in pts], want)
    assert all(4 - 1e-9 <= p.b_q <= 8 + 1e-9 and 2 - 1e-9 <= p.b_c <= 8 + 1e-9 for p in pts)


def test_quality_layers_only_4_or_8_bits_content_may_take_2():
    content, scores = set(CONTENT), _scores()
    pts = al.split_points([4.0], [0.6, 1.0], PARAMS, content, (2, 8), (4, 8))
    pairs = al.group_allocations(scores, PARAMS, content, pts, 0.02, al.MIXDQ_CONTENT_WIDTHS, al.MIXDQ_QUALITY_WIDTHS)
    assert pairs
    for pt, alloc in pairs:
        assert {alloc[n] for n in QUALITY} <= {4, 8}
        assert al.mean_bits({n: alloc[n] for n in QUALITY}, QUALITY) >= 4 - 0.02
        assert abs(al.mean_bits(alloc, PARAMS) - pt.budget) <= 0.02 + 1e-9
        # each group is the exact optimum over its allowed widths (brute force)
        bq, _ = al.brute_force_allocation({n: {b: scores[n][b] for b in (4, 8)} for n in QUALITY}, QUALITY, pt.b_q)
        assert al.allocation_score({n: alloc[n] for n in QUALITY}, scores) == pytest.approx(al.allocation_score(bq, scores))
    assert any(alloc[n] == 2 for _, alloc in pairs for n in CONTENT)
    # the loose search on the same sensitivities does put quality layers at 2 bits
    loose = al.group_allocations(scores, PARAMS, content, al.split_points([4.0], [1.0], PARAMS, content, (2, 8)), 0.02, (2, 4, 8))
    assert any(alloc[n] == 2 for _, alloc in loose for n in QUALITY)


def test_a_budget_below_the_rules_least_mean_has_no_split():
    content = set(CONTENT)
    least = al.least_mean(PARAMS, content, 4, 2)
    assert least == pytest.approx((4 * sum(QUALITY.values()) + 2 * sum(CONTENT.values())) / sum(PARAMS.values()))
    assert least == pytest.approx(2.9565, abs=1e-4)
    below = al.budget_grid(2.9)  # every B < least
    assert al.split_points(below, al.MIXDQ_K_SWEEP, PARAMS, content, (2, 8), (4, 8)) == []
    assert al.split_points(below, al.MIXDQ_K_SWEEP, PARAMS, content, (2, 8))  # loose: feasible
    assert al.split_points([least + 0.01], [1.0, 0.5], PARAMS, content, (2, 8), (4, 8))  # just above: b_q = 4.0x, k = 0.5


def test_one_percent_of_activations_at_16_bits_and_the_budget_weighted_by_activation_size():
    # 250 layers (125 per group) with known activation scores: layer i's score rises with i
    names = [f"l{i:03d}" for i in range(250)]
    content = {n for i, n in enumerate(names) if i % 2}
    at_a = {n: float(i) for i, n in enumerate(names)}
    n_fp = math.ceil(0.01 * len(names))
    assert n_fp == 3  # MixDQ: 9 of SDXL-Turbo's ~900 layers, ~1 %
    # the lowest scores, alternately from the quality and the content group (quality first)
    assert al.most_sensitive(at_a, content, n_fp) == ["l000", "l001", "l002"]
    # the activation budget: weighted by input activation size, not by parameters; under MixDQ's rule
    # the 16-bit layers are outside it (integer_programming.py: the ILP's layers and `intensity`
    # exclude act_sensitivity_1), so at A8 with candidates {4, 8} every other layer stays at 8
    act = {n: (4096 if i < 10 else 64) for i, n in enumerate(names)}
    protected = ["l000", "l001", "l002"]
    assert al.act_target(8.0, act, protected, "mixdq") == 8.0
    alloc = {n: None for n in protected}
    alloc.update({n: 8 for n in names if n not in protected})
    assert al.act_means(alloc, act) == (pytest.approx(8.0), pytest.approx(al.mean_bits({n: 16 if b is None else b for n, b in alloc.items()}, act)))
    assert al.act_means(alloc, act)[1] > 8.5  # the 16-bit layers raise what the denoiser moves, not the budget
    # rule=loose: the 16-bit layers pay from the budget, the rest get less than 8 (what broke toy-lcm W8A8)
    rest = al.rest_budget(8.0, act, protected)
    assert al.act_target(8.0, act, protected, "loose") == pytest.approx(rest) and rest < 7.0
    loose = {n: 16 for n in protected}
    loose.update({n: rest for n in names if n not in protected})
    assert al.mean_bits(loose, act) == pytest.approx(8.0)
    params = {n: 100 for n in names}
    assert al.mean_bits(loose, params) != pytest.approx(8.0)  # another weighting gives another mean
    with pytest.raises(ValueError):
        al.act_target(8.0, act, protected, "other")


def test_sqnr_over_the_whole_batch_not_the_mean_of_per_prompt_db():
    rng = np.random.default_rng(0)
    t = [rng.normal(size=64) * s for s in (1.0, 10.0)]  # a quiet and a loud prompt, the same error
    p = [x + 0.1 * rng.normal(size=64) for x in t]
    sig = [float(np.sum(x * x)) for x in t]
    err = [float(np.sum((a - b) ** 2)) for a, b in zip(p, t)]
    batch = al.sqnr_of_energies(sig, err)
    assert batch == pytest.approx(al.sqnr(np.concatenate(p), np.concatenate(t)))
    assert abs(batch - np.mean([al.sqnr(a, b) for a, b in zip(p, t)])) > 1.0
    assert al.sqnr_of_energies(sig, [0.0, 0.0], cap=200.0) == 200.0
    with pytest.raises(ValueError):
        al.sqnr_of_energies(sig, err[:1])


def test_per_prompt_energies_of_replayed_calls_give_the_batch_sqnr():
    from qbench.quant.sensitivity import CapturedCall, per_prompt_energy

    g = torch.Generator().manual_seed(0)
    calls = [CapturedCall((), {}, torch.randn(2, 3, 4, generator=g), [0, 1]) for _ in range(3)]
    outs = [c.output + 0.05 * torch.randn(c.output.shape, generator=g) for c in calls]
    sig, err = per_prompt_energy(None, calls, 2), per_prompt_energy(outs, calls, 2)
    want = al.sqnr(torch.cat([o.flatten() for o in outs]), torch.cat([c.output.flatten() for c in calls]))
    assert al.sqnr_of_energies(sig, err) == pytest.approx(want, rel=1e-6)


def test_activation_sizes_are_per_sample_input_elements():
    from qbench.quant.sensitivity import activation_sizes

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 8, 3, padding=1)
            self.lin = nn.Linear(8, 16)
            self.unused = nn.Linear(2, 2)

        def forward(self, x):
            y = self.conv(x)  # [B, 8, 6, 6]
            return self.lin(y.flatten(2).transpose(1, 2))  # [B, 36, 8] tokens

    sizes = activation_sizes(Net(), ["conv", "lin", "unused"], (torch.randn(3, 4, 6, 6),), {})
    assert sizes == {"conv": 4 * 6 * 6, "lin": 36 * 8, "unused": 0}


def test_ssim_window_is_mixdqs_near_whole_image_window():
    from qbench.methods.mixdq_calib import whole_image_ssim
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, size=(512, 512, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-20, 21, size=a.shape), 0, 255).astype(np.uint8)
    # MixDQ's call on its 512 px uint8 images (quant_content.py)
    want = structural_similarity(a, b, channel_axis=2, win_size=511)
    assert whole_image_ssim([b], [None], [a])[0] == pytest.approx(want, rel=1e-9)
    # a 32 px toy image: the largest odd window that fits (31)
    small_a, small_b = a[:32, :32], b[:32, :32]
    got = whole_image_ssim([small_b], [None], [small_a])[0]
    assert got == pytest.approx(structural_similarity(small_a, small_b, channel_axis=2, win_size=31), rel=1e-9)


def test_bos_token_keeps_full_precision_under_any_weight_width():
    from qbench.quant.bos import BOSAwareLinear
    from qbench.quant.spec import QuantConfig

    torch.manual_seed(0)
    lin = nn.Linear(32, 16)
    bos = torch.randn(32) * 20  # the outlier token
    x = torch.randn(2, 5, 32)
    x[:, 0] = bos
    for w in (2, 4, 8):
        spec = QuantConfig(bits=f"W{w}A8").resolve_spec(w, 8)
        q = BOSAwareLinear.from_float(lin, spec, "bos", bos)
        y = q(x)
        assert torch.allclose(y[:, 0], lin(bos).expand(2, -1), atol=1e-5)  # token 0: FP weights and activations
        assert not torch.allclose(y[:, 1:], lin(x[:, 1:]), atol=1e-4)  # the others: quantized
        assert q.bos_hits >= 1 and q.bos_misses == 0


@pytest.mark.parametrize("model_name", ["tiny-lcm", "tiny-flux"])
def test_prefix_reuse_gives_bit_identical_replays(model_name):
    """The sensitivity pass's speed-up (units before the perturbed layer served from recorded FP
    outputs) changes no output bit, for layers early, in the middle and last, Linear and Conv2d."""
    from qbench.models.loader import load_model
    from qbench.quant.linear import QuantConv2d, QuantLinear
    from qbench.quant.sensitivity import (
        CapturedCall,
        PrefixCache,
        denoiser_units,
        first_call,
        replay_outputs,
        swap_module,
    )
    from qbench.quant.spec import QuantConfig

    model = load_model(model_name, device="cpu")
    den = model.denoiser
    args, kwargs = first_call(model, ["a red circle", "two blue squares"])
    with torch.inference_mode():
        out = den(*args, **kwargs)
    calls = [CapturedCall(args, kwargs, (out[0] if isinstance(out, tuple) else out.sample).clone(), [0, 1])] * 2
    cache = PrefixCache(den, calls)
    assert cache.traces is not None and len(cache.traces) == 2
    units = [n for n, _ in denoiser_units(den)]
    layers = [n for n, m in den.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d)) and cache.unit_of(n)]
    picks = {layers[0], layers[len(layers) // 2], layers[-1]} | {n for n in layers if isinstance(den.get_submodule(n), nn.Conv2d)}
    spec = QuantConfig(bits="W4A8").resolve_spec(4, 8)
    served = 0
    for n in sorted(picks)[:6]:
        m = den.get_submodule(n)
        q = QuantConv2d.from_float(m, spec) if isinstance(m, nn.Conv2d) else QuantLinear.from_float(m, spec)
        with swap_module(den, n, q):
            full = replay_outputs(den, calls)
            fast = cache.replay(n, calls)
        assert all(torch.equal(a, b) for a, b in zip(full, fast)), n
        served += units.index(cache.unit_of(n)) > 0
    assert served  # some replays really skipped units
    assert all(torch.equal(a, c.output) for a, c in zip(cache.replay(layers[-1], calls), calls))  # unperturbed: the FP output


@pytest.mark.parametrize("model_name", ["tiny-lcm", "tiny-flux"])
def test_prefix_reuse_gives_bit_identical_sensitivity_images(model_name):
    """The same record serves the image scores: a perturbed generation's first denoiser call has the
    full-precision inputs bit for bit, so its units before the perturbed layer are served
    (PrefixCache.serving); every later step runs in full. The images equal the unserved ones
    bit for bit, for layers early, in the middle and last."""
    import numpy as np

    from qbench.models.loader import load_model
    from qbench.quant.linear import QuantConv2d, QuantLinear
    from qbench.quant.sensitivity import PrefixCache, capture_calls, denoiser_units, swap_module
    from qbench.quant.spec import QuantConfig

    model = load_model(model_name, device="cpu")
    den = model.denoiser
    texts, seeds = ["a red circle", "two blue squares"], [3, 4]
    gen = lambda ps: model.generate(ps, seeds, steps=2)  # noqa: E731
    _, calls = capture_calls(den, gen, texts, batch=2)
    cache = PrefixCache(den, calls)
    units = [n for n, _ in denoiser_units(den)]
    layers = [n for n, m in den.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d)) and cache.unit_of(n)]
    picks = [layers[0], layers[len(layers) // 2], layers[-1]]
    spec = QuantConfig(bits="W4A8").resolve_spec(4, 8)
    skipped = 0
    for n in picks:
        m = den.get_submodule(n)
        q = QuantConv2d.from_float(m, spec) if isinstance(m, nn.Conv2d) else QuantLinear.from_float(m, spec)
        with swap_module(den, n, q):
            full = gen(texts)
            before = cache.served
            with cache.serving(n):
                fast = gen(texts)
        assert cache.served == before + 1, n  # the first step only: the later ones differ from FP
        assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(full, fast)), n
        skipped += units.index(cache.unit_of(n)) > 0
    assert skipped
    # a call that differs in one bit is not served
    from qbench.quant.sensitivity import same_inputs

    a, k = calls[0].args, calls[0].kwargs
    first = a[0] if a else next(v for v in k.values() if isinstance(v, torch.Tensor))
    bumped = first.clone()
    bumped.view(-1)[0] = torch.nextafter(bumped.view(-1)[0], torch.tensor(float("inf"), dtype=bumped.dtype))
    swap = ((bumped,) + tuple(a[1:]), k) if a else (a, {**k, next(x for x, v in k.items() if v is first): bumped})
    assert same_inputs((a, k), (a, k)) and not same_inputs(swap, (a, k))


def test_quality_layers_need_no_w2_sensitivity():
    """rule=mixdq gives a quality layer 4 or 8 bits, so its W2 score is never read: the weight ILP
    picks the same allocation with and without it, at every sweep point (why the calibration
    measures a quality layer at W4/W8 only: a fifth fewer output-SQNR replays)."""
    import numpy as np

    from qbench.quant import allocate as al

    rng = np.random.default_rng(0)
    names = [f"l{i}" for i in range(14)]
    content = set(names[:6])
    params = {n: int(rng.integers(100, 5000)) for n in names}
    full = {n: {2: float(rng.uniform(0, 20)), 4: float(rng.uniform(20, 40)), 8: float(rng.uniform(40, 60))} for n in names}
    pruned = {n: ({b: s for b, s in v.items() if b != 2} if n not in content else v) for n, v in full.items()}
    pts = al.split_points([3.6, 3.8, 4.0], [0.5, 0.8, 1.0, 1.25], params, content, (2, 8), (4.0, 8.0))
    assert pts
    a = al.group_allocations(full, params, content, pts, 0.05, [2, 4, 8], [4, 8])
    b = al.group_allocations(pruned, params, content, pts, 0.05, [2, 4, 8], [4, 8])
    assert a and a == b and all(v[n] in (4, 8) for _, v in a for n in names if n not in content)
