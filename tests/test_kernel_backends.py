"""Kernel mode's integer GEMM chosen per machine (qbench.quant.backends / cpucaps).

* every CPU path this machine has gives the *same bits* as ``torch._int_mm`` (the reference path)
  on W8A8 and W4A8 layers with asymmetric and symmetric per-token and static per-tensor
  activations, on operands built to saturate the int16 pair sums of non-VNNI int8 instructions;
* the choice logic (``choose_cpu``) from canned ``/proc/cpuinfo`` text (AVX2-only EPYC,
  AVX512-VNNI Xeon) and faked probe results, no timing;
* ``QBENCH_KERNEL_PATH`` forcing, and one error line for an unknown or unavailable path through
  ``qbench run``;
* the selection and the CPU capability recorded with the result; resident vs stored bytes.

Both CPU kinds: every test passes (or skips, saying why) on an AVX512-VNNI CPU and on an AVX2-only
one. The AVX2 kind is emulated on a VNNI machine with ``ONEDNN_MAX_CPU_ISA=AVX2`` (oneDNN then uses
``VPMADDUBSW``, which saturates) and the canned :data:`AVX2_EPYC` cpuinfo; with that variable set the
whole file runs as on such a CPU (``ONEDNN_MAX_CPU_ISA=AVX2 pytest tests/test_kernel_backends.py``),
and :func:`test_onednn_tests_pass_under_avx2_emulation` runs the oneDNN tests that way in CI.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from qbench.cli import main
from qbench.errors import QBenchError
from qbench.quant import backends, cpucaps
from qbench.quant.api import freeze_, observe_, size_report
from qbench.quant.linear import QuantLinear
from qbench.quant.spec import LayerSpec

AVX2_EPYC = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B12
flags\t\t: fpu vme sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 bmi1 bmi2 sha_ni
"""
VNNI_XEON = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz
flags\t\t: fpu sse2 avx fma avx2 avx512f avx512dq avx512bw avx512vl avx512_vnni
processor\t: 1
flags\t\t: something else entirely
"""


@pytest.fixture(autouse=True)
def _fresh_selection(monkeypatch):
    monkeypatch.delenv(backends.ENV, raising=False)
    backends.reset()
    yield
    backends.reset()


def _spec(bits: str, act: str) -> LayerSpec:
    w4 = bits == "W4A8"
    return LayerSpec(
        w_bits=4 if w4 else 8, a_bits=8, w_granularity="group" if w4 else "channel", group_size=32 if w4 else None,
        w_symmetric=True, w_clip="minmax", group_scales="int8" if w4 else None,
        a_granularity="tensor" if act == "static" else "token", a_symmetric=act == "sym", a_static=act == "static",
        a_calib="minmax", mode="kernel",
    )


def _saturating(n: int = 40, k: int = 96, m: int = 24) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(weight [n, k], bias [n], x [m, k]): equal-magnitude weights (codes at +-127 / the int4
    extremes) and activations at their row's extremes, signs aligned so that neighbouring products
    add up (what saturates ``VPMADDUBSW``), plus random rows and a zero-padded K (96 -> no pad;
    k=90 exercises padding in the W4 case)."""
    g = torch.Generator().manual_seed(7)
    w = torch.randn(n, k, generator=g)
    w[:8] = torch.where(torch.arange(k) % 2 == 0, 1.0, -1.0)  # all codes at the extremes
    w[8:12] = 1.0
    x = torch.randn(m, k, generator=g) * 3
    x[0] = torch.where(torch.arange(k) % 2 == 0, 5.0, -5.0)
    x[1] = 5.0
    x[2] = -5.0
    x[3, : k // 2], x[3, k // 2 :] = 5.0, 0.0
    return w, torch.randn(n, generator=g), x


def _layer(bits: str, act: str, k: int = 96) -> tuple[QuantLinear, torch.Tensor]:
    w, b, x = _saturating(k=k)
    layer = QuantLinear(w, b, _spec(bits, act))
    if act == "static":
        observe_(layer)
        layer(x)
        freeze_(layer)
    return layer, x


#: oneDNN restricted below VNNI on a VNNI machine: ``torch._int_mm`` (the reference path) then
#: calls the restricted, inexact oneDNN, where a real AVX2-only CPU runs an exact reference loop
EMULATED_AVX2 = bool(os.environ.get("ONEDNN_MAX_CPU_ISA")) and bool(cpucaps.cpu_caps().int8_dot)


def _exact_onednn_path() -> str:
    """``onednn`` where it is exact here (VNNI), else ``onednn-split`` (AVX2: plain oneDNN saturates)."""
    probe = backends.selection("cpu").probe
    return "onednn" if probe["onednn"].available and probe["onednn"].exact else "onednn-split"


def _cpu_paths() -> list[str]:
    sel = backends.selection("cpu")
    return [p for p, r in sel.probe.items() if p in backends.CPU_PATHS and r.available and r.exact]


@pytest.mark.parametrize("bits", ["W8A8", "W4A8"])
@pytest.mark.parametrize("act", ["asym", "sym", "static"])
@pytest.mark.parametrize("k", [96, 90])
def test_every_cpu_path_gives_int_mm_bits(bits, act, k):
    if EMULATED_AVX2:
        pytest.skip("ONEDNN_MAX_CPU_ISA emulation: int_mm, the reference, runs the restricted oneDNN here (on a real AVX2 CPU an exact loop)")
    paths = _cpu_paths()
    assert "int_mm" in paths or not cpucaps.cpu_caps().int8_dot, "int_mm must be exact on a VNNI CPU"
    layer, x = _layer(bits, act, k)
    with torch.inference_mode():
        with backends.forced_path("int_mm"):
            ref = layer(x)
        # int_mm against an exact float64 evaluation of the same integer GEMM is test_quant_layers' job;
        # here: every other path reproduces int_mm bit for bit
        for path in paths:
            with backends.forced_path(path):
                y = layer(x)
            assert torch.equal(y, ref), f"{path} differs from int_mm on {bits} {act}: max {float((y - ref).abs().max())}"
    assert len(paths) >= 2, f"this CPU should offer int_mm and oneDNN paths, got {paths}"


def test_split_path_splits_layers_that_could_saturate():
    layer, x = _layer("W8A8", "asym")
    with torch.inference_mode(), backends.forced_path("onednn-split"):
        layer(x)
        op = backends.operand(layer, torch.device("cpu"))
    assert op.path == "onednn-split" and backends.needs_split(8, 127)
    assert not backends.needs_split(8, 64)  # 255 * 2 * 64 = 32640 <= 32767: no split needed


def test_resident_bytes_reported_beside_stored_bytes():
    layer, x = _layer("W4A8", "asym")
    stored = layer.stored_nbytes()
    assert size_report(layer)["kernel_cache_bytes"] == 0
    path = _exact_onednn_path()  # forcing plain onednn is refused as inexact on an AVX2-only CPU
    with torch.inference_mode(), backends.forced_path(path):
        layer(x)
        split = backends.operand(layer, torch.device("cpu")).split
    rep = size_report(layer)
    # oneDNN holds the int8 weight (1 byte per weight: twice the int4 codes; the split path's 7-bit
    # digits twice that again) + int32 colsum + int64 zeros
    want = (2 if split else 1) * layer.n * layer.kp + 4 * layer.n + 8 * layer.n
    assert rep["kernel_cache_bytes"] == want and rep["resident_bytes"] == stored
    assert rep["resident_with_cache_bytes"] == stored + want
    assert want > layer.qweight.numel()  # resident exceeds the packed int4 codes: reported, not hidden


def test_onednn_tests_pass_under_avx2_emulation():
    """The oneDNN tests of this file as an AVX2-only CPU runs them (issue 23 §0: forcing plain
    ``onednn`` failed there): a child pytest with ``ONEDNN_MAX_CPU_ISA=AVX2``."""
    if os.environ.get("ONEDNN_MAX_CPU_ISA"):
        pytest.skip("already running under an ONEDNN_MAX_CPU_ISA restriction")
    env = dict(os.environ, ONEDNN_MAX_CPU_ISA="AVX2", OMP_WAIT_POLICY="PASSIVE")
    env.pop(backends.ENV, None)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_kernel_backends.py",
           "-k", "resident or split_path or choose_cpu or restricted_isa"]
    proc = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and "failed" not in proc.stdout, proc.stdout[-2000:]


def test_cpu_path_choice_on_canned_avx2_cpuinfo(monkeypatch):
    """The whole selection (not only ``choose_cpu``) sees the AVX2 EPYC's cpuinfo: no int8 dot."""
    monkeypatch.setattr(cpucaps, "_CAPS", cpucaps.read_cpu_caps(AVX2_EPYC))
    sel = backends.selection("cpu")
    assert sel.caps.int8_dot is False and "no avx512_vnni" in sel.describe()
    assert sel.path in backends.CPU_PATHS and sel.probe[sel.path].exact


def _probe(**kw) -> dict[str, cpucaps.PathProbe]:
    out = {}
    for p in backends.CPU_PATHS:
        exact, ms = kw.get(p, (True, 1.0))
        out[p] = cpucaps.PathProbe(p, True, exact=exact, ms=ms if exact else None)
    out["fp32"] = cpucaps.PathProbe("fp32 F.linear", True, ms=10.0, vs_fp32=1.0)
    return out


def test_parse_cpuinfo_avx2_and_vnni():
    model, flags = cpucaps.parse_cpuinfo(AVX2_EPYC)
    assert model == "AMD EPYC 7B12" and flags == ("avx2", "fma")
    caps = cpucaps.read_cpu_caps(AVX2_EPYC)
    assert caps.int8_dot is False and "no avx512_vnni" in caps.summary()
    model, flags = cpucaps.parse_cpuinfo(VNNI_XEON)  # first CPU's flags only
    assert model.startswith("Intel(R) Xeon(R) Platinum 8375C") and "avx512_vnni" in flags and "avx512bw" in flags
    assert cpucaps.read_cpu_caps(VNNI_XEON).int8_dot is True
    assert cpucaps.read_cpu_caps("").flags is None and cpucaps.read_cpu_caps("").int8_dot is None


def test_choose_cpu_avx2_takes_the_fastest_exact_onednn_path():
    caps = cpucaps.read_cpu_caps(AVX2_EPYC)
    # the AVX2 machine of issue 15: _int_mm exact but a ~125x reference loop; plain oneDNN saturates
    probe = _probe(int_mm=(True, 780.0), onednn=(False, None), **{"onednn-split": (True, 4.0)})
    path, why = backends.choose_cpu(caps, probe, None)
    assert path == "onednn-split" and "no VNNI/AMX" in why and "int_mm 780.0 ms" in why
    # if int_mm were fast on it, it still is not preferred without an int8 dot: fastest wins
    path, _ = backends.choose_cpu(caps, _probe(int_mm=(True, 3.0), onednn=(True, 2.0), **{"onednn-split": (True, 2.5)}), None)
    assert path == "onednn"


def test_choose_cpu_vnni_keeps_int_mm_within_25_percent():
    caps = cpucaps.read_cpu_caps(VNNI_XEON)
    assert backends.choose_cpu(caps, _probe(int_mm=(True, 1.2), onednn=(True, 1.0)), None)[0] == "int_mm"
    assert backends.choose_cpu(caps, _probe(int_mm=(True, 1.3), onednn=(True, 1.0)), None)[0] == "onednn"
    assert backends.choose_cpu(caps, _probe(int_mm=(False, None), onednn=(True, 1.0)), None)[0] == "onednn"


def test_choose_cpu_forced_and_refused():
    caps = cpucaps.read_cpu_caps(AVX2_EPYC)
    probe = _probe(onednn=(False, None))
    assert backends.choose_cpu(caps, probe, "int_mm") == ("int_mm", f"forced by {backends.ENV}")
    with pytest.raises(QBenchError, match="not exact on this CPU"):
        backends.choose_cpu(caps, probe, "onednn")
    with pytest.raises(QBenchError, match="not available"):
        backends.choose_cpu(caps, {"fp32": probe["fp32"]}, "onednn")
    with pytest.raises(QBenchError, match="no exact int8 GEMM"):
        backends.choose_cpu(caps, _probe(int_mm=(False, None), onednn=(False, None), **{"onednn-split": (False, None)}), None)


def test_env_forcing_and_unknown_path(monkeypatch):
    monkeypatch.setenv(backends.ENV, "onednn-split")
    sel = backends.selection("cpu")
    assert sel.path == "onednn-split" and sel.forced and "onednn-split" in sel.describe()
    monkeypatch.setenv(backends.ENV, "fastest")
    with pytest.raises(QBenchError, match="unknown CPU path"):
        backends.selection("cpu")
    monkeypatch.setenv(backends.ENV, "triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(QBenchError, match="needs a CUDA device"):
        backends.selection("cpu")


def _run_cli(capsys, tmp_path, *extra):
    argv = ["run", "--model", "tiny-lcm", "--method", "naive", "--bits", "W8A8", "--mode", "kernel", "--prompts", "coco2017:1",
            "--metrics", "latency", "--out-dir", str(tmp_path), *extra]
    code = main(argv)
    return code, *capsys.readouterr()


@pytest.mark.parametrize("value,needle", [("bogus", "unknown CPU path"), ("triton", "needs a CUDA device")])
def test_cli_refuses_bad_kernel_path_in_one_line(capsys, tmp_path, monkeypatch, value, needle):
    monkeypatch.setenv(backends.ENV, value)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    code, _, err = _run_cli(capsys, tmp_path)
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert code != 0 and len(lines) == 1 and lines[0].startswith("qbench: error:") and needle in lines[0], err
    assert not list(tmp_path.rglob("*.png"))  # refused in the preflight, before any image


def test_run_records_path_and_cpu_capability(make_cfg):
    from qbench.harness import run

    res = run(make_cfg(method="naive", bits="W4A8", mode="kernel", prompts="coco2017:1", batch_size=1), show_progress=False)
    sel = backends.selection("cpu")
    rep = res.method_report
    assert rep["kernel_path"].startswith(f"cpu {sel.path}:") and "torch capability" in rep["kernel_path"]
    k = rep["components"]["denoiser"]["kernel"]
    assert k["path"] == sel.path and k["cpu"]["flags"] is not None and set(backends.CPU_PATHS) <= set(k["probe"])
    assert sel.path in res.latency["kind"]
    size = res.size
    assert size["resident_with_cache_bytes"] == size["resident_bytes"] + size["kernel_cache_bytes"]
    if sel.path.startswith("onednn"):
        assert size["kernel_cache_bytes"] > 0


def test_restricted_isa_avoids_saturating_paths(tmp_path):
    """With oneDNN limited to AVX2 (no VNNI: ``VPMADDUBSW`` saturates), auto selection must pick an
    exact path and give int_mm's (unrestricted, VNNI) bits. What this emulates: oneDNN's ISA only;
    /proc/cpuinfo still shows VNNI, so ``_int_mm`` calls the restricted oneDNN (inexact) instead
    of the reference loop a real AVX2-only CPU gets."""
    if not cpucaps.cpu_caps().int8_dot or EMULATED_AVX2:
        pytest.skip("needs an unrestricted VNNI CPU to compute the reference in this process")
    layer, x = _layer("W8A8", "asym")
    with torch.inference_mode(), backends.forced_path("int_mm"):
        ref = layer(x)
    code = (
        "import json, sys, torch\n"
        "sys.path.insert(0, 'tests')\n"
        "from test_kernel_backends import _layer\n"
        "from qbench.quant import backends\n"
        "layer, x = _layer('W8A8', 'asym')\n"
        "with torch.inference_mode(): y = layer(x)\n"
        "sel = backends.selection('cpu')\n"
        "torch.save(y, sys.argv[1])\n"
        "print(json.dumps({'path': sel.path, 'exact': {p: r.exact for p, r in sel.probe.items()}}))\n"
    )
    out = str(tmp_path / "y.pt")
    env = dict(os.environ, ONEDNN_MAX_CPU_ISA="AVX2", OMP_WAIT_POLICY="PASSIVE")
    env.pop(backends.ENV, None)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-c", code, out], env=env, cwd=root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    y = torch.load(out)
    assert info["exact"]["onednn"] is False and info["exact"]["onednn-split"] is True, info
    assert info["path"] == "onednn-split" and torch.equal(y, ref)
