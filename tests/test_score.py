"""``qbench score`` (issue 20 §4): images made elsewhere, scored with the model's metrics, paired
with the stored fp run (or a reference folder / file) and stored as a run that compare, report and
export-results treat like any other. The toy world: fp and naive W4A8 runs of toy-flux, the naive
run's images scored again from the folder `qbench export-results` points at, from its JSONL, from a
nunchaku-style folder and from a ModelOpt eval JSON; then every bad input, one line each."""
from __future__ import annotations

import json
import os
import shutil

import pytest

from qbench.cli import main

PROMPTS = "toy:6"
METRICS = "clip,psnr,ssim,toy-acc"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """fp and naive W4A8 runs of toy-flux and the naive run's per-image export."""
    from qbench import harness
    from qbench.config import RunConfig

    out = str(tmp_path_factory.mktemp("score") / "reports")
    cfg = RunConfig(model="toy-flux", prompts=PROMPTS, batch_size=3, out_dir=out, latency_warmup=0, latency_repeats=1, metrics=METRICS.split(","))
    fp = harness.run(cfg, show_progress=False)
    naive = harness.run(cfg.replace(method="naive", bits="W4A8"), show_progress=False)
    jsonl = os.path.join(out, "naive.jsonl")
    assert main(["export-results", "--out-dir", out, "--runs", naive.run_id, "-o", jsonl]) == 0
    with open(jsonl, encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    return {"out": out, "fp": fp, "naive": naive, "jsonl": jsonl, "records": records}


def _score(world, capsys, *args):
    capsys.readouterr()
    code = main(["score", *args, "--model", "toy-flux", "--prompts", PROMPTS, "--out-dir", world["out"], "--metrics", METRICS, "--no-progress", "--json"])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 else None), err


def _compare(world, capsys, *runs):
    capsys.readouterr()
    assert main(["compare", "--out-dir", world["out"], "--runs", ",".join(runs), "--json"]) == 0
    return {r["run_id"]: r for r in json.loads(capsys.readouterr().out)["toy-flux"]}


def _same_numbers(a, b):
    for name in ("clip", "psnr", "ssim", "toy-acc"):
        assert a["metrics"][name]["value"] == pytest.approx(b["metrics"][name]["value"], rel=1e-9, abs=1e-12), name


def _copy_as(world, folder, which="naive", name=lambda rec: rec["prompt_id"].rsplit("/", 1)[-1] + ".png"):
    """The run's images copied into ``folder`` under nunchaku-style names."""
    from qbench.results_export import image_paths
    from qbench.store import Store

    run = Store(os.path.join(world["out"], "qbench.sqlite"), create=False).get(world[which].run_id)
    os.makedirs(folder, exist_ok=True)
    for rec in world["records"]:
        shutil.copy(image_paths(run)[rec["prompt_id"]], os.path.join(folder, name(rec)))
    return folder


def test_scoring_the_exported_folder_pairs_with_the_fp_run_like_the_run_itself(world, capsys):
    folder = os.path.dirname(world["records"][0]["image_path"])
    assert all(os.path.dirname(r["image_path"]) == folder for r in world["records"])
    code, res, err = _score(world, capsys, folder, "--label", "w4a8-elsewhere")
    assert code == 0, err
    naive, fp = world["naive"].to_dict(), world["fp"]
    assert res["method"]["method"] == "images" and res["mode"] == "external" and res["label"] == "images w4a8-elsewhere"
    assert res["method_report"]["reference"]["run_id"] == fp.run_id and res["method_report"]["scored_from"]["layout"] == "qbench"
    assert res["sampling"] == naive["sampling"] and res["n_generated"] == 0
    assert res["latency"]["kind"].startswith("n/a") and res["size"]["deploy_bytes"] is None
    assert res["identity"]["files"]["images"] == res["method"]["options"]["digest"]
    assert any("made elsewhere" in n for n in res["notes"])
    _same_numbers(res, naive)
    rows = _compare(world, capsys, fp.run_id, naive["run_id"], res["run_id"])
    mine, theirs = rows[res["run_id"]], rows[naive["run_id"]]
    assert mine["baseline_run"] == fp.run_id and mine["latency_s"] is None and mine["size_bytes"] is None
    assert set(mine["paired"]) == set(theirs["paired"]) == {"clip", "toy-acc"}  # psnr, ssim already compare with fp
    for name, d in theirs["paired"].items():
        assert mine["paired"][name]["n"] == d["n"] == 6
        assert mine["paired"][name]["mean"] == pytest.approx(d["mean"], rel=1e-9, abs=1e-12)
        assert mine["paired"][name]["se"] == pytest.approx(d["se"], rel=1e-9, abs=1e-12)
    # export-results and the report see the scored run's own files
    capsys.readouterr()
    assert main(["export-results", "--out-dir", world["out"], "--runs", res["run_id"]]) == 0
    recs = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [r["image_path"] for r in recs] == [r["image_path"] for r in world["records"]]
    assert main(["report", "--out-dir", world["out"], "--runs", f"{fp.run_id},{res['run_id']}", "--format", "md", "--no-plots"]) == 0
    with open(os.path.join(world["out"], "report-toy-flux.md"), encoding="utf-8") as f:
        md = f.read()
    assert "images w4a8-elsewhere" in md and "n/a: images made elsewhere" in md


def test_the_export_results_jsonl_and_a_second_folder_read_the_same(world, capsys):
    code, res, err = _score(world, capsys, world["jsonl"])
    assert code == 0, err
    assert res["method_report"]["scored_from"]["layout"] == "records"
    _same_numbers(res, world["naive"].to_dict())
    first = res["method"]["options"]["digest"]
    code, again, _ = _score(world, capsys, os.path.dirname(world["records"][0]["image_path"]))
    assert again["method"]["options"]["digest"] == first  # the digest is the images' content by prompt id, not where they lie


def test_nunchaku_folders_and_modelopt_json(world, capsys, tmp_path):
    q = _copy_as(world, str(tmp_path / "int4" / "TOY"))
    ref = _copy_as(world, str(tmp_path / "bf16" / "TOY"), which="fp")
    code, res, err = _score(world, capsys, q, "--reference", ref, "--label", "nunchaku-int4")
    assert code == 0, err
    assert res["method_report"]["scored_from"]["layout"] == "nunchaku" and res["method_report"]["reference"]["kind"] == "folder or file"
    _same_numbers(res, world["naive"].to_dict())
    assert res["sampling"]["resolution"] == 32 and res["sampling"]["dtype"] is None  # no fp run: its own settings, unknown ones None
    code, _, err = _score(world, capsys, str(tmp_path / "int4"))  # the output root, not the dataset folder
    assert code == 2 and "nunchaku writes one per dataset" in err and len(err.strip().splitlines()) == 1
    # ModelOpt's eval JSON: [{"prompt": TEXT, "images": {MODEL: PATH}}], paths relative to the file
    entries = [{"prompt": r["prompt_text"], "images": {"int4": os.path.relpath(os.path.join(q, r["prompt_id"].rsplit("/", 1)[-1] + ".png"), tmp_path),
                                                       "bf16": os.path.join(ref, r["prompt_id"].rsplit("/", 1)[-1] + ".png")}} for r in world["records"]]
    with open(tmp_path / "eval.json", "w", encoding="utf-8") as f:
        json.dump(entries, f)
    code, res, err = _score(world, capsys, str(tmp_path / "eval.json") + "#int4", "--reference", str(tmp_path / "eval.json") + "#bf16")
    assert code == 0, err
    assert res["method_report"]["scored_from"]["layout"] == "modelopt-json" and res["label"] == "images eval.json#int4"
    _same_numbers(res, world["naive"].to_dict())
    code, _, err = _score(world, capsys, str(tmp_path / "eval.json"))
    assert code == 2 and "holds the images of 2 models (bf16, int4)" in err


def _bad(world, capsys, *args):
    from qbench.store import Store

    store = Store(os.path.join(world["out"], "qbench.sqlite"), create=False)
    before = len(store.runs(status=None))
    code, _, err = _score(world, capsys, *args)
    assert code == 2, err
    assert len(store.runs(status=None)) == before  # refused before a row was opened
    assert "Traceback" not in err
    return err


def test_bad_inputs_one_line_each(world, capsys, tmp_path):
    from PIL import Image

    good = _copy_as(world, str(tmp_path / "good"))
    assert "no such folder or file" in _bad(world, capsys, str(tmp_path / "nope"))
    assert "--reference '/nope/fp': no such folder or file" in _bad(world, capsys, good, "--reference", "/nope/fp")
    naive_id = world["naive"].run_id
    assert f"--reference run {naive_id} cannot be the reference: it is a naive W4A8" in _bad(world, capsys, good, "--reference", naive_id[-6:])
    missing = shutil.copytree(good, tmp_path / "missing")
    os.unlink(missing / "3.png")
    assert "1 of 6 prompts have no image (e.g. 'toy-test/3')" in _bad(world, capsys, str(missing))
    twice = shutil.copytree(good, tmp_path / "twice")
    shutil.copy(twice / "2.png", twice / "toy-test_2.png")
    assert "1 prompt(s) have several images (ambiguous): 'toy-test/2'" in _bad(world, capsys, str(twice))
    broken = shutil.copytree(good, tmp_path / "broken")
    (broken / "4.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    assert "1 unreadable image(s)" in _bad(world, capsys, str(broken))
    mixed = shutil.copytree(good, tmp_path / "mixed")
    Image.open(mixed / "1.png").resize((16, 16)).save(mixed / "1.png")
    assert "images of different sizes: 32x32 (5" in _bad(world, capsys, str(mixed))
    small = tmp_path / "small"
    small.mkdir()
    for f in os.listdir(good):
        Image.open(os.path.join(good, f)).resize((16, 16)).save(small / f)
    err = _bad(world, capsys, str(small))
    assert "are 16x16 but the reference images" in err and len(err.strip().splitlines()) == 1
    qbench_folder = os.path.dirname(world["records"][0]["image_path"])
    assert "not made with qbench's seed rule (--seed 7 + prompt index)" in _bad(world, capsys, qbench_folder, "--seed", "7")
    several = _bad(world, capsys, str(missing), "--reference", str(broken))  # both reported, one line each
    assert "2 problems" in several and "no image" in several and "unreadable" in several
    # extra images are reported and not scored
    extra = shutil.copytree(good, tmp_path / "extra")
    shutil.copy(extra / "0.png", extra / "not-a-prompt.png")
    code, res, err = _score(world, capsys, str(extra))
    assert code == 0, err
    assert res["method_report"]["scored_from"]["extra"] == {"n": 1, "examples": ["not-a-prompt.png"]} and res["n_images"] == 6


def test_without_a_reference_fidelity_metrics_are_refused_and_images_never_runs(tmp_path, capsys):
    out = str(tmp_path / "empty")
    os.makedirs(tmp_path / "imgs")
    from PIL import Image

    for i in range(2):
        Image.new("RGB", (32, 32), (i * 60, 0, 0)).save(tmp_path / "imgs" / f"{i}.png")
    code = main(["score", str(tmp_path / "imgs"), "--model", "toy-flux", "--prompts", "toy:2", "--out-dir", out, "--metrics", "psnr", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "compare with full-precision images, and there is no stored fp run of toy-flux" in err
    code = main(["score", str(tmp_path / "imgs"), "--model", "toy-flux", "--prompts", "toy:2", "--out-dir", out, "--metrics", "toy-acc", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    code = main(["run", "--method", "images", "--out-dir", out, "--metrics", ""])
    err = capsys.readouterr().err
    assert code == 2 and "qbench score" in err and len(err.strip().splitlines()) == 1


def test_two_stored_fp_runs_with_other_settings_must_be_named(world, capsys, tmp_path):
    from qbench import harness
    from qbench.config import RunConfig

    out = str(tmp_path / "reports")
    os.makedirs(out)
    shutil.copy(os.path.join(world["out"], "qbench.sqlite"), out)
    other = harness.run(RunConfig(model="toy-flux", prompts=PROMPTS, batch_size=2, out_dir=out, latency_warmup=0, latency_repeats=1,
                                  metrics=["toy-acc"]), show_progress=False)
    folder = os.path.dirname(world["records"][0]["image_path"])
    args = ["score", folder, "--model", "toy-flux", "--prompts", PROMPTS, "--out-dir", out, "--metrics", "psnr", "--no-progress", "--json"]
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "2 stored fp runs of toy-flux on toy:6 differ in their settings (batch size" in err and "--reference RUN" in err
    assert main(args + ["--reference", world["fp"].run_id]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["method_report"]["reference"]["run_id"] == world["fp"].run_id != other.run_id
    assert res["metrics"]["psnr"]["value"] == pytest.approx(world["naive"].metrics["psnr"]["value"], rel=1e-9)
