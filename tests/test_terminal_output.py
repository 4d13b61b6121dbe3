"""What reaches the terminal and the Markdown report (issue 21 §3): user strings stripped of
control characters on every output path, tables that wrap between words at 80 and 120 columns,
hints that paste, messages that do not tear progress bars, finished cache-hit bars that stop
their clock, a status filter that matches nothing."""
from __future__ import annotations

import io
import os
import re
import shlex

import pytest
from test_compare import add_run

from qbench.cli import main

EVIL = "\x1b]0;PWNED\x07\x1b[31mred<b>bold</b>\u202e"


def _cli(capsys, monkeypatch, columns: int, *argv) -> tuple[int, str, str]:
    monkeypatch.setenv("COLUMNS", str(columns))
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _no_controls(text: str) -> None:
    assert not re.search("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]", text), repr(text[:200])


def test_clean_and_md():
    from qbench.safetext import clean, md

    assert clean(EVIL) == "]0;PWNED[31mred<b>bold</b>"
    assert clean("a\tb\nc\rd") == "a\tb\ncd"
    m = md("x|y *z* <script>&" + EVIL)
    assert "<" not in m and ">" not in m and "\x1b" not in m
    assert m.startswith("x\\|y \\*z\\* &lt;script&gt;&amp;")


def test_safe_console_strips_user_text_but_keeps_its_own_styles():
    from rich.text import Text

    from qbench.safetext import console

    buf = io.StringIO()
    con = console(file=buf, force_terminal=True, color_system="standard", width=80)
    con.print(Text("tag " + EVIL, style="bold red"))
    out = buf.getvalue()
    assert "\x1b[" in out  # rich's own style codes are kept
    assert "\x1b]" not in out and "\x07" not in out and "\u202e" not in out  # the tag's title-setting OSC and BEL are gone
    assert re.sub(r"\x1b\[[0-9;]*m", "", out).strip() == "tag ]0;PWNED[31mred<b>bold</b>"


@pytest.fixture()
def evil_db(tmp_path):
    db = str(tmp_path / "q.sqlite")
    add_run(db)
    add_run(db, "naive", "W8A8")
    rid = add_run(db, "naive", "W4A8", tag=EVIL)
    return db, rid


@pytest.mark.parametrize("columns", [80, 120])
def test_every_command_strips_controls_from_a_tag(capsys, monkeypatch, evil_db, tmp_path, columns):
    db, rid = evil_db
    for argv in (["show", rid[-6:], "--db", db], ["compare", "--db", db], ["runs", "--db", db], ["compare", "--db", db, "--wide"]):
        code, out, err = _cli(capsys, monkeypatch, columns, *argv)
        assert code == 0, err
        _no_controls(out + err)
        assert "PWNED" in out  # shown, harmless
    code, out, err = _cli(capsys, monkeypatch, columns, "report", "--db", db, "--out-dir", str(tmp_path), "--model", "toy-flux", "--no-plots",
                          "--grid-prompts", "0")
    assert code == 0, err
    for path in out.split():
        with open(path, encoding="utf-8") as f:
            text = f.read()
        _no_controls(text)
        assert "<b>bold" not in text and "&lt;b&gt;bold" in text  # markup escaped in the Markdown and the HTML


def _table_words(out: str) -> list[str]:
    return [w for line in out.splitlines() for w in re.split(r"[\s│┃|;,()]+", line) if w]


@pytest.mark.parametrize("columns", [80, 120])
def test_runs_and_list_methods_wrap_between_words(capsys, monkeypatch, evil_db, columns):
    db, _ = evil_db
    code, out, _ = _cli(capsys, monkeypatch, columns, "runs", "--db", db)
    assert code == 0
    assert all(len(line) <= columns for line in out.splitlines())
    words = set(_table_words(out))
    assert {"configuration", "naive", "W4A8", "sim", "toy-flux", "toy:4"} <= words  # no word folded into pieces
    code, out, _ = _cli(capsys, monkeypatch, columns, "list", "methods")
    assert code == 0 and all(len(line) <= columns for line in out.splitlines())
    assert "…" not in out  # nothing cut
    words = set(_table_words(out))
    assert {"int8dq_int4w", "int8wo", "intx4wo", "int4wo"} <= words  # torchao's choices, whole


def test_plan_wraps_between_words(capsys, monkeypatch):
    sweep = os.path.join(os.path.dirname(__file__), "..", "sweeps", "paper.yaml")
    for columns in (80, 120):
        code, out, err = _cli(capsys, monkeypatch, columns, "plan", sweep)
        assert code == 0, err
        assert all(len(line) <= columns for line in out.splitlines())
        words = _table_words(out)
        assert "qsched/naive" in words and "simulate" in words
        assert not [w for w in words if w.startswith("qsched/") and w not in ("qsched/naive", "qsched/mixdq")]


def test_hints_paste_with_out_dir_and_metrics(tmp_path):
    from qbench.comparison import compare_hint, rerun_hint
    from qbench.config import RunConfig

    cfg = RunConfig(model="toy-flux", method="naive", bits="W4A8", out_dir=str(tmp_path / "my out"), metrics=["psnr", "toy-acc"])
    hint = shlex.split(compare_hint(cfg))
    assert hint[:4] == ["qbench", "compare", "--model", "toy-flux"]
    assert hint[hint.index("--out-dir") + 1] == str(tmp_path / "my out") and hint[hint.index("--metrics") + 1] == "psnr,toy-acc"
    row = {"sampling": {"model": "toy-flux"}, "run_settings": {"prompts": "toy:8", "out_dir": str(tmp_path / "my out"), "metrics": ["psnr"], "db": None}}
    words = shlex.split(rerun_hint(row, "fp"))
    assert words[words.index("--out-dir") + 1] == str(tmp_path / "my out") and words[words.index("--metrics") + 1] == "psnr"
    assert words[words.index("--prompts") + 1] == "toy:8"


def test_runs_status_filter_with_no_match_is_not_an_error(capsys, monkeypatch, evil_db):
    db, _ = evil_db
    code, out, _err = _cli(capsys, monkeypatch, 80, "runs", "--db", db, "--status", "failed")
    assert code == 0 and "no failed runs" in out


def test_qsched_coefficients_label_whole_numbers():
    from qbench.comparison import _short

    assert _short([0.9213456, 0.80321]) == "(0.921, 0.803)"
    assert _short(list(range(9))) == "(0, 1, 2, … 9 values)"
    assert _short("x" * 40).endswith("…")


def test_messages_print_above_a_live_progress_and_cached_tasks_stop_their_clock():
    from qbench.progress import _LIVE, make_progress, say
    from qbench.safetext import console

    buf = io.StringIO()
    con = console(file=buf, force_terminal=True, width=100)
    bar = make_progress(True, con)
    with bar:
        assert _LIVE and _LIVE[-1] is bar
        done = bar.add_task("cached", total=16, completed=16)
        t = bar.add_task("work", total=4)
        say("qsched: wrote checkpoint " + EVIL)
        bar.advance(t, 2)
        task = bar._tasks[done]
        assert task.finished and task.finished_time == 0.0 and task.elapsed == 0.0
    assert not _LIVE
    out = buf.getvalue()
    line = next(x for x in re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out).replace("\r", "\n").splitlines() if "wrote checkpoint" in x)
    assert line.startswith("qsched: wrote checkpoint")  # whole line, not glued to a bar
    assert "\x07" not in out and "\x1b]" not in out


def test_list_prompts_counts_are_true():
    from qbench.calibration import coco2017_calib
    from qbench.catalog import PROMPTS

    desc = next(e.description for e in PROMPTS if e.name == "coco2017-calib")
    n = int(re.match(r"(\d+) prompts", desc).group(1))
    assert len(coco2017_calib()) == n


class _TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_quiet_commands_show_a_spinner_on_a_terminal_only(monkeypatch):
    from qbench.cli import _quiet_work
    from qbench.cli_parser import build_parser
    from qbench.progress import _LIVE, say, working

    parse = build_parser().parse_args
    assert "report" in _quiet_work(parse(["report"])) and "plan" in _quiet_work(parse(["plan", "x.yaml"]))
    assert "--dry-run" in _quiet_work(parse(["run", "--dry-run"]))
    assert _quiet_work(parse(["run"])) is None and _quiet_work(parse(["list"])) is None  # runs show their own bars
    tty = _TTY()
    monkeypatch.setattr("sys.stderr", tty)
    with working("qbench report: reading " + EVIL):
        assert _LIVE
        say("a message meanwhile")
    assert not _LIVE
    out = tty.getvalue()
    assert "qbench report: reading" in out and "a message meanwhile" in out and "\x07" not in out
    pipe = io.StringIO()
    monkeypatch.setattr("sys.stderr", pipe)
    with working("qbench report: reading"):
        pass
    assert pipe.getvalue() == ""  # a log gets nothing


def test_command_line_sweep_pairs_with_the_stored_fp_run_and_leaves_the_report_when_nothing_ran(tmp_path, capsys):
    common = ["--model", "toy-flux", "--prompts", "toy:2", "--metrics", "toy-acc", "--latency-warmup", "0", "--latency-repeats", "1",
              "--out-dir", str(tmp_path), "--no-progress"]
    assert main(["run", *common, "--method", "fp"]) == 0
    capsys.readouterr()
    assert main(["run", *common, "--method", "naive", "--bits", "W8A8,W4A8"]) == 0
    out = capsys.readouterr().out
    assert "2 run, 0 already finished" in out and "no baseline" not in out  # the stored fp run is the baseline
    report = tmp_path / "report-toy-flux.md"
    assert "fp (baseline)" in report.read_text()
    before = report.stat().st_mtime_ns
    assert main(["run", *common, "--method", "naive", "--bits", "W8A8,W4A8"]) == 0
    out = capsys.readouterr().out
    assert "0 run, 2 already finished" in out and "no baseline" not in out and "report is left as it is" in out
    assert report.stat().st_mtime_ns == before and "fp (baseline)" in report.read_text()
