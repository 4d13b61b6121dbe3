"""The silent wrong answers of issue 19, each reproduced end to end and now correct.

1. a sweep re-run after the prompt file's text changed runs the cell again (was: "finished, skipped");
2. FID reference statistics follow the images' content (was: file name + size), .tif files are read
   and a subfolder is reported, not silently skipped;
3. a Q-Sched calibration under other inputs (prompts, grid, scorer) calibrates anew and records its
   own inputs (was: another calibration's checkpoint, mislabelled);
4. a pre-quantized --model-path is refused as fp (was: its own full-precision baseline);
5. (adding a method file keys nothing else: tests/test_identity.py);
6. one prompt: no NaN in JSON, nothing "resolved"; a speed baseline from another CPU kind is refused.
"""
import json
import os
import shutil

import numpy as np
import pytest

from qbench.cli import main
from qbench.config import RunConfig
from qbench.errors import QBenchError


def _sweep_file(tmp_path, prompts):
    p = tmp_path / "s.yaml"
    p.write_text(f"models: [toy-flux]\nmethods: [fp]\nrun: {{prompts: {prompts}, metrics: [clip], batch_size: 2, "
                 f"latency_warmup: 0, latency_repeats: 1, out_dir: {tmp_path / 'r'}}}\n")
    return str(p)


def _runs(tmp_path):
    from qbench.store import Store

    return Store(str(tmp_path / "r" / "qbench.sqlite"), create=False).runs()


def test_1_sweep_reruns_a_cell_whose_prompt_text_changed(tmp_path, capsys):
    f = tmp_path / "mine.txt"
    f.write_text("a red circle on a white background\na blue square on a black background\n")
    path = _sweep_file(tmp_path, f)
    assert main(["sweep", path, "--no-progress"]) == 0
    assert main(["sweep", path, "--no-progress"]) == 0
    assert "finished" in capsys.readouterr().out  # same inputs: skipped
    first = _runs(tmp_path)
    assert len(first) == 1
    f.write_text("a green triangle on a gray background\na yellow circle on a white background\n")
    assert main(["sweep", path, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "skipped" not in out and "running" in out
    runs = _runs(tmp_path)
    assert len(runs) == 2 and runs[1]["result"]["identity"]["key"] != runs[0]["result"]["identity"]["key"]
    assert runs[1]["result"]["sampling"]["prompts_sha"] != runs[0]["result"]["sampling"]["prompts_sha"]


class _MeanColour:
    """A stand-in feature extractor (2048-d features from pixel statistics) on the real
    folder_stats code path: enough to tell one image from another."""

    protocol = "clean"
    batch_size = 2

    def __call__(self, images):
        feats = []
        for im in images:
            a = np.asarray(im, dtype=np.float64) / 255.0
            v = np.concatenate([a.mean(axis=(0, 1)), a.std(axis=(0, 1)), a[::4, ::4].ravel()])
            feats.append(np.resize(v, 2048))
        return np.stack(feats)


def _bmp(path, colour, size=16):
    from PIL import Image

    Image.new("RGB", (size, size), colour).save(path, format="BMP")


def test_2_fid_reference_statistics_follow_the_content(tmp_path):
    from qbench.metrics.fid import folder_stats

    ref = tmp_path / "ref"
    ref.mkdir()
    for i, c in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255), (9, 9, 9)]):
        _bmp(ref / f"{i}.bmp", c)
    cache = str(tmp_path / "cache")
    mu1, _, meta1 = folder_stats(str(ref), _MeanColour(), 16, None, cache, "toy:4", "w")
    assert meta1["cache"].startswith("written")
    mu1b, _, meta1b = folder_stats(str(ref), _MeanColour(), 16, None, cache, "toy:4", "w")
    assert meta1b["cache"].startswith("hit") and np.array_equal(mu1, mu1b)
    sizes = [os.path.getsize(ref / f"{i}.bmp") for i in range(2)]
    _bmp(ref / "0.bmp", (200, 200, 0))  # other images, same byte size
    _bmp(ref / "1.bmp", (0, 200, 200))
    assert [os.path.getsize(ref / f"{i}.bmp") for i in range(2)] == sizes
    mu2, _, meta2 = folder_stats(str(ref), _MeanColour(), 16, None, cache, "toy:4", "w")
    assert meta2["cache"].startswith("written") and not np.array_equal(mu1, mu2)
    # a .tif is an image; a subfolder and a text file are reported
    from PIL import Image

    Image.new("RGB", (16, 16), (1, 2, 3)).save(ref / "4.tif")
    (ref / "more").mkdir()
    (ref / "README.txt").write_text("x")
    _, _, meta3 = folder_stats(str(ref), _MeanColour(), 16, None, cache, "toy:4", "w")
    assert meta3["n"] == 5 and meta3["n_skipped"] == 2 and set(meta3["skipped"]) == {"more/", "README.txt"}


def _qsched(tmp_path, calib, opts, scorer):
    from qbench.methods.qsched import QSched
    from qbench.prompts import load_prompts

    cfg = RunConfig(model="toy-flux", method="qsched", bits="W4A8", steps=2, batch_size=2, out_dir=str(tmp_path / "r"),
                    calib_prompts=calib, method_options={"search": "grid", "progress": False, **opts})
    m = QSched(cfg, scorer=scorer)
    m.calib_spec = calib
    return m, load_prompts(calib)


def test_3_qsched_checkpoint_of_other_inputs_is_not_reused(tmp_path):
    from qbench.models.loader import load_model

    def scorer(images, prompts):  # prefers brighter images: an optimum inside any grid
        return [-abs(float(np.asarray(im).mean()) - 120.0) for im in images]

    a, pa = _qsched(tmp_path, "toy-calib:2", {"grid_n": 2}, scorer)
    model = load_model("toy-flux", device="cpu")
    a.prepare(model)
    a.calibrate(model, pa)
    assert a.ckpt_origin == "calibrated"
    b, pb = _qsched(tmp_path, "toy-calib:3", {"grid_n": 3, "grid_lo": 0.9, "grid_hi": 1.1}, scorer)
    model = load_model("toy-flux", device="cpu")
    b.prepare(model)
    b.calibrate(model, pb)
    assert b.ckpt_origin == "calibrated" and b.ckpt_path != a.ckpt_path
    cal = b.ckpt["calibration"]
    assert cal["prompts"] == "toy-calib:3" and len(cal["prompt_ids"]) == 3
    assert all(0.9 - 1e-9 <= v <= 1.1 + 1e-9 for v in b.ckpt["params"])  # inside B's own grid (A's was 0.8 / 1.2)
    assert b.ckpt["identity"]["key"] == b.calibration_identity().key
    # the same inputs again: the stored checkpoint, found under its key
    b2, pb2 = _qsched(tmp_path, "toy-calib:3", {"grid_n": 3, "grid_lo": 0.9, "grid_hi": 1.1}, scorer)
    model = load_model("toy-flux", device="cpu")
    b2.prepare(model)
    b2.calibrate(model, pb2)
    assert b2.ckpt_origin == "stored" and b2.ckpt_path == b.ckpt_path
    # a file given explicitly is used as given, labelled by its content
    c, pc = _qsched(tmp_path, "toy-calib:2", {"qsched_ckpt": a.ckpt_path}, scorer)
    model = load_model("toy-flux", device="cpu")
    c.prepare(model)
    c.calibrate(model, pc)
    from qbench.identity import file_digest

    assert c.ckpt_origin == "option" and c.report()["checkpoint_sha256"] == file_digest(a.ckpt_path)


def _toy_copy(tmp_path):
    import qbench

    src = os.path.join(os.path.dirname(qbench.__file__), "zoo", "weights", "toy-flux")
    dst = tmp_path / "w"
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("how", ["quantization_config", "qbench_export"])
def test_4_prequantized_weights_are_refused_as_fp(tmp_path, how, capsys):
    from qbench.preflight import plan_run

    w = _toy_copy(tmp_path)
    if how == "quantization_config":
        cfg_file = w / "transformer" / "config.json"
        d = json.loads(cfg_file.read_text())
        d["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
        cfg_file.write_text(json.dumps(d))
    else:
        (w / "qbench_export.json").write_text("{}")
    with pytest.raises(QBenchError, match="already-quantized"):
        plan_run(RunConfig(model="toy-flux", model_path=str(w), out_dir=str(tmp_path / "r")))
    code = main(["run", "--model", "toy-flux", "--model-path", str(w), "--prompts", "toy:2", "--out-dir", str(tmp_path / "r"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "already-quantized" in err and len(err.strip().splitlines()) == 1


def test_6_one_prompt_gives_strict_json_and_nothing_resolved(tmp_path, capsys):
    out = str(tmp_path / "r")
    common = ["--model", "toy-flux", "--prompts", "toy:1", "--metrics", "clip", "--latency-warmup", "0", "--latency-repeats", "1",
              "--out-dir", out, "--no-progress"]
    assert main(["run", "--method", "fp", *common]) == 0
    assert main(["run", "--method", "naive", "--bits", "W4A8", *common]) == 0
    capsys.readouterr()
    assert main(["compare", "--model", "toy-flux", "--out-dir", out, "--json", "-"]) == 0
    text = capsys.readouterr().out

    def no_constants(c):
        raise AssertionError(f"non-strict JSON constant {c}")

    payload = json.loads(text, parse_constant=no_constants)
    rows = payload["toy-flux"]
    assert rows
    csv_path = tmp_path / "c.csv"
    assert main(["compare", "--model", "toy-flux", "--out-dir", out, "--csv", str(csv_path)]) == 0
    import csv

    recs = list(csv.DictReader(open(csv_path)))
    assert recs and all(r.get("clip_resolved", "") in ("", "None") for r in recs)
    table = capsys.readouterr().out
    assert "n/a" in table


def test_6_speed_baseline_from_another_cpu_kind_is_refused(monkeypatch):
    import cpuinfo

    from qbench import regress

    here = {"vendor_id_raw": "GenuineIntel", "brand_raw": "Xeon", "count": 2, "flags": ["avx2", "avx512f", "avx512_vnni"]}
    monkeypatch.setattr(cpuinfo, "get_cpu_info", lambda: here)
    regress.check_same_cpu_kind({"machine_info": {"cpu": dict(here)}}, "b.json")  # same kind: fine
    avx2 = dict(here, flags=["avx2"])
    with pytest.raises(QBenchError, match="not comparable"):
        regress.check_same_cpu_kind({"machine_info": {"cpu": avx2}}, "b.json")
    with pytest.raises(QBenchError, match="not comparable"):
        regress.check_same_cpu_kind({"machine_info": {"cpu": dict(here, vendor_id_raw="AuthenticAMD")}}, "b.json")
