"""``qbench report`` (Markdown + self-contained HTML), ``qbench compare --csv/--json FILE`` and
``qbench export-results``, on real toy-flux runs (fp, naive W8A8 / W4A8 on 12 held-out prompts).

The browser half of the HTML check (headless Chromium: every image loads, the table renders) is
``make report-check``; here the page's structure is checked without a browser: every <img> is an
embedded PNG that decodes, nothing is fetched from outside, the comparison table is present."""
from __future__ import annotations

import base64
import csv
import io
import json
import os
import re
from html.parser import HTMLParser

import pytest

from qbench.cli import main

N = 12  # > 10, so that a string sort of prompt ids (0, 1, 10, 11, 2 ...) would show


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory):
    from qbench.config import RunConfig
    from qbench.harness import run

    out = str(tmp_path_factory.mktemp("report"))
    for method, bits in (("fp", None), ("naive", "W8A8"), ("naive", "W4A8")):
        run(RunConfig(model="toy-flux", method=method, bits=bits, prompts=f"toy:{N}", batch_size=N, metrics=["toy-acc", "jaq", "psnr"],
                      out_dir=out, latency_warmup=0, latency_repeats=1, device="cpu"), show_progress=False)
    return out


def _read(path) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def _cli(capsys, *argv):
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.imgs, self.tables, self.ths, self.links, self.best = [], 0, [], [], 0
        self._th = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a)
        elif tag == "table":
            self.tables += 1
        elif tag == "th":
            self._th = True
        elif tag == "td" and "best" in (a.get("class") or ""):
            self.best += 1
        for k in ("src", "href"):
            if a.get(k) and not a[k].startswith("data:"):
                self.links.append(a[k])

    def handle_endtag(self, tag):
        if tag == "th":
            self._th = False

    def handle_data(self, data):
        if self._th:
            self.ths.append(data)


def test_report_html_is_self_contained_and_complete(capsys, out_dir):
    from PIL import Image

    code, out, err = _cli(capsys, "report", "--out-dir", out_dir, "--model", "toy-flux")
    assert code == 0, err
    paths = out.split()
    html_path = next(p for p in paths if p.endswith(".html"))
    page = _Page()
    text = _read(html_path)
    page.feed(text)
    assert page.links == []  # nothing outside the file
    assert len(page.imgs) >= 4  # size and latency plots, fidelity per bits, the grid
    for img in page.imgs:
        assert img["src"].startswith("data:image/png;base64,") and img.get("alt")
        with Image.open(io.BytesIO(base64.b64decode(img["src"].split(",", 1)[1]))) as im:
            im.verify()
    assert page.tables >= 2 and page.ths[:2] == ["configuration", "run"]
    assert page.best >= 3  # the best value of a column is marked
    for key in ("prompt set", "seeds", "steps / guidance / resolution", "versions", "device", "run dates", "modes", "git"):
        assert f"<dt>{key}</dt>" in text
    assert f"toy:{N} ({N} prompts" in text and "42 + prompt index" in text


def test_report_markdown_tables_and_images(capsys, out_dir):
    code, out, err = _cli(capsys, "report", "--out-dir", out_dir, "--model", "toy-flux", "--format", "md")
    assert code == 0, err
    md = _read(out.split()[0])
    assert "| fp (baseline) |" in md and "Paired differences" not in md.split("## Provenance")[1]
    assert re.search(r"\| naive W4A8 sim \| \w{6} \| 12 \| .*±", md)  # the paired table: n and mean ± se per metric
    assert "**" in md.split("## Provenance")[0]  # best values in bold
    links = re.findall(r"!\[[^]]*\]\(([^)]+)\)", md)
    assert {"report-toy-flux-grid.png", "report-toy-flux-pareto-size.png"} <= set(links)
    assert all(os.path.isfile(os.path.join(out_dir, p)) for p in links)


def test_grid_rows_follow_the_prompt_order(out_dir):
    from qbench.comparison import compare
    from qbench.report_figures import grid_prompts
    from qbench.store import Store

    store = Store(os.path.join(out_dir, "qbench.sqlite"), create=False)
    runs = store.runs(model="toy-flux")
    rows, _ = compare(runs, store.per_image)
    chosen = grid_prompts(rows, {r["id"]: r for r in runs}, N)
    assert [p.index for p, _ in chosen] == list(range(N))  # 0, 1, 2, ... 11, not 0, 1, 10, 11
    for p, files in chosen:
        assert len(files) == 3 and all(os.path.basename(f).startswith(f"toy-test_{p.index}-s{42 + p.index}-") for f in files)


def test_vs_method_pairs_each_configuration_with_the_same_bits(capsys, tmp_path):
    from test_compare import add_run  # synthesised runs: the pairing, not the numbers, is under test

    from qbench.comparison import compare
    from qbench.report import vs_method
    from qbench.store import Store

    db = str(tmp_path / "q.sqlite")
    add_run(db)
    add_run(db, "naive", "W4A8", scores={i: 1.0 + i / 10 - 0.05 for i in range(4)})
    add_run(db, "naive", "W8A8")
    add_run(db, "other", "W4A8", scores={i: 1.0 + i / 10 + (0.02 if i % 2 else 0.04) for i in range(4)})
    store = Store(db, create=False)
    rows, _ = compare(store.runs(), store.per_image)
    before = json.dumps(rows, sort_keys=True, default=str)
    pairs = vs_method(rows, "naive", store.per_image)
    assert json.dumps(rows, sort_keys=True, default=str) == before  # the compare rows are left as they were
    assert [(r["method"], r["bits"]) for r in pairs] == [("other", "W4A8")]
    d = pairs[0]["paired"]["jaq"]
    # other - naive W4A8 per prompt: 0.09, 0.07, 0.09, 0.07 -> mean 0.08, sd 0.01 * sqrt(4/3), se sd / 2
    assert d["n"] == 4 and d["mean"] == pytest.approx(0.08) and d["se"] == pytest.approx(0.01 * (4 / 3) ** 0.5 / 2)
    assert pairs[0]["options_diff"].startswith("vs naive W4A8 sim")
    code = main(["report", "--db", db, "--out-dir", str(tmp_path / "rep"), "--vs", "naive", "--format", "md"])
    md = _read(capsys.readouterr().out.split()[0])
    assert code == 0 and "## Paired differences to naive at the same bits and mode" in md and "+0.0800 ± 0.0058" in md


def test_compare_writes_csv_and_json_files(capsys, out_dir, tmp_path):
    code, out, err = _cli(capsys, "compare", "--out-dir", out_dir, "--csv", str(tmp_path / "c.csv"), "--json", str(tmp_path / "c.json"))
    assert code == 0, err
    assert "qbench compare — toy-flux" in out  # the table is still printed
    payload = json.loads(_read(tmp_path / "c.json"))
    with open(tmp_path / "c.csv", newline="") as f:
        recs = list(csv.DictReader(f))
    rows = payload["toy-flux"]
    assert [r["run_id"] for r in recs] == [r["run_id"] for r in rows]
    for rec, row in zip(recs, rows):
        assert float(rec["jaq"]) == pytest.approx(row["metrics"]["jaq"]["value"])
        if row.get("paired"):
            d = row["paired"]["jaq"]
            assert float(rec["jaq_delta"]) == pytest.approx(d["mean"]) and float(rec["jaq_delta_se"]) == pytest.approx(d["se"])
            assert rec["jaq_resolved"] == str(abs(d["mean"]) >= 2 * d["se"])
        else:
            assert rec["jaq_delta"] == "" and rec["is_baseline"] == "True"
    assert {"setting_prompts", "setting_seed", "latency_s", "peak_bytes", "size_bytes", "psnr_se"} <= set(recs[0])
    # stdout forms: --json alone and --csv -
    assert json.loads(_cli(capsys, "compare", "--out-dir", out_dir, "--json")[1]) == payload
    assert _cli(capsys, "compare", "--out-dir", out_dir, "--csv", "-")[1].splitlines()[0].startswith("model,table,configuration")


def test_export_results_writes_one_record_per_run_and_prompt(capsys, out_dir, tmp_path):
    from qbench.prompts import load_prompts
    from qbench.store import Store

    target = tmp_path / "per_image.jsonl"
    code, out, err = _cli(capsys, "export-results", "--out-dir", out_dir, "-o", str(target))
    assert code == 0, err
    assert out.startswith(f"{target}: {3 * N} records")
    recs = [json.loads(line) for line in _read(target).splitlines()]
    store = Store(os.path.join(out_dir, "qbench.sqlite"), create=False)
    runs = store.runs()
    assert len(recs) == len(runs) * N
    texts = {p.id: p.text for p in load_prompts(f"toy:{N}")}
    for rec in recs:
        assert rec["prompt_text"] == texts[rec["prompt_id"]] and rec["seed"] == 42 + rec["prompt_index"]
        assert os.path.isfile(rec["image_path"]) and rec["image_path"].startswith(store.get(rec["run_id"])["result"]["images_dir"])
        scores = store.per_image(rec["run_id"])
        assert {k: rec[k] for k in scores} == {k: v[rec["prompt_id"]] for k, v in scores.items()}
    assert [r["prompt_index"] for r in recs[:N]] == list(range(N))
    one = runs[0]["id"][-6:]
    assert _cli(capsys, "export-results", "--out-dir", out_dir, "--runs", one)[1].count("\n") == N


def test_export_and_compare_file_errors_are_one_line(capsys, out_dir, tmp_path):
    for argv in (["export-results", "--out-dir", out_dir, "--model", "toy-lcm"],
                 ["compare", "--out-dir", out_dir, "--csv", str(tmp_path / "no" / "such" / "c.csv")],
                 ["export-results", "--out-dir", out_dir, "-o", str(tmp_path)],
                 ["report", "--out-dir", out_dir, "--format", "pdf"]):
        code, _, err = _cli(capsys, *argv)
        assert code != 0 and len(err.strip().splitlines()) == 1 and err.startswith("qbench: error: "), (argv, err)


def test_pareto_front():
    from qbench.plots import pareto_front

    pts = [(4.0, 1.0), (2.0, 0.9), (1.0, 0.5), (2.5, 0.8), (1.0, 0.4)]
    assert pareto_front(pts, higher_is_better=True) == [2, 1, 0]
    assert pareto_front([(1.0, 3.0), (2.0, 2.0), (3.0, 2.5)], higher_is_better=False) == [0, 1]


def test_method_artefacts_give_trajectory_and_sensitivity_figures(tmp_path):
    """Any JSON file a run's method_report names is read: a 2-d calibration trajectory and a per-layer
    sensitivity map each become a figure (no method name is looked for)."""
    from PIL import Image
    from test_compare import add_run

    from qbench.comparison import compare
    from qbench.report_figures import figures
    from qbench.store import Store

    traj = [{"point": [1.0 + 0.01 * i, 1.0 - 0.01 * i], "n_prompts": 5 if i < 5 else 25, "score": 1.80 + 0.001 * i, "images": 10 * i}
            for i in range(12)]
    ckpt = tmp_path / "ckpt.json"
    ckpt.write_text(json.dumps({"parameterisation": "ramp", "calibration": {"trajectory": traj, "grid": {"lo": 0.8, "hi": 1.2},
                                                                           "search": "own", "images": 120, "prompts": "toy-calib:25"}}))
    sens = tmp_path / "alloc.json"
    sens.write_text(json.dumps({"sensitivity": {f"blocks.{i}.attn": {"group": "content" if i % 2 else "quality", "w": {"4": 30.0 + i, "8": 50.0 + i},
                                                                     "a": {"8": 40.0 - i}} for i in range(6)}}))
    db = str(tmp_path / "q.sqlite")
    add_run(db)
    add_run(db, "naive", "W4A8")
    store = Store(db, create=False)
    runs = store.runs()
    runs[1]["result"]["method_report"] = {"checkpoint": str(ckpt), "calibration": {"json": str(sens), "yaml": str(tmp_path / "none.json")}}
    rows, _ = compare(runs, store.per_image)
    figs = {f.name.split("-")[0]: f for f in figures(rows, {r["id"]: r for r in runs}, "x")}
    assert {"search", "sensitivity", "pareto"} <= set(figs)
    assert "(c_eps0, c_x0)" in figs["search"].title and str(ckpt) in figs["search"].caption
    for f in figs.values():
        with Image.open(io.BytesIO(f.png)) as im:
            assert im.format == "PNG" and im.size[0] > 300
