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
