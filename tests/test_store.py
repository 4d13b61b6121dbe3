import multiprocessing as mp
import sqlite3

import pytest
from PIL import Image

from qbench.errors import QBenchError
from qbench.api import Prompt
from qbench.imagecache import ImageCache
from qbench.store import Store


def _write_runs(path, k, n):
    s = Store(path)
    for i in range(n):
        rid = s.start_run({"model": "m", "method": f"w{k}"}, f"w{k}", None, "none")
        s.finish_run(rid, {"label": f"w{k}", "i": i}, {"psnr": {"value": float(i), "stderr": None, "n": 1}})


def test_two_concurrent_writers_lose_nothing(tmp_path):
    db = str(tmp_path / "q.sqlite")
    Store(db)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_write_runs, args=(db, k, 25)) for k in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    runs = Store(db).runs(model="m")
    assert len(runs) == 50
    assert all(r["status"] == "done" and r["metrics"]["psnr"]["n"] == 1 for r in runs)


def test_finish_is_atomic(tmp_path):
    s = Store(str(tmp_path / "q.sqlite"))
    rid = s.start_run({"model": "m", "method": "fp"}, "fp", None, "none")
    with pytest.raises(sqlite3.ProgrammingError):  # an unstorable metric value fails mid-transaction
        s.finish_run(rid, {"label": "fp"}, {"a": {"value": 1.0}, "b": {"value": object()}})
    run = s.get(rid)
    assert run["status"] == "running" and run["metrics"] == {}  # nothing half-written


def test_get_by_prefix_and_errors(tmp_path):
    s = Store(str(tmp_path / "q.sqlite"))
    rid = s.start_run({"model": "m", "method": "fp"}, "fp", None, "none")
    assert s.get(rid[:-2])["id"] == rid
    with pytest.raises(QBenchError, match="no run"):
        s.get("nope")


def test_unwritable_folder(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the results folder should be")
    with pytest.raises(QBenchError, match="cannot create the results folder"):
        Store(str(blocker / "q.sqlite"))


def test_image_cache_atomic_and_keyed(tmp_path):
    c = ImageCache(str(tmp_path), "tiny/lcm", "abc", {"k": 1})
    im = Image.new("RGB", (8, 8), (1, 2, 3))
    p = Prompt("coco2017/1/2", "a cat", 0)
    assert not c.has(p, 42, "b1")
    c.save(im, p, 42, "b1")
    assert c.has(p, 42, "b1") and not c.has(p, 43, "b1")
    assert not c.has(p, 42, "b2"), "another batch composition is another image"
    assert not c.has(Prompt("coco2017/1/2", "a dog", 0), 42, "b1"), "an edited prompt text is another image"
    assert c.load(p, 42, "b1").getpixel((0, 0)) == (1, 2, 3)
    assert not list((tmp_path).rglob("*.tmp"))


def test_per_image_scores_round_trip_and_are_replaced(tmp_path):
    s = Store(str(tmp_path / "q.sqlite"))
    rid = s.start_run({"model": "m", "method": "fp"}, "fp", None, "none")
    s.finish_run(rid, {"label": "fp"}, {"jaq": {"value": 1.5}}, per_image={"jaq": {"p0": 1.0, "p1": 2.0}})
    assert s.per_image(rid) == {"jaq": {"p0": 1.0, "p1": 2.0}}
    s.finish_run(rid, {"label": "fp"}, {"jaq": {"value": 3.0}}, per_image={"jaq": {"p0": 3.0}})
    assert s.per_image(rid) == {"jaq": {"p0": 3.0}}  # a re-finished run keeps only its new scores
    other = s.start_run({"model": "m", "method": "fp"}, "fp", None, "none")
    with pytest.raises(TypeError):  # rolled back together with the metrics
        s.finish_run(other, {"label": "fp"}, {"a": {"value": 1.0}}, per_image={"a": {"p0": object()}})
    assert s.per_image(other) == {} and s.get(other)["metrics"] == {}


def _set_owner(path, rid, owner):
    import json

    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE runs SET owner=? WHERE id=?", (json.dumps(owner), rid))


def test_running_run_whose_process_is_gone_reads_as_stale(tmp_path):
    import socket
    import subprocess
    import sys

    from qbench.liveness import this_process

    path = str(tmp_path / "q.sqlite")
    s = Store(path)
    alive, dead, reused, remote = (s.start_run({"model": "m", "method": "fp"}, "fp", None, "none") for _ in range(4))
    assert s.get(alive)["owner"] == this_process() and s.get(alive)["status"] == "running"
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    _set_owner(path, dead, {"host": socket.gethostname(), "pid": int(child.stdout), "started": None})
    _set_owner(path, reused, dict(this_process(), started=1.0))  # our pid, but another process's start time
    _set_owner(path, remote, {"host": "elsewhere.example", "pid": 1, "started": 0.0})
    got = {r["id"]: r for r in s.runs(status=None)}
    assert got[dead]["status"] == "stale" and "has exited" in got[dead]["status_note"] and "re-run" in got[dead]["status_note"]
    assert got[reused]["status"] == "stale" and "another process" in got[reused]["status_note"]
    assert got[remote]["status"] == "running" and "cannot check" in got[remote]["status_note"]
    assert got[alive]["status"] == "running"
    assert {r["id"] for r in s.runs(status="stale")} == {dead, reused}
    assert {r["id"] for r in s.runs(status="running")} == {alive, remote}
    with sqlite3.connect(path) as conn:  # derived on read: nothing was written
        assert {r[0] for r in conn.execute("SELECT status FROM runs")} == {"running"}


def test_database_of_an_older_qbench_is_read_untouched_and_migrated_on_write(tmp_path):
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE runs (id TEXT PRIMARY KEY, created TEXT NOT NULL, finished TEXT, status TEXT NOT NULL, model TEXT NOT NULL, "
                     "method TEXT NOT NULL, label TEXT NOT NULL, bits TEXT, mode TEXT, config TEXT NOT NULL, result TEXT, error TEXT)")
        conn.execute("CREATE TABLE metrics (run_id TEXT, name TEXT, value REAL, stderr REAL, n INTEGER, higher_is_better INTEGER, details TEXT)")
        conn.execute("INSERT INTO runs (id, created, status, model, method, label, config) VALUES ('20240101-000000-abcdef', 't', 'running', 'm', 'fp', 'fp', '{}')")
    before = path.read_bytes()
    run = Store(str(path), create=False).get("abcdef")
    assert run["status"] == "running" and "older qbench" in run["status_note"]
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["old.sqlite"]
    s = Store(str(path))  # a writer adds the owner column
    rid = s.start_run({"model": "m", "method": "fp"}, "fp", None, "none")
    assert s.get(rid)["owner"]["pid"] > 0 and len(s.runs(status=None)) == 2
