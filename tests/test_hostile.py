"""Issue 23: the three ways in (§1), the results store's one error path (§2), the last-resort
handler (§2) and the image cache's corrupt files (§3)."""
from __future__ import annotations

import importlib
import json
import os
import shutil
import sqlite3
import sys

import pytest

from qbench.cli import main
from qbench.errors import ConfigError, QBenchError
from qbench.store import SCHEMA_VERSION, Store


# -- §1: three ways in ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    """One real export (toy-flux, naive W8A8 kernel) that each test copies and tampers with."""
    from qbench.catalog import METHODS
    from qbench.config import RunConfig
    from qbench.export import save_quantized
    from qbench.models.loader import load_model

    m = load_model("toy-flux", device="cpu")
    method = METHODS.get("naive")(RunConfig(model="toy-flux", method="naive", bits="W8A8", mode="kernel"))
    method.prepare(m)
    method.convert(m)
    out = tmp_path_factory.mktemp("export") / "e"
    save_quantized(m.pipe, str(out))
    return out


def _copy(export_dir, tmp_path):
    dst = tmp_path / "e"
    shutil.copytree(export_dir, dst)
    return dst


def _edit_json(path, **changes):
    doc = json.loads(path.read_text())
    doc.update(changes)
    path.write_text(json.dumps(doc))


def test_importing_qbench_main_runs_nothing(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["caller", "list"])
    sys.modules.pop("qbench.__main__", None)
    importlib.import_module("qbench.__main__")  # no SystemExit, no command line run
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("imports", [["qbench.__main__"], ["qbench.cli"], ["os"], "qbench.quant.serialize", [["x"]]])
def test_export_imports_are_an_allow_list(export_dir, tmp_path, monkeypatch, imports):
    from qbench.export import load_quantized

    e = _copy(export_dir, tmp_path)
    _edit_json(e / "qbench_export.json", imports=imports)
    monkeypatch.setattr(sys, "argv", ["caller", "list"])
    sys.modules.pop("qbench.__main__", None)
    with pytest.raises(QBenchError, match="may import only|must be a list"):
        load_quantized(str(e))
    assert "qbench.__main__" not in sys.modules


def test_model_index_libraries_are_an_allow_list(export_dir, tmp_path):
    from qbench.export import load_quantized

    e = _copy(export_dir, tmp_path)
    _edit_json(e / "model_index.json", scheduler=["qbench.__main__", "FlowMatchEulerDiscreteScheduler"])
    with pytest.raises(QBenchError, match="names the library 'qbench.__main__'"):
        load_quantized(str(e))


@pytest.mark.parametrize("name", ["ABS", "../outside.safetensors", "sub/x.safetensors", "..", 7, "LINK"])
def test_tensors_file_is_a_name_inside_the_component(export_dir, tmp_path, name):
    from qbench.export import load_quantized
    from qbench.fsutil import sha256_file
    from qbench.quant.serialize import CONFIG_FILE, TENSORS_FILE

    e = _copy(export_dir, tmp_path)
    comp = e / "transformer"
    outside = tmp_path / "outside.safetensors"
    shutil.copy(comp / TENSORS_FILE, outside)
    if name == "ABS":
        name = str(outside)
    elif name == "LINK":
        os.symlink(outside, comp / "link.safetensors")
        name = "link.safetensors"
    _edit_json(comp / CONFIG_FILE, tensors_file=name, tensors_sha256=sha256_file(str(outside)))
    with pytest.raises(QBenchError, match="tensors_file .* must be a file name inside the component folder"):
        load_quantized(str(e))


def test_write_probe_never_follows_a_planted_symlink_and_is_removed(tmp_path, monkeypatch):
    from qbench.fsutil import check_writable_folder
    from qbench.harness import _check_writable

    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    os.symlink(victim, out / f".write-test-{os.getpid()}")
    _check_writable(str(out))
    assert victim.read_text() == "precious"
    assert sorted(p.name for p in out.iterdir()) == [f".write-test-{os.getpid()}"]  # only the planted link

    def full(fd, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(ConfigError, match="not writable: No space left on device"):
        check_writable_folder(str(out))
    monkeypatch.undo()
    assert sorted(p.name for p in out.iterdir()) == [f".write-test-{os.getpid()}"], "probe removed on a full disk too"
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        check_writable_folder(str(tmp_path / "file"))


# -- §2: the results store ----------------------------------------------------------------------------
def _store_with_run(path) -> tuple[Store, str]:
    store = Store(str(path))
    rid = store.start_run({"model": "toy-flux", "method": "fp"}, "fp", None, "simulate")
    store.finish_run(rid, {"label": "fp"}, {"psnr": {"value": 30.0, "stderr": 1.0, "n": 2}})
    return store, rid


def _cli(capsys, *argv) -> tuple[int, str]:
    code = main(list(argv))
    err = capsys.readouterr().err
    lines = [x for x in err.strip().splitlines() if x.strip()]
    assert len(lines) <= 1 and "Traceback" not in err, err
    return code, lines[0] if lines else ""


def _sql(path, *stmts):
    conn = sqlite3.connect(str(path))
    for s in stmts:
        conn.execute(s)
    conn.commit()
    conn.close()


def test_schema_version_is_written_and_newer_schemas_are_refused(tmp_path, capsys):
    db = tmp_path / "qbench.sqlite"
    _store_with_run(db)
    conn = sqlite3.connect(str(db))
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.close()
    _sql(db, "ALTER TABLE runs ADD COLUMN novel TEXT NOT NULL DEFAULT 'x'", f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    before = db.read_bytes()
    for argv in (["runs", "--db", str(db)], ["compare", "--db", str(db)], ["run", "--prompts", "toy:1", "--metrics", "", "--db", str(db), "--out-dir", str(tmp_path)]):
        code, line = _cli(capsys, *argv)
        assert code == 2 and "written by a newer qbench" in line, line
    assert db.read_bytes() == before, "nothing written to a newer database"


def test_an_old_database_without_a_version_is_upgraded_on_write(tmp_path):
    db = tmp_path / "qbench.sqlite"
    _store_with_run(db)
    _sql(db, "PRAGMA user_version=0")
    assert len(Store(str(db), create=False).runs()) == 1  # a reader reads it as it is
    Store(str(db))
    conn = sqlite3.connect(str(db))
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.close()


@pytest.mark.parametrize("damage", ["pages", "no metrics table", "config not JSON", "owner not JSON", "details not JSON"])
def test_every_read_goes_through_one_error_path(tmp_path, capsys, damage):
    db = tmp_path / "qbench.sqlite"
    store, rid = _store_with_run(db)
    if damage.endswith("not JSON"):  # a damaged row: the others stay readable
        other = store.start_run({"model": "toy-flux", "method": "fp"}, "fp", None, "simulate")
        store.finish_run(other, {"label": "fp"}, {"psnr": {"value": 31.0, "stderr": 1.0, "n": 2}})
        where = f"WHERE id='{rid}'" if damage != "details not JSON" else f"WHERE run_id='{rid}'"
        table, col, val = {"config not JSON": ("runs", "config", "{not json"), "owner not JSON": ("runs", "owner", "[1, 2"),
                           "details not JSON": ("metrics", "details", "{")}[damage]
        _sql(db, f"UPDATE {table} SET {col}='{val}' {where}")
        for argv in (["runs", "--db", str(db)], ["compare", "--db", str(db)], ["show", other[-6:], "--db", str(db), "--json"]):
            code, line = _cli(capsys, *argv)
            assert code == 0 and (argv[0] == "show" or (line.startswith("qbench: warning:") and "not valid JSON" in line and rid in line)), (argv, line)
        code, line = _cli(capsys, "show", rid[-6:], "--db", str(db))
        assert code == 2 and line.startswith("qbench: error:") and "not valid JSON" in line
        return
    if damage == "pages":
        data = bytearray(db.read_bytes())
        data[200:4096] = os.urandom(4096 - 200)  # the schema page, after the 100-byte header
        db.write_bytes(bytes(data))
    elif damage == "no metrics table":
        _sql(db, "DROP TABLE metrics")
    elif damage == "config not JSON":
        _sql(db, "UPDATE runs SET config='{not json'")
    elif damage == "owner not JSON":
        _sql(db, "UPDATE runs SET owner='[1, 2'")
    else:
        _sql(db, "UPDATE metrics SET details='{'")
    for argv in (["runs", "--db", str(db)], ["show", rid[-6:], "--db", str(db)], ["compare", "--db", str(db)]):
        code, line = _cli(capsys, *argv)
        assert code == 2 and line.startswith("qbench: error:") and ("corrupt" in line or "not valid JSON" in line
                                                                    or "not a qbench results database" in line), (argv, line)


def test_readers_of_a_folder_they_cannot_write_create_nothing(tmp_path, capsys, monkeypatch):
    """The account reading someone else's (or a read-only) results folder opens it ``immutable=1``:
    no -wal/-shm files are left to block the owner. Emulated with ``os.access`` (tests may run as
    root, for whom every folder is writable)."""
    import qbench.store_db as sdb

    db = tmp_path / "qbench.sqlite"
    _, rid = _store_with_run(db)
    real = os.access
    monkeypatch.setattr(sdb.os, "access", lambda p, mode, **kw: False if mode & os.W_OK else real(p, mode, **kw))
    assert sdb.reader_mode(str(db)) == "immutable=1"
    for argv in (["runs", "--db", str(db)], ["show", rid, "--db", str(db), "--json"], ["compare", "--db", str(db)]):
        code, line = _cli(capsys, *argv)
        assert code == 0, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["qbench.sqlite"]
    (tmp_path / "qbench.sqlite-wal").write_bytes(b"")
    assert sdb.reader_mode(str(db)) == "mode=ro"  # a writer is active: read its WAL


class _FullDisk:
    """An sqlite3 connection whose writes of a run's result fail as SQLite does on a full disk."""

    def __init__(self, conn):
        self._conn = conn

    def execute(self, sql, *args):
        if sql.startswith("UPDATE runs SET status=?, finished=?, result="):
            raise sqlite3.OperationalError("database or disk is full")
        return self._conn.execute(sql, *args)

    def __getattr__(self, name):
        return getattr(self._conn, name)


def test_a_full_disk_marks_the_run_failed_with_the_reason(tmp_path, monkeypatch):
    """SQLITE_FULL on the final write: the run is marked failed with the reason (it showed as
    ``stale``), the error is one line, and the reserve beside the database is released."""
    from qbench.config import RunConfig
    from qbench.errors import DiskFullError
    from qbench.harness import run

    real_connect = Store._connect

    def connect(self):
        c = real_connect(self)
        c.conn = _FullDisk(c.conn)
        return c

    monkeypatch.setattr(Store, "_connect", connect)
    cfg = RunConfig(model="toy-flux", prompts="toy:2", metrics=[], out_dir=str(tmp_path), latency_repeats=1, latency_warmup=0)
    with pytest.raises(DiskFullError, match="is full"):
        run(cfg, show_progress=False)
    monkeypatch.undo()
    (r,) = Store(str(tmp_path / "qbench.sqlite"), create=False).runs(status=None)
    assert r["status"] == "failed" and "is full" in r["error"]
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".qbench-reserve-")], "the reserve is released"


def test_the_reserve_frees_space_to_mark_a_run_failed(tmp_path, monkeypatch):
    from qbench.errors import DiskFullError
    from qbench.store import RESERVE_BYTES, RESERVE_PREFIX

    store = Store(str(tmp_path / "qbench.sqlite"))
    rid = store.start_run({"model": "toy-flux", "method": "fp"}, "fp", None, "simulate")
    reserve = tmp_path / (RESERVE_PREFIX + rid)
    assert reserve.stat().st_size == RESERVE_BYTES
    real = Store._connect
    calls = []

    def connect(self):
        calls.append(1)
        if len(calls) == 1:  # the first attempt meets a full disk; freeing the reserve makes room
            raise DiskFullError("the disk is full")
        return real(self)

    monkeypatch.setattr(Store, "_connect", connect)
    store.mark(rid, "failed", "disk full")
    monkeypatch.undo()
    assert not reserve.exists() and store.get(rid)["status"] == "failed"


# -- §2: the last-resort handler -----------------------------------------------------------------------
@pytest.mark.parametrize("exc,code,needle", [
    (ValueError("boom"), 1, "qbench: internal error: qbench list: ValueError: boom (a bug in qbench"),
    (OSError(36, "File name too long", "x" * 300), 2, "qbench: error: qbench list: File name too long on 'xxx"),
    (MemoryError(), 2, "qbench: error: qbench list: an input is too large or too deeply nested (MemoryError)"),
])
def test_last_resort_is_one_line_with_a_log_file(capsys, monkeypatch, tmp_path, exc, code, needle):
    import qbench.cli_commands as C

    monkeypatch.setenv("QBENCH_CACHE", str(tmp_path / "cache"))

    def boom(args):
        raise exc

    monkeypatch.setattr(C, "cmd_list", boom)  # the parser names the command; main looks it up here
    got, line = _cli(capsys, "list")
    assert got == code and line.startswith(needle), line
    log = line.rsplit("traceback in ", 1)[1].rstrip(")")
    assert os.path.isfile(log) and "Traceback" in open(log).read() and log.startswith(str(tmp_path / "cache" / "logs"))


# -- §3: the image cache ---------------------------------------------------------------------------------
def test_corrupt_cached_images_are_regenerated_and_symlinks_never_followed(tmp_path, capsys):
    argv = ["run", "--model", "toy-flux", "--prompts", "toy:3", "--batch-size", "1", "--metrics", "", "--latency-repeats", "1",
            "--latency-warmup", "0", "--no-progress", "--out-dir", str(tmp_path), "--json"]
    assert main(argv) == 0
    first = json.loads(capsys.readouterr().out)
    pngs = sorted((tmp_path / "images").rglob("*.png"))
    assert len(pngs) == 3
    victim = tmp_path / "victim.png"
    victim.write_bytes(pngs[2].read_bytes())
    pngs[0].write_bytes(b"")
    pngs[1].write_bytes(os.urandom(300))
    pngs[2].unlink()
    os.symlink(victim, pngs[2])
    before = victim.read_bytes()
    assert main(argv) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["n_generated"] == 3 and first["n_generated"] == 3
    assert victim.read_bytes() == before and not pngs[2].is_symlink()
    from PIL import Image

    for p in pngs:
        with Image.open(p) as im:
            im.load()
