"""CLI: each error path gives one line and a non-zero exit; list/compare/show work."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from qbench.cli import main


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _one_line_error(err):
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("qbench: error:"), err
    return lines[0]


def test_list_models_shows_real_and_twins(capsys):
    code, out, _ = _run(capsys, "list", "models")
    assert code == 0
    for name in ["lcm", "pcm", "sdxl-turbo", "flux-schnell", "tiny-lcm", "tiny-pcm", "tiny-sdxl-turbo", "tiny-flux"]:
        assert name in out
    code, out, _ = _run(capsys, "list", "--json")
    data = json.loads(out)
    assert {"models", "methods", "metrics", "prompts"} <= set(data)


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["run", "--model", "flux-shnell"], "did you mean 'flux-schnell'?"),
        (["run", "--method", "qshed"], "unknown method 'qshed'"),
        (["run", "--metrics", "clipp"], "unknown metric 'clipp'"),
        (["run", "--prompts", "/nonexistent/prompts.txt"], "does not exist"),
        (["run", "--prompts", "coco2017:0"], "positive integer"),
        (["run", "--batch-size", "0"], "batch_size must be >= 1"),
        (["run", "--batch-size", "two"], "invalid int value"),
        (["run", "--mode", "fake"], "invalid choice"),
        (["run", "--option", "novalue"], "KEY=VALUE"),
        (["show", "nosuchrun"], "no results database"),  # nothing run yet: and nothing is created
    ],
)
def test_error_paths_one_line(capsys, tmp_path, argv, needle):
    argv = argv + (["--out-dir", str(tmp_path)] if argv[0] in ("run", "show") else [])
    if argv[0] == "run" and "--metrics" not in argv:
        argv += ["--metrics", "latency"]  # a system measurement: no metric network involved
    try:
        code = main(argv)
    except SystemExit as e:  # argparse errors
        code = e.code
    _, err = capsys.readouterr()
    assert code != 0
    assert needle in _one_line_error(err)


def test_empty_prompt_file(capsys, tmp_path):
    f = tmp_path / "empty.txt"
    f.write_text("\n")
    code, _, err = _run(capsys, "run", "--prompts", str(f), "--out-dir", str(tmp_path / "r"), "--metrics", "")
    assert code != 0 and "empty" in _one_line_error(err)


def test_unwritable_out_dir(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = _run(capsys, "run", "--out-dir", str(blocker / "sub"), "--metrics", "")
    assert code != 0 and "not writable" in _one_line_error(err)


def test_compare_without_runs(capsys, tmp_path):
    code, _, err = _run(capsys, "compare", "--out-dir", str(tmp_path))
    assert code != 0 and "no results database" in _one_line_error(err)
    assert list(tmp_path.iterdir()) == []  # a read creates nothing


def test_run_compare_show_json(capsys, tmp_path):
    out_dir = str(tmp_path / "r")
    common = ["--model", "tiny-sdxl-turbo", "--prompts", "coco2017:2", "--out-dir", out_dir, "--metrics", "", "--latency-repeats", "1", "--latency-warmup", "0", "--no-progress"]
    code, out, err = _run(capsys, "run", *common, "--json")
    assert code == 0, err
    res = json.loads(out)
    assert res["n_images"] == 2 and res["n_generated"] == 2 and res["model_source"].startswith("random tiny twin")
    code, out, _ = _run(capsys, "run", *common)  # second run: everything from the image cache
    assert code == 0 and "0 generated" in out.replace("\n", " ")
    code, out, _ = _run(capsys, "compare", "--model", "tiny-sdxl-turbo", "--out-dir", out_dir, "--json")
    rows = json.loads(out)["tiny-sdxl-turbo"]
    assert len(rows) == 1 and rows[0]["method"] == "fp"  # one row per method/bit setting
    code, out, _ = _run(capsys, "compare", "--model", "tiny-sdxl-turbo", "--out-dir", out_dir)
    assert code == 0 and "qbench compare" in out and "random tiny twin" in out
    code, out, _ = _run(capsys, "show", res["run_id"], "--out-dir", out_dir, "--json")
    assert json.loads(out)["status"] == "done"


def test_ctrl_c_keeps_images_and_resumes(tmp_path):
    """SIGINT in the middle of generation: one line, exit 130, the images made so far stay, and
    re-running generates only the missing ones."""
    out_dir = tmp_path / "r"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    argv = [sys.executable, "-m", "qbench.cli", "run", "--model", "tiny-lcm", "--prompts", "coco2017:40", "--batch-size", "1", "--out-dir", str(out_dir), "--metrics", "", "--no-progress", "--latency-repeats", "1", "--latency-warmup", "0"]
    # a child started from a background job inherits SIGINT=ignored, and Python then never raises
    # KeyboardInterrupt; restore the default so the test sends what a terminal's Ctrl-C sends
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 240
    pngs = []
    while time.time() < deadline and len(pngs) < 2:
        time.sleep(0.5)
        pngs = list(out_dir.rglob("*.png"))
        assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    line = _one_line_error(err.replace("qbench: interrupted", "qbench: error: interrupted"))
    assert "interrupted" in line
    kept = len(list(out_dir.rglob("*.png")))
    assert 2 <= kept < 40
    from qbench.store import Store

    runs = Store(str(out_dir / "qbench.sqlite")).runs(status=None)
    assert [r["status"] for r in runs] == ["interrupted"]
    # resume on fewer prompts that are all cached: nothing is regenerated
    res = subprocess.run(argv[:7] + [f"coco2017:{kept}"] + argv[8:] + ["--json"], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["n_generated"] == 0


def test_report_writes_markdown_and_grid(capsys, tmp_path):
    out_dir = str(tmp_path / "r")
    common = ["--model", "tiny-flux", "--prompts", "coco2017:2", "--out-dir", out_dir, "--metrics", "", "--latency-repeats", "1", "--latency-warmup", "0", "--no-progress"]
    assert _run(capsys, "run", *common)[0] == 0
    code, out, err = _run(capsys, "report", "--out-dir", out_dir)
    assert code == 0, err
    md = out.strip().splitlines()[0]
    text = open(md).read()
    assert "| fp (baseline) |" in text and "random tiny twin" in text and "grid.png" in text
    assert os.path.exists(os.path.join(out_dir, "report-tiny-flux-grid.png"))


def _start_run_and_wait_for_images(out_dir, n_png=2):
    """A `qbench run` subprocess on 40 tiny-lcm prompts, returned once ``n_png`` images exist."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    argv = [sys.executable, "-m", "qbench.cli", "run", "--model", "tiny-lcm", "--prompts", "coco2017:40", "--batch-size", "1", "--out-dir", str(out_dir),
            "--metrics", "", "--no-progress", "--latency-repeats", "1", "--latency-warmup", "0"]
    # a child started from a background job may inherit SIGINT/SIGTERM handlers; give it the defaults
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: [signal.signal(s, signal.SIG_DFL) for s in (signal.SIGINT, signal.SIGTERM)])
    deadline = time.time() + 240
    while time.time() < deadline and len(list(out_dir.rglob("*.png"))) < n_png:
        time.sleep(0.5)
        assert proc.poll() is None, proc.communicate()
    return proc


def test_sigterm_marks_the_run_interrupted_and_keeps_images(tmp_path):
    """What `timeout`, a CI cancel or Slurm send: handled like Ctrl-C, exit 128 + 15."""
    out_dir = tmp_path / "r"
    proc = _start_run_and_wait_for_images(out_dir)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    line = _one_line_error(err)
    assert "SIGTERM" in line and "interrupted" in line and "resume" in line
    assert 2 <= len(list(out_dir.rglob("*.png"))) < 40
    from qbench.store import Store

    (run,) = Store(str(out_dir / "qbench.sqlite")).runs(status=None)
    assert run["status"] == "interrupted" and run["error"] == "SIGTERM"


def test_killed_run_is_shown_as_stale(capsys, monkeypatch, tmp_path):
    """kill -9 leaves the stored status `running`; readers see that its process is gone."""
    out_dir = tmp_path / "r"
    proc = _start_run_and_wait_for_images(out_dir, n_png=1)
    proc.kill()
    proc.communicate(timeout=60)
    monkeypatch.setenv("COLUMNS", "120")
    code, out, _ = _run(capsys, "runs", "--out-dir", str(out_dir))
    assert code == 0 and "stale" in out and "has exited without finishing" in out.replace("\n", " ")
    code, out, _ = _run(capsys, "runs", "--out-dir", str(out_dir), "--status", "stale", "--json")
    (run,) = json.loads(out)
    code, out, _ = _run(capsys, "show", run["id"][-6:], "--out-dir", str(out_dir))
    assert code == 0 and "status: stale" in out
    code, _, err = _run(capsys, "compare", "--out-dir", str(out_dir))
    assert code != 0 and "1 stale" in _one_line_error(err)


@pytest.mark.parametrize("command,needle", [("zoo", "usage: qbench zoo"), ("bench-kernels", "usage: qbench bench-kernels")])
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_delegated_commands_own_their_help(capsys, command, needle, flag):
    with pytest.raises(SystemExit) as e:  # argparse's --help exits 0 after printing
        main([command, flag])
    out, err = capsys.readouterr()
    assert e.value.code == 0 and needle in out and "--" in out and not err


def test_delegated_commands_get_leading_flags_and_give_one_line_errors(capsys):
    code, _, err = _run(capsys, "bench-kernels", "--bits", "W9", "--only", "nothing")
    assert code == 2 and "bad bit spec 'W9'" in _one_line_error(err)
    with pytest.raises(SystemExit) as e:
        main(["zoo", "train", "vae", "--pairs", "x"])
    assert e.value.code == 2 and "invalid float value: 'x'" in _one_line_error(capsys.readouterr().err)
    code, _, err = _run(capsys, "zoo", "train", "unet", "--pairs", "1.5")
    assert code == 2 and "pairs must be a fraction in [0, 1]" in _one_line_error(err)


def test_calibrate_dry_run_loads_and_writes_nothing(capsys, tmp_path):
    """``qbench calibrate --dry-run`` prints the calibration's plan and cost and stops there (it
    once ignored the flag and ran a 4-minute MixDQ calibration)."""
    out = tmp_path / "o"
    code = main(["calibrate", "--model", "toy-flux", "--method", "mixdq", "--bits", "W4A8", "--out-dir", str(out), "--dry-run", "--json"])
    assert code == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["method"].startswith("mixdq") and plan["calibration"]["images"] > 0
    assert "n_prompts" not in plan and "fp_reference_images" not in plan and plan["evaluation"].startswith("none")  # the calibration's plan only
    assert not (out / "mixdq").exists() and not (out / "cache").exists()
