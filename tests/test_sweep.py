"""Sweeps (qbench sweep FILE, multi-valued qbench run flags) and paper-scale planning (qbench plan)."""
from __future__ import annotations

import textwrap

import pytest

from qbench.cli import main
from qbench.errors import ConfigError, QBenchError
from qbench.sweep import expand, load_sweep, split_values


def _write(tmp_path, text, name="s.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return str(p)


TOY = """
name: mini
models: [toy-flux]
methods:
  - fp
  - {method: naive, bits: [W8A8, W4A8]}
run:
  prompts: toy:3
  metrics: [psnr]
  batch_size: 3
  latency_warmup: 0
  latency_repeats: 1
  out_dir: OUT
"""


def test_cross_product_and_validation(tmp_path):
    cells = expand(["toy-flux", "toy-lcm"], [{"method": "fp"}, {"method": "naive", "bits": ["W4A8", "W8A8"]}], [1, 2], {})
    assert len(cells) == 2 * 3 * 2 and cells[0].model == "toy-flux" and cells[1].seed == 2 and cells[-1].bits == "W8A8"
    assert split_values(["W4A8,W8A8", "W2A8", "W4A8"]) == ["W4A8", "W8A8", "W2A8"]
    for bad, needle in [("models: [toy-flux]\nmethods: [fp]\nfoo: 1\n", "unknown key(s) foo"),
                        ("models: [toy-flux]\nmethods: [{bits: [W4A8]}]\n", "mapping with 'method'"),
                        ("models: [toy-flux]\nmethods: [fp]\nrun: {model: x}\n", "belongs in models"),
                        ("models: []\nmethods: [fp]\n", "no models"),
                        ("models: [toy-flux]\nmethods: [fp]\nrun: {batch_size: two}\n", "batch_size must be an integer"),
                        ("[1, 2\n", "cannot parse")]:
        with pytest.raises(ConfigError) as e:
            load_sweep(_write(tmp_path, bad))
        assert needle in str(e.value)
    with pytest.raises(QBenchError, match="does not exist"):
        load_sweep(str(tmp_path / "nope.yaml"))


def test_sweep_runs_every_cell_then_resumes_without_redoing_finished_cells(tmp_path, capsys, monkeypatch):
    from qbench import harness

    path = _write(tmp_path, TOY.replace("OUT", str(tmp_path / "out")))
    real_run = harness.run
    calls = []

    def dying(cfg, **kw):  # the sweep is killed while running its third cell
        calls.append((cfg.method, cfg.bits))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_run(cfg, **kw)

    monkeypatch.setattr(harness, "run", dying)
    assert main(["sweep", path, "--no-progress"]) != 0
    assert calls == [("fp", None), ("naive", "W8A8"), ("naive", "W4A8")]
    monkeypatch.setattr(harness, "run", lambda cfg, **kw: (calls.append((cfg.method, cfg.bits)), real_run(cfg, **kw))[1])
    capsys.readouterr()
    assert main(["sweep", path, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert calls[3:] == [("naive", "W4A8")], "finished cells are skipped; only the killed one runs again"
    assert out.count("finished (run") == 2 and "1 run, 2 already finished, 0 failed" in out
    assert "qbench compare — toy-flux" in out and "naive W4A8" in out
    report = tmp_path / "out" / "report-toy-flux.md"  # the sweep ends with its report
    assert report.exists() and "naive W4A8" in report.read_text()


def test_multi_valued_run_flags_make_a_sweep(tmp_path, capsys):
    code = main(["run", "--model", "toy-flux", "--method", "fp,naive", "--bits", "W8A8", "--bits", "W4A8", "--prompts", "toy:2",
                 "--metrics", "psnr", "--latency-warmup", "0", "--latency-repeats", "1", "--out-dir", str(tmp_path), "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0 and "sweep command line: 3 cells" in out  # fp once (it takes no bits), naive x 2
    assert "3 run, 0 already finished" in out
    code = main(["calibrate", "--method", "qsched", "--bits", "W4A8,W8A8", "--model", "toy-flux"])
    assert code != 0 and "--bits takes one value with this command" in capsys.readouterr().err


def test_plan_counts_flops_images_and_time(tmp_path):
    from qbench.costs import image_flops, plan_sweep
    from qbench.models.loader import get_spec

    lcm = image_flops(get_spec("lcm"))
    # LCM: 4 steps, its guidance is an embedding (no CFG batch doubling): 4 forwards + 1 decode
    assert lcm["forwards"] == 4 and lcm["per_image"] == 4 * lcm["denoiser_forward"] + lcm["vae_decode"]
    assert 0.6e12 < lcm["denoiser_forward"] < 1.0e12 and 0.85e9 < lcm["denoiser_params"] < 0.9e9  # SD1.5 UNet: 860M params
    flux = image_flops(get_spec("flux-schnell"))
    assert 11.5e9 < flux["denoiser_params"] < 12.5e9 and flux["denoiser_forward"] > 50 * lcm["denoiser_forward"]
    cfg_sd = image_flops(get_spec("pcm"), guidance=3.0)
    assert cfg_sd["forwards"] == 2 * 8  # PCM with guidance > 1: classifier-free guidance doubles the batch
    sweep = load_sweep(_write(tmp_path, """
        models: [lcm]
        methods: [fp, {method: naive, bits: [W4A8]}]
        run: {prompts: coco2017:100, metrics: [psnr]}
    """))
    p1 = plan_sweep(sweep, gpus=1, gpu="a100", mfu=0.5)
    p8 = plan_sweep(sweep, gpus=8, gpu="a100", mfu=0.5)
    fp, naive = p1["cells"]
    assert fp["images"] == 100 and naive["images"] == 100, "the fp images are naive's references: counted once"
    assert abs(p1["total"]["gpu_hours"] - 200 * lcm["per_image"] / (156e12) / 3600) < 1e-9
    assert abs(p8["total"]["wall_h"] * 8 - p8["total"]["gpu_hours"]) < 1e-12
    with pytest.raises(ConfigError, match="runs in seconds on a CPU"):
        plan_sweep(load_sweep(_write(tmp_path, "models: [toy-flux]\nmethods: [fp]\n", "t.yaml")))
    with pytest.raises(ConfigError, match="unknown GPU"):
        plan_sweep(sweep, gpu="tpu")


def test_committed_sweep_files_load_and_plan():
    """The sweep files the README points at stay valid: every cell passes the sweep checks, and
    the paper grid plans (fp references shared; calibrating methods count their images)."""
    import pathlib

    from qbench.costs import plan_sweep

    root = pathlib.Path(__file__).resolve().parents[1] / "sweeps"
    toy = load_sweep(str(root / "toy.yaml"))
    assert {c.method for c in toy.cells} >= {"fp", "naive", "qsched"}
    paper = plan_sweep(load_sweep(str(root / "paper.yaml")), gpus=8)
    methods = {c["method"].split()[0] for c in paper["cells"]}
    assert {"fp", "qsched/naive", "mixdq", "qsched/mixdq"} <= methods
    assert all(c["calibration_images"] > 0 for c in paper["cells"] if c["method"].startswith(("mixdq", "qsched")))
    assert paper["total"]["images"] == sum(c["images"] for c in paper["cells"])


@pytest.mark.parametrize("width", [50, 80, 120, 200])
def test_plan_table_never_cuts_a_number(width):
    """`qbench plan` at any terminal width: no value cut with an ellipsis, every cell named."""
    import io

    from rich.console import Console

    from qbench.tables import print_plan_table

    cell = {"model": "flux-schnell", "method": "qsched/mixdq W4A8 simulate", "prompts": 30000, "images": 30000, "calibration_images": 4000,
            "forwards": 136000, "pflops": 9803.5, "gpu_hours": 6.9, "wall_h": 0.9, "tflops_per_image": 288.3}
    total = {"images": 960000, "calibration_images": 67112, "forwards": 5135560, "pflops": 80083.1, "gpu_hours": 56.2, "wall_h": 7.0}
    plan = {"cells": [cell], "total": total, "gpus": 8, "gpu": "h100", "effective_tflops": 396.0, "assumptions": "FLOPs counted on the meta device"}
    buf = io.StringIO()
    print_plan_table(plan, Console(file=buf, width=width, force_terminal=False))
    out = buf.getvalue()
    assert "…" not in out and "flux-schnell" in out and "56.2" in out and "7.0" in out
    # exact counts only in the wide table, used where it fits whole (121 columns here: not at 120)
    assert ("960k" if width <= 120 else "960,000") in out
    assert all(len(line) <= width for line in out.splitlines()) and "qsched/mixdq" in out  # no word broken, nothing past the edge
