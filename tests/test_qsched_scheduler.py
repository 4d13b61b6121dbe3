"""Q-Sched scheduler wrapper: bit-identity at 1.0, the documented updates, parameterisations,
checkpoint round trip and the plain-diffusers export (no model weights needed)."""
from __future__ import annotations

import inspect
import json
import math

import pytest
import torch
from qbench.methods import qsched as qs

from qbench.errors import ConfigError, QBenchError

diffusers = pytest.importorskip("diffusers")

SCHEDULERS = {
    "lcm": ("LCMScheduler", {}),
    "tcd": ("TCDScheduler", {"timestep_spacing": "trailing"}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {"timestep_spacing": "trailing"}),
    "flow": ("FlowMatchEulerDiscreteScheduler", {"shift": 1.0, "use_dynamic_shifting": False}),
}
STEP_KW = {"tcd": {"eta": 0.0}}


def make(kind: str):
    cls_name, cfg = SCHEDULERS[kind]
    return getattr(diffusers, cls_name)(**cfg)


def fake_model(sample: torch.Tensor, i: int) -> torch.Tensor:
    """A fixed, sample-dependent 'denoiser output'."""
    g = torch.Generator().manual_seed(1000 + i)
    return 0.3 * sample + torch.randn(sample.shape, generator=g)


def denoise(sched, kind: str, steps: int = 4, seed: int = 0, record: list | None = None) -> torch.Tensor:
    sched.set_timesteps(steps)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((2, 4, 8, 8), generator=g) * getattr(sched, "init_noise_sigma", 1.0)
    noise_gen = torch.Generator().manual_seed(seed + 1)
    for i, t in enumerate(sched.timesteps):
        inp = sched.scale_model_input(x, t) if hasattr(sched, "scale_model_input") else x
        eps = fake_model(inp, i)
        if record is not None:
            record.append((x.clone(), eps.clone(), t))
        kw = dict(STEP_KW.get(kind, {}))
        if "generator" in inspect.signature(sched.step).parameters:
            kw["generator"] = noise_gen
        x = sched.step(eps, t, x, return_dict=False, **kw)[0]
    return x


@pytest.mark.parametrize("kind", list(SCHEDULERS))
@pytest.mark.parametrize("param", qs.PARAMETERISATIONS)
def test_identity_is_bit_identical(kind, param):
    base = denoise(make(kind), kind)
    wrapped = qs.wrap_scheduler(make(kind), qs.QSchedCoefficients.identity(param, 4))
    out = denoise(wrapped, kind)
    assert torch.equal(base, out)
    # and it is a real wrapper: the same class family and the same step signature
    assert isinstance(wrapped, type(make(kind)))
    assert inspect.signature(wrapped.step).parameters.keys() == inspect.signature(make(kind).step).parameters.keys()


@pytest.mark.parametrize("kind", list(SCHEDULERS))
def test_non_identity_changes_output_and_reruns_identically(kind):
    base = denoise(make(kind), kind)
    wrapped = qs.wrap_scheduler(make(kind), qs.QSchedCoefficients("ramp", (0.9, 1.1)))
    a = denoise(wrapped, kind)
    b = denoise(wrapped, kind)  # set_timesteps resets the step index
    assert not torch.equal(base, a)
    assert torch.equal(a, b)


def test_flow_match_update_formula():
    c = qs.QSchedCoefficients("start_end", (0.9, 1.05, 1.1, 0.95))
    c_eps, c_x = c.resolve(4)
    sched = qs.wrap_scheduler(make("flow"), c)
    rec: list = []
    out = denoise(sched, "flow", record=rec)
    sigmas = sched.sigmas
    x = rec[0][0]
    for i, (xi, v, _) in enumerate(rec):
        assert torch.allclose(xi, x, atol=1e-6)
        x = c_x[i] * x + (sigmas[i + 1] - sigmas[i]) * c_eps[i] * v
    assert torch.allclose(out, x, atol=1e-6)


def test_euler_ancestral_update_formula():
    c = qs.QSchedCoefficients("ramp", (0.85, 1.15))
    c_eps, c_x = c.resolve(4)
    sched = qs.wrap_scheduler(make("euler_a"), c)
    rec: list = []
    out = denoise(sched, "euler_a", record=rec)
    s = sched.sigmas
    noise_gen = torch.Generator().manual_seed(1)
    x = rec[0][0]
    for i, (_, eps, _) in enumerate(rec):
        sf, st = s[i], s[i + 1]
        up = (st**2 * (sf**2 - st**2) / sf**2) ** 0.5
        down = (st**2 - up**2) ** 0.5
        z = torch.randn(eps.shape, generator=noise_gen)
        x = c_x[i] * x + c_eps[i] * eps * (down - sf) + up * z
    assert torch.allclose(out, x, atol=1e-5)


def test_tcd_update_formula():
    c = qs.QSchedCoefficients("ramp", (1.1, 0.9))
    c_eps, c_x = c.resolve(4)
    sched = qs.wrap_scheduler(make("tcd"), c)
    rec: list = []
    out = denoise(sched, "tcd", record=rec)
    ab = sched.alphas_cumprod
    ts = list(sched.timesteps)
    x = rec[0][0]
    for i, (_, eps, t) in enumerate(rec):
        s = ts[i + 1] if i + 1 < len(ts) else torch.tensor(0)
        x0 = (c_x[i] * x - (1 - ab[t]).sqrt() * c_eps[i] * eps) / ab[t].sqrt()
        x = ab[s].sqrt() * x0 + (1 - ab[s]).sqrt() * c_eps[i] * eps
    assert torch.allclose(out, x, atol=1e-4)


def test_step_index_honours_begin_index():
    """img2img-style: start in the middle of the schedule; coefficient index = scheduler's index."""
    c = qs.QSchedCoefficients("per_step", (0.5, 0.6, 0.7, 0.8, 1.0, 1.0, 1.0, 1.0), steps=4)
    sched = qs.wrap_scheduler(make("flow"), c)
    sched.set_timesteps(4)
    sched.set_begin_index(2)
    x = torch.ones(1, 4, 2, 2)
    v = torch.zeros_like(x)
    out = sched.step(v, sched.timesteps[2], x, return_dict=False)[0]
    assert torch.allclose(out, x)  # c_x[2] = 1.0 and v = 0
    out = sched.step(torch.ones_like(x), sched.timesteps[3], x, return_dict=False)[0]
    assert torch.allclose(out, x + (sched.sigmas[4] - sched.sigmas[3]) * 0.8)


def test_parameterisations():
    e, x = qs.resolve_coefficients("ramp", (0.8, 1.2), 5)
    assert e == pytest.approx([0.8, 0.85, 0.9, 0.95, 1.0]) and x == pytest.approx([1.2, 1.15, 1.1, 1.05, 1.0])
    assert e[-1] == 1.0 and x[-1] == 1.0  # exactly 1.0 at the last step
    e, x = qs.resolve_coefficients("start_end", (0.8, 1.0, 1.2, 1.1), 3)
    assert e == pytest.approx([0.8, 0.9, 1.0]) and x == pytest.approx([1.2, 1.15, 1.1])
    assert qs.resolve_coefficients("per_step", (1, 2, 3, 4), 2) == ([1.0, 2.0], [3.0, 4.0])
    assert qs.resolve_coefficients("ramp", (0.7, 0.9), 1) == ([0.7], [0.9])
    with pytest.raises(ConfigError):
        qs.resolve_coefficients("ramp", (1.0,), 4)
    with pytest.raises(ConfigError):
        qs.QSchedCoefficients("cubic", (1.0, 1.0))
    with pytest.raises(ConfigError):
        qs.QSchedCoefficients("ramp", (1.0, math.nan))
    with pytest.raises(QBenchError):
        qs.QSchedCoefficients("per_step", (1.0,) * 8, steps=4).resolve(8)


def test_refuses_higher_order_scheduler():
    with pytest.raises(ConfigError):
        qs.wrap_scheduler(diffusers.HeunDiscreteScheduler(), qs.QSchedCoefficients.identity())


def _ckpt(coeffs, steps=4, **kw):
    return qs.make_checkpoint(coeffs, steps=steps, model="tiny-flux", bits="W4A8", base="naive", scheduler_class="FlowMatchEulerDiscreteScheduler", **kw)


def test_checkpoint_round_trip_and_errors(tmp_path):
    c = qs.QSchedCoefficients("start_end", (0.9, 1.0, 1.1, 1.0))
    path = qs.save_checkpoint(str(tmp_path / "c.json"), _ckpt(c, calibration={"jaq_before": 1.0, "jaq_after": 1.2}))
    back = qs.load_checkpoint(path)
    assert qs.checkpoint_coefficients(back) == c
    assert back["model"] == "tiny-flux" and back["calibration"]["jaq_after"] == 1.2 and back["provenance"]["qbench"]["version"] and back["provenance"]["date"]
    # errors are one-line QBenchErrors
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "other.json").write_text(json.dumps({"format": "something"}))
    tampered = dict(back, c_eps=[2.0, 2.0, 2.0, 2.0])
    (tmp_path / "tampered.json").write_text(json.dumps(tampered))
    for name in ("bad.json", "other.json", "tampered.json", "missing.json"):
        with pytest.raises(QBenchError) as e:
            qs.load_checkpoint(str(tmp_path / name))
        assert "\n" not in str(e.value)


def test_diffusers_export_round_trip(tmp_path):
    c = qs.QSchedCoefficients("ramp", (0.9, 1.1))
    ckpt_path = qs.save_checkpoint(str(tmp_path / "c.json"), _ckpt(c))

    class Pipe:  # a pipeline only needs a .scheduler attribute for apply_qsched
        scheduler = make("flow")

    pipe = Pipe()
    ref = denoise(qs.wrap_scheduler(make("flow"), c), "flow")
    qs.apply_qsched(pipe, ckpt_path)
    assert torch.equal(denoise(pipe.scheduler, "flow"), ref)
    # re-applying replaces (does not stack) the coefficients
    qs.apply_qsched(pipe, ckpt_path)
    assert torch.equal(denoise(pipe.scheduler, "flow"), ref)
    # save_pretrained -> load_qsched_scheduler round-trips the coefficients
    pipe.scheduler.save_pretrained(str(tmp_path / "sched"))
    loaded = qs.load_qsched_scheduler(str(tmp_path / "sched"))
    assert loaded.qsched_coefficients == c
    assert type(loaded).__name__ == "QSchedFlowMatchEulerDiscreteScheduler"
    assert torch.equal(denoise(loaded, "flow"), ref)
    # unwrapping gives back the plain scheduler
    plain = qs.unwrap_scheduler(loaded)
    assert type(plain) is diffusers.FlowMatchEulerDiscreteScheduler and "qsched" not in plain.config
    assert torch.equal(denoise(plain, "flow"), denoise(make("flow"), "flow"))
    # a checkpoint for another scheduler class is refused
    pipe.scheduler = make("lcm")
    with pytest.raises(QBenchError):
        qs.apply_qsched(pipe, ckpt_path)


def test_public_names_of_the_one_file_module_are_still_there():
    """Everything ``from qbench.methods.qsched import ...`` gave before the split into
    ``qsched_scheduler`` / ``qsched`` / ``qsched_search`` (list taken from that module), the
    lazily made wrapper classes included; the scheduler module has the same objects."""
    from qbench.methods import qsched_scheduler as sched

    before = ["CKPT_FORMAT", "CONFIG_KEY", "DEFAULT_BITS", "GRID_MAX_POINTS", "PARAMETERISATIONS", "QSched",
              "QSchedCoefficients", "QSchedSchedulerMixin", "apply_qsched", "checkpoint_coefficients", "identity_params",
              "linspace", "load_checkpoint", "load_qsched_scheduler", "make_checkpoint", "n_params", "qsched_scheduler_class",
              "resolve_coefficients", "run_calibration", "save_checkpoint", "trajectory_by_stage", "unwrap_scheduler",
              "validate_checkpoint", "wrap_scheduler"]
    assert [n for n in before if not hasattr(qs, n)] == []
    assert qs.wrap_scheduler is sched.wrap_scheduler and qs.QSchedSchedulerMixin is sched.QSchedSchedulerMixin
    assert qs.QSchedLCMScheduler is sched.QSchedLCMScheduler and issubclass(qs.QSchedLCMScheduler, diffusers.LCMScheduler)
    assert qs.SchedulerMixin is diffusers.SchedulerMixin
    with pytest.raises(AttributeError):
        qs.QSchedNoSuchScheduler
