"""``qbench compare``: only comparable runs are paired, every difference of settings is said in one
line, tables fit 80 and 120 columns, user strings print as written. Runs are synthesised in a
temporary store (the numbers do not matter here, only what is put side by side)."""
from __future__ import annotations

import itertools
import json
import re
import sqlite3

import pytest

from qbench.cli import main
from qbench.store import Store

FORMULA = "mean over antonym prompt pairs of softmax(exp(logit_scale) * [cos(img, pos), cos(img, neg)])[pos]"
_clock = itertools.count(10)  # shared by every module that adds runs with add_run


def add_run(db, method="fp", bits=None, prompts="toy:4", n=4, steps=4, seed=42, tag=None, options=None, metrics=("jaq", "clipiqa"),
            scores=None, sampling=True, latency_kind=None, model="toy-flux", per_image=True):
    """Store one finished run; ``scores``: prompt index -> jaq (default 1.0 + i/10, lower for methods)."""
    store = Store(db)
    mode = "none" if method == "fp" else "simulate"
    label = " ".join([method] + ([bits, mode] if bits else []))
    cfg = {"model": model, "method": method, "bits": bits, "mode": mode, "prompts": prompts, "seed": seed, "steps": None, "guidance": None,
           "resolution": None, "batch_size": 4, "dtype": None, "device": "auto", "model_path": None, "tag": tag}
    rid = store.start_run(cfg, label, bits, mode)
    shift = 0.0 if method == "fp" else -0.05
    per = {f"p{i}": (scores or {}).get(i, 1.0 + i / 10 + shift) for i in range(n)}
    result = {
        "label": label, "run_id": rid, "config": cfg, "model_source": "shipped:zoo/weights/toy-flux", "n_images": n, "notes": [],
        "method": {"method": method, "bits": bits, "mode": mode, "options": dict(options or {})},
        "latency": {"end_to_end_s": {"median": 0.1, "iqr": 0.0, "n": 1}, "per_step_s": {"median": 0.02, "iqr": 0.0, "n": 3}, **({"kind": latency_kind} if latency_kind else {})},
        "memory": {"peak_bytes": 2**30, "kind": "process peak RSS (VmHWM)"},
        "size": {"deploy_bytes": 2**21, "bytes_16bit": 2**22, "deploy_vs_16bit": 0.5 if bits else 1.0,
                 "deploy_kind": "simulated (packed format)" if bits else "16-bit (no quantized layers)", "resident_bytes": 2**23},
        "provenance": {"device_name": "cpu: test", "dtype": "float32"}, "mode": mode, "timings": {}, "images_dir": "-", "n_generated": n,
    }
    if sampling:
        result["sampling"] = {"model": model, "weights": "shipped:zoo/weights/toy-flux", "prompts": prompts, "n_prompts": n, "prompts_sha": f"sha-{prompts}",
                              "seed": seed, "steps": steps, "guidance": 0.0, "resolution": 32, "dtype": "float32", "device_type": "cpu", "batch_size": 4}
    else:
        result["model_bytes"] = 2**23
    ms = {}
    for name in metrics:
        vals = list(per.values())
        ms[name] = {"value": sum(vals) / len(vals), "stderr": 0.01, "n": n, "higher_is_better": True,
                    "details": {"formula": FORMULA if name == "clipiqa" else "JAQ_i"}}
    result["metrics"] = ms
    store.finish_run(rid, result, ms, per_image={m: dict(per) for m in metrics} if per_image else None)
    with sqlite3.connect(db) as conn:  # distinct creation times: "latest" is well defined
        t = next(_clock)
        conn.execute("UPDATE runs SET created=? WHERE id=?", (f"2030-01-01T{t // 3600:02d}:{t // 60 % 60:02d}:{t % 60:02d}Z", rid))
    return rid


def compare_json(capsys, db, *extra):
    capsys.readouterr()
    assert main(["compare", "--db", db, "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def compare_text(capsys, monkeypatch, db, *extra, width=80):
    monkeypatch.setenv("COLUMNS", str(width))
    capsys.readouterr()
    code = main(["compare", "--db", db, *extra])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def one_line_error(capsys, argv):
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if l.strip()]
    assert code != 0 and len(lines) == 1 and lines[0].startswith("qbench: error:"), err
    return lines[0]


@pytest.fixture
def db(tmp_path):
    return str(tmp_path / "q.sqlite")


def test_a_other_prompt_set_is_not_mixed_with_the_baseline(capsys, monkeypatch, db):
    fp = add_run(db, prompts="toy:32", n=32)
    add_run(db, "naive", "W8A8", prompts="toy:8", n=8)
    rows = compare_json(capsys, db)["toy-flux"]
    naive = next(r for r in rows if r["method"] == "naive")
    assert naive["group"] != next(r for r in rows if r["method"] == "fp")["group"]
    assert naive["baseline_run"] is None and "paired" not in naive
    assert "no baseline" in naive["group_note"] and "prompts toy:8 (8 prompts) vs toy:32 (32 prompts)" in naive["group_note"]
    out = compare_text(capsys, monkeypatch, db, width=200)
    assert "naive W8A8 sim" in out and "no baseline: the baseline fp " + fp[-6:] in out  # the row is shown, with its reason


def test_b_other_steps_and_prompts_are_flagged(capsys, db):
    add_run(db, steps=4, prompts="toy:8", n=8)
    add_run(db, "naive", "W8A8", steps=1, prompts="coco2017:8", n=8, scores={i: 9.0 for i in range(8)})  # "better" and faster
    rows = compare_json(capsys, db)["toy-flux"]
    naive = next(r for r in rows if r["method"] == "naive")
    assert "steps 1 vs 4" in naive["group_note"] and "prompts coco2017:8 (8 prompts) vs toy:8 (8 prompts)" in naive["group_note"]
    assert "paired" not in naive and not naive["is_baseline"]
    assert "--steps" not in naive["group_note"] or "qbench run" in naive["group_note"]  # the hint is a whole command


def test_c_options_and_tag_make_their_own_rows(capsys, monkeypatch, db):
    fp = add_run(db)
    g32 = add_run(db, "naive", "W4A8", options={"group_size": 32})
    g64 = add_run(db, "naive", "W4A8", options={"group_size": 64}, tag="gs64")
    rows = compare_json(capsys, db)["toy-flux"]
    assert {r["run_id"] for r in rows} == {fp, g32, g64}
    by = {r["run_id"]: r for r in rows}
    assert by[g32]["options_diff"] == "group_size=32" and by[g64]["options_diff"] == "group_size=64" and by[g64]["tag"] == "gs64"
    assert by[g32]["paired"]["jaq"]["n"] == 4 and by[g64]["paired"]["jaq"]["mean"] == pytest.approx(-0.05)
    out = compare_text(capsys, monkeypatch, db)
    assert "group_size=64" in out and "tag gs64" in out and "group_size=32" in out


def test_d_metric_less_or_smaller_fp_runs_do_not_become_the_baseline(capsys, db):
    fp = add_run(db, prompts="toy:16", n=16)
    naive = add_run(db, "naive", "W8A8", prompts="toy:16", n=16)
    add_run(db, prompts="toy:2", n=2, metrics=())  # newer, 2 prompts, no metrics
    add_run(db, prompts="toy:16", n=16, metrics=(), per_image=False)  # newer, same settings, no scores
    rows = compare_json(capsys, db)["toy-flux"]
    row = next(r for r in rows if r["run_id"] == naive)
    assert row["baseline_run"] == fp and row["paired"]["jaq"]["n"] == 16
    small = next(r for r in rows if r["sampling"]["prompts"] == "toy:2")
    assert small["group"] != row["group"] and "prompts toy:2 (2 prompts) vs toy:16 (16 prompts)" in small["group_note"]


def _wide_db(db):
    names = ("clip", "clipiqa", "fd-toyclip", "jaq", "psnr", "ssim", "toy-acc")
    add_run(db, metrics=names)
    add_run(db, "naive", "W8A8", metrics=names)
    add_run(db, "naive", "W4A8", metrics=names)
    add_run(db, "naive", "W4A8", options={"group_size": 64}, tag="gs64", metrics=names)


@pytest.mark.parametrize("width", [80, 120])
def test_e_tables_fit_the_terminal_and_keep_whole_cells(capsys, monkeypatch, db, width):
    _wide_db(db)
    out = compare_text(capsys, monkeypatch, db, width=width)
    assert max(len(l) for l in out.splitlines()) <= width
    assert "…" not in out  # nothing cut
    ids = [r["run_id"][-6:] for r in compare_json(capsys, db)["toy-flux"]]
    assert all(f"run {i}" in out for i in ids)
    assert out.count("1.150 ± 0.010") >= 7  # fp's value of every metric, whole
    assert out.count("-0.05 ± 0") >= 3 * 7  # every paired difference of every method (zero spread)
    wide = compare_text(capsys, monkeypatch, db, "--wide", width=width)
    assert "paired Δ vs the baseline" in wide and max(len(l) for l in wide.splitlines()) > width  # --wide: natural width


def test_f_user_strings_print_as_written(capsys, monkeypatch, db):
    fp = add_run(db, tag="[bold]x[/bold]")
    out = compare_text(capsys, monkeypatch, db, width=200)
    assert "[bold]x[/bold]" in out and FORMULA in out
    capsys.readouterr()
    monkeypatch.setenv("COLUMNS", "300")
    assert main(["show", fp, "--db", db]) == 0
    shown = capsys.readouterr().out
    assert "[bold]x[/bold]" in shown and "softmax(exp(logit_scale) * [cos(img, pos), cos(img, neg)])" in shown


def test_g_show_takes_a_prefix_or_suffix(capsys, db):
    a = add_run(db)
    b = add_run(db, "naive", "W8A8")
    for query in (a[-6:], a[:-3], a):
        capsys.readouterr()
        assert main(["show", query, "--db", db, "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["id"] == a
    common = next(i for i in range(len(a)) if a[i] != b[i])
    assert "ambiguous" in one_line_error(capsys, ["show", a[:common], "--db", db])
    assert "no run 'zzz'" in one_line_error(capsys, ["show", "zzz", "--db", db])


def test_baseline_option_and_run_selection(capsys, db):
    fp = add_run(db)
    w8 = add_run(db, "naive", "W8A8")
    w4 = add_run(db, "naive", "W4A8", scores={i: 0.5 for i in range(4)})
    rows = compare_json(capsys, db, "--baseline", w8[-6:])["toy-flux"]
    assert [r["run_id"] for r in rows if r["is_baseline"]] == [w8]
    assert next(r for r in rows if r["run_id"] == fp)["paired"]["jaq"]["mean"] == pytest.approx(0.05)
    rows = compare_json(capsys, db, "--baseline", "naive W4A8 sim")["toy-flux"]
    assert [r["run_id"] for r in rows if r["is_baseline"]] == [w4]
    assert "neither a run id nor a method" in one_line_error(capsys, ["compare", "--db", db, "--baseline", "gptq"])
    newer_fp = add_run(db, scores={i: 2.0 for i in range(4)})
    rows = compare_json(capsys, db)["toy-flux"]
    assert fp not in {r["run_id"] for r in rows} and next(r for r in rows if r["is_baseline"])["run_id"] == newer_fp
    rows = compare_json(capsys, db, "--runs", f"{fp[-6:]},{w4[-6:]}")["toy-flux"]  # the older fp, by hand
    assert [r["run_id"] for r in rows] == [fp, w4] and rows[1]["paired"]["jaq"]["mean"] == pytest.approx(0.5 - 1.15)
    rows = compare_json(capsys, db, "--baseline", fp)["toy-flux"]  # an older run named as baseline stands for its configuration
    assert next(r for r in rows if r["is_baseline"])["run_id"] == fp and newer_fp not in {r["run_id"] for r in rows}


def test_runs_stored_without_settings_are_flagged_and_never_paired(capsys, db):
    add_run(db, sampling=False)
    add_run(db, "naive", "W8A8", sampling=False)
    rows = compare_json(capsys, db)["toy-flux"]
    assert all("settings not recorded" in r["group_note"] and "paired" not in r and not r["is_baseline"] for r in rows)


def test_latency_kind_and_sizes_are_labelled(capsys, monkeypatch, db):
    add_run(db)
    add_run(db, "naive", "W8A8", latency_kind="fake-quant latency (simulate mode), not a deployment number")
    out = compare_text(capsys, monkeypatch, db, width=120)
    assert "¹ latency: fake-quant latency (simulate mode), not a deployment number" in out
    assert "0.100¹" in out and "2.00*" in out and "0.500" in out and "× 16-bit" in out


def test_compare_metric_selection(capsys, monkeypatch, db):
    add_run(db)
    out = compare_text(capsys, monkeypatch, db, "--metrics", "jaq", width=120)
    assert "jaq ↑" in out and "clipiqa ↑" not in out
    assert "no metric lpips" in one_line_error(capsys, ["compare", "--db", db, "--metrics", "lpips"])


def test_report_groups_like_compare(capsys, tmp_path, db):
    add_run(db, prompts="toy:32", n=32)
    add_run(db, "naive", "W8A8", prompts="toy:8", n=8)
    capsys.readouterr()
    assert main(["report", "--db", db, "--out-dir", str(tmp_path / "rep")]) == 0
    text = open(capsys.readouterr().out.split()[0]).read()
    assert "Table 2" in text and "no baseline" in text and "| fp (baseline) |" in text


@pytest.mark.parametrize("content", [b"just some text\n", bytes(range(256)) * 16, b"SQLite format 3\x00" + bytes(range(256)) * 8])
def test_db_that_is_not_ours_is_refused_and_left_alone(capsys, tmp_path, content):
    path = tmp_path / "not.sqlite"
    path.write_bytes(content)
    for argv in (["compare"], ["show", "abc"], ["runs"], ["report", "--out-dir", str(tmp_path / "rep")],
                 ["run", "--metrics", "", "--prompts", "toy:2", "--out-dir", str(tmp_path / "o")]):
        assert "not a qbench results database" in one_line_error(capsys, argv + ["--db", str(path)])
    assert path.read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir()) in (["not.sqlite"], ["not.sqlite", "o"])  # run may make its image folder


def test_foreign_sqlite_database_is_refused_untouched(capsys, tmp_path):
    path = tmp_path / "other.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE people (name TEXT)")
    before = path.read_bytes()
    for create in (True, False):
        with pytest.raises(Exception, match="without qbench's runs table"):
            Store(str(path), create=create)
    assert path.read_bytes() == before


@pytest.mark.parametrize("cmd", [["compare"], ["show", "abc"], ["runs"], ["report"]])
def test_reads_of_a_missing_database_create_nothing(capsys, tmp_path, cmd):
    target = tmp_path / "new" / "x.sqlite"
    extra = ["--out-dir", str(tmp_path / "new")] if cmd == ["report"] else []
    assert "no results database" in one_line_error(capsys, cmd + ["--db", str(target)] + extra)
    assert list(tmp_path.iterdir()) == []


def test_runs_lists_every_status(capsys, monkeypatch, db):
    add_run(db)
    s = Store(db)
    failed = s.start_run({"model": "toy-flux", "method": "naive"}, "naive W8A8 simulate", "W8A8", "simulate")
    s.mark(failed, "failed", "NonFiniteOutputError: [red]nan[/red] in the denoiser")
    monkeypatch.setenv("COLUMNS", "80")
    capsys.readouterr()
    assert main(["runs", "--db", db]) == 0
    out = capsys.readouterr().out
    # below 100 columns the id's last 6 characters (what compare prints; show and compare take them)
    assert failed[-6:] in out and "failed" in out and "[red]nan[/red]" in out and max(len(l) for l in out.splitlines()) <= 80
    monkeypatch.setenv("COLUMNS", "120")
    assert main(["runs", "--db", db]) == 0 and failed in capsys.readouterr().out
    assert re.search(r"not shown: 1 failed", compare_text(capsys, monkeypatch, db, width=120))


def test_fmt_se_rounds_to_the_standard_error():
    from qbench.compare_table import fmt_se

    assert fmt_se(85.2816, 1.0512) == "85.3 ± 1.1"
    assert fmt_se(0.031532, 0.040123, signed=True) == "+0.032 ± 0.040"
    assert fmt_se(1.0, 1e-9) == "1 ± 0" and fmt_se(-0.05, 0.0, signed=True) == "-0.05 ± 0"
    assert fmt_se(4.51033, None) == "4.5103" and fmt_se(12.3456, float("nan")) == "12.35" and fmt_se(None, 1.0) == "-"


def test_real_runs_on_other_steps_are_not_paired(capsys, monkeypatch, tmp_path):
    """Through the harness: the settings a run records decide the grouping (toy-flux, 4 prompts)."""
    out_dir = str(tmp_path / "r")
    common = ["--prompts", "toy:4", "--out-dir", out_dir, "--metrics", "jaq", "--latency-repeats", "1", "--latency-warmup", "0", "--no-progress"]
    for extra in ([], ["--method", "naive", "--bits", "W8A8"], ["--method", "naive", "--bits", "W8A8", "--steps", "1"]):
        capsys.readouterr()
        assert main(["run", *common, *extra]) == 0, capsys.readouterr().err
    rows = compare_json(capsys, str(tmp_path / "r" / "qbench.sqlite"))["toy-flux"]
    same, other = (next(r for r in rows if r["method"] == "naive" and r["sampling"]["steps"] == s) for s in (4, 1))
    assert same["paired"]["jaq"]["n"] == 4 and "paired" not in other
    assert "steps 1 vs 4" in other["group_note"] and "--steps 1" in other["group_note"]
    out = compare_text(capsys, monkeypatch, str(tmp_path / "r" / "qbench.sqlite"), width=80)
    assert max(len(l) for l in out.splitlines()) <= 80 and "steps 1 vs 4" in out.replace("\n", " ")


def test_ambiguous_baseline_names_are_refused_and_tags_can_be_named(tmp_path, capsys, monkeypatch):
    db = str(tmp_path / "q.sqlite")
    add_run(db, "fp")
    add_run(db, "naive", "W4A8")
    add_run(db, "naive", "W8A8")
    tagged = add_run(db, "naive", "W4A8", tag="gs64", options={"group_size": 64})
    err = one_line_error(capsys, ["compare", "--db", db, "--baseline", "naive"])
    assert "names 2 configurations" in err or "names 3 configurations" in err
    rows = compare_json(capsys, db, "--baseline", "naive W4A8 sim tag gs64")["toy-flux"]
    assert next(r for r in rows if r["is_baseline"])["run_id"] == tagged
    rows = compare_json(capsys, db, "--baseline", "gs64")["toy-flux"]
    assert next(r for r in rows if r["is_baseline"])["run_id"] == tagged


def test_identical_runs_read_as_identical_and_runs_selection_says_where_the_baseline_is(tmp_path, capsys, monkeypatch):
    db = str(tmp_path / "q.sqlite")
    add_run(db, "fp")
    same = add_run(db, "naive", "W8A8", scores={i: 1.0 + i / 10 for i in range(4)})  # equal to fp on every prompt
    out = compare_text(capsys, monkeypatch, db)
    assert "0 (identical)" in out and "+0 ± 0" not in out
    rows = compare_json(capsys, db, "--runs", same)["toy-flux"]
    assert "among the selected runs" in rows[0]["group_note"]
