"""The results store: one embedded SQLite database (WAL mode); images live in :mod:`qbench.imagecache`.

* Every write is one transaction; SQLite's locking (with a generous busy timeout) makes two runs
  writing at once safe, and a crashed run leaves its row with status ``running``/``failed``/
  ``interrupted`` rather than a half-written result.
* Each run records the process that runs it (``owner``: host, pid, start time); a reader shows a
  ``running`` run whose process is gone as ``stale`` (:mod:`qbench.liveness`). Nothing is written
  for that: the stored status stays ``running``, the derived one is computed on every read.
* ``Store(path, create=False)`` is for commands that only read: it never creates a file or a
  folder, and refuses a missing path. Either way a file that is not a qbench results database
  (text, random bytes, another program's SQLite database) is refused before anything is written
  to it, with one line (:class:`~qbench.errors.QBenchError`).
* Schema version: ``PRAGMA user_version`` holds :data:`SCHEMA_VERSION` (0: written before it was
  kept, upgraded on the first write). A database of a newer schema is refused in one line, by
  readers and writers, before anything is read or written.
* One error path: every ``sqlite3`` error of every read and write (a corrupt page, a missing table,
  a full disk, a read-only file) and every stored JSON value that does not parse becomes one
  :class:`~qbench.errors.QBenchError` line naming the database (:func:`db_error`).
* Readers create nothing: ``create=False`` opens ``mode=rw`` only where this account owns the
  database and may write its folder (closing then removes the WAL side files); otherwise
  ``immutable=1`` (nothing written, no ``-wal``/``-shm`` left to block the owner), or ``mode=ro``
  while a ``-wal`` file exists (a writer is active; its side files are already there).
* A full disk: :meth:`Store.start_run` sets aside :data:`RESERVE_BYTES` in a file beside the
  database; when a write fails for lack of space, :meth:`Store.mark` frees it and marks the run
  failed with the reason, so the run does not show as ``stale``.
"""
from __future__ import annotations

import datetime as _dt
import glob
import json
import os
import sqlite3
import sys
import tempfile
import urllib.parse
import uuid
from typing import Any, Iterator

from qbench.errors import DiskFullError, NoSuchRunError, QBenchError
from qbench.store_db import (
    _ClosingConnection,
    _translated,
    check_sqlite_file,
    columns as _columns,
    db_error,
    reader_mode,
    rollback,
    stored_json,
    tables as _tables,
    unlink_quiet,
)
from qbench.store_votes import VOTE_TABLES

TABLES = [
    """CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    created TEXT NOT NULL,
    finished TEXT,
    status TEXT NOT NULL,
    model TEXT NOT NULL,
    method TEXT NOT NULL,
    label TEXT NOT NULL,
    bits TEXT,
    mode TEXT,
    config TEXT NOT NULL,
    result TEXT,
    error TEXT,
    owner TEXT
)""",
    "CREATE INDEX IF NOT EXISTS runs_model ON runs(model, created)",
    """CREATE TABLE IF NOT EXISTS metrics (
    run_id TEXT NOT NULL REFERENCES runs(id),
    name TEXT NOT NULL,
    value REAL,
    stderr REAL,
    n INTEGER,
    higher_is_better INTEGER,
    details TEXT,
    PRIMARY KEY (run_id, name)
)""",
    """CREATE TABLE IF NOT EXISTS per_image (
    run_id TEXT NOT NULL REFERENCES runs(id),
    metric TEXT NOT NULL,
    prompt_id TEXT NOT NULL,
    value REAL,
    PRIMARY KEY (run_id, metric, prompt_id)
)""",
    *VOTE_TABLES,  # schema 2: the arena's shown pairs and votes (qbench.store_votes)
]
#: columns a ``runs`` table must have to be ours (``owner`` is added to older databases on write)
RUN_COLUMNS = {"id", "created", "finished", "status", "model", "method", "label", "bits", "mode", "config", "result", "error"}
#: ``PRAGMA user_version`` of the schema above (0: a database from before the version was kept;
#: 1: no votes tables, added on the first write by this qbench)
SCHEMA_VERSION = 2
#: bytes set aside beside the database while a run runs, freed to mark it failed on a full disk
RESERVE_BYTES = 1 << 20
RESERVE_PREFIX = ".qbench-reserve-"


def utcnow() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_run_id() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


class Store:
    """The results database at ``path``; ``create=False``: read only, the database must exist.

    Raises :class:`QBenchError` (one line) for a folder, a missing database (read only), a file
    that is not SQLite, or an SQLite database without qbench's tables; the file is left untouched.
    """

    def __init__(self, path: str, create: bool = True):
        self.path = path
        self.create = create
        self._warned: set[str] = set()  # damaged rows already reported by runs()
        if os.path.isdir(path):
            raise QBenchError(f"{path} is a folder, not a qbench results database")
        if os.path.exists(path):
            check_sqlite_file(path)
        elif not create:
            raise QBenchError(f"no results database at {path}; `qbench run` creates it (or pass --out-dir / --db)")
        else:
            parent = os.path.dirname(os.path.abspath(path))
            try:
                os.makedirs(parent, exist_ok=True)
            except OSError as e:
                raise QBenchError(f"cannot create the results folder {parent}: {e.strerror}") from None
            if not os.access(parent, os.W_OK):
                raise QBenchError(f"the results folder {parent} is not writable")
        with self._connect() as conn:
            if create:
                self._init_schema(conn)
            else:
                self._check_schema(conn, tables=_tables(conn))

    def _connect(self) -> "_ClosingConnection":
        """A connection whose ``with`` block closes it and turns any sqlite3 error into one
        QBenchError line (:func:`db_error`)."""
        uri = "file:" + urllib.parse.quote(os.path.abspath(self.path)) + "?" + (reader_mode(self.path) if not self.create else "mode=rwc")
        try:
            conn = sqlite3.connect(uri, uri=True, timeout=60.0, isolation_level=None)
        except sqlite3.Error as e:
            raise db_error(self.path, e) from None
        wrapped = _ClosingConnection(conn, self.path)
        with _translated(self.path, conn):
            conn.execute("PRAGMA busy_timeout=60000")
        conn.row_factory = sqlite3.Row
        return wrapped

    def _check_schema(self, conn: sqlite3.Connection, tables: set[str]) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise QBenchError(f"{self.path} was written by a newer qbench (results schema {version}; this qbench reads up to {SCHEMA_VERSION}): upgrade qbench")
        if "runs" not in tables:
            what = "an empty database" if not tables else "an SQLite database without qbench's runs table"
            raise QBenchError(f"{self.path} is not a qbench results database ({what})")
        missing = RUN_COLUMNS - _columns(conn)
        if missing:
            raise QBenchError(f"{self.path} is not a qbench results database (its runs table lacks {', '.join(sorted(missing))})")

    def _init_schema(self, conn: sqlite3.Connection) -> None:
        """Create the tables in a new (empty) database, or add the ``owner`` column to one written
        by an older qbench; one transaction, after the database was checked to be ours."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            tables = _tables(conn)
            if tables:
                self._check_schema(conn, tables)
            for stmt in TABLES:
                conn.execute(stmt)
            if "owner" not in _columns(conn):
                conn.execute("ALTER TABLE runs ADD COLUMN owner TEXT")
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            rollback(conn)
            raise
        conn.execute("PRAGMA journal_mode=WAL")

    # -- writes (each one transaction) -------------------------------------------------------------
    def start_run(self, cfg: dict[str, Any], label: str, bits: str | None, mode: str) -> str:
        from qbench.liveness import this_process

        run_id = new_run_id()
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                "INSERT INTO runs (id, created, status, model, method, label, bits, mode, config, owner) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (run_id, utcnow(), "running", cfg["model"], cfg["method"], label, bits, mode, json.dumps(cfg, sort_keys=True), json.dumps(this_process())),
            )
            conn.execute("COMMIT")
        self._reserve(run_id)
        return run_id

    # -- the full-disk reserve ---------------------------------------------------------------------
    def _reserve_path(self, run_id: str) -> str:
        return os.path.join(os.path.dirname(os.path.abspath(self.path)), RESERVE_PREFIX + run_id)

    def _reserve(self, run_id: str) -> None:
        """Set aside :data:`RESERVE_BYTES` (real blocks, not a sparse file) for marking ``run_id``
        failed on a full disk; reserves of runs no longer running are removed. Best effort: a disk
        already too full for it only loses the reserve."""
        folder = os.path.dirname(os.path.abspath(self.path))
        for old in glob.glob(os.path.join(glob.escape(folder), RESERVE_PREFIX + "*")):
            rid = os.path.basename(old)[len(RESERVE_PREFIX):]
            try:
                if self.get(rid)["status"] != "running":
                    os.unlink(old)
            except (QBenchError, OSError):
                pass
        try:
            fd, tmp = tempfile.mkstemp(prefix=RESERVE_PREFIX + "tmp-", dir=folder)
        except OSError:
            return
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(bytes(RESERVE_BYTES))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self._reserve_path(run_id))
        except OSError:
            unlink_quiet(tmp)

    def _release(self, run_id: str) -> bool:
        """Free the run's reserve; True if there was one."""
        return unlink_quiet(self._reserve_path(run_id))

    def finish_run(self, run_id: str, result: dict[str, Any], metrics: dict[str, dict[str, Any]], status: str = "done",
                   per_image: dict[str, dict[str, float]] | None = None) -> None:
        """Metrics, per-prompt scores (``per_image``: metric -> prompt id -> score) and the result,
        in one transaction."""
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute("DELETE FROM metrics WHERE run_id=?", (run_id,))
                conn.execute("DELETE FROM per_image WHERE run_id=?", (run_id,))
                for name, scores in (per_image or {}).items():
                    conn.executemany(
                        "INSERT INTO per_image (run_id, metric, prompt_id, value) VALUES (?,?,?,?)",
                        [(run_id, name, pid, float(v)) for pid, v in scores.items()],
                    )
                for name, m in metrics.items():
                    conn.execute(
                        "INSERT INTO metrics (run_id, name, value, stderr, n, higher_is_better, details) VALUES (?,?,?,?,?,?,?)",
                        (run_id, name, m["value"], m.get("stderr"), m.get("n"), int(bool(m.get("higher_is_better", True))), json.dumps(m.get("details", {}), sort_keys=True, default=str)),
                    )
                conn.execute(
                    "UPDATE runs SET status=?, finished=?, result=?, label=? WHERE id=?",
                    (status, utcnow(), json.dumps(result, sort_keys=True, default=str), result.get("label") or "", run_id),
                )
                conn.execute("COMMIT")
            except BaseException:
                rollback(conn)
                raise
        self._release(run_id)

    def mark(self, run_id: str, status: str, error: str | None = None) -> None:
        """Set a run's status (``failed``, ``interrupted``, ...) and error text. On a full disk the
        run's reserve is freed and the write tried once more."""
        for attempt in (0, 1):
            try:
                with self._connect() as conn:
                    conn.execute("UPDATE runs SET status=?, finished=?, error=? WHERE id=?", (status, utcnow(), error, run_id))
                break
            except DiskFullError:
                if attempt or not self._release(run_id):
                    raise
        self._release(run_id)

    # -- reads -------------------------------------------------------------------------------------
    def runs(self, model: str | None = None, status: str | None = "done") -> list[dict[str, Any]]:
        """Runs in creation order, with their metrics; ``status`` filters on the derived status
        (``stale``: stored as ``running`` but its process is gone; None: every run)."""
        q, args = "SELECT * FROM runs WHERE 1=1", []
        if model:
            q += " AND model=?"
            args.append(model)
        if status:
            q += " AND status=?"
            args.append("running" if status == "stale" else status)
        q += " ORDER BY created, id"
        rows = []
        with self._connect() as conn:
            for r in conn.execute(q, args).fetchall():
                try:
                    rows.append(self._row(conn, r))
                except QBenchError as e:  # one damaged row must not hide every other run
                    if r["id"] not in self._warned:
                        self._warned.add(r["id"])
                        print(f"qbench: warning: {e}; left out (`qbench show {r['id'][-6:]} --json` names it)", file=sys.stderr)
        return [r for r in rows if status is None or r["status"] == status]

    def get(self, run_id: str) -> dict[str, Any]:
        """The run whose id is ``run_id`` or starts or ends with it (``compare`` prints the last 6
        characters); QBenchError when none or several match."""
        q = run_id.strip()
        if not q:
            raise QBenchError("empty run id")
        with self._connect() as conn:
            rows = conn.execute("SELECT * FROM runs WHERE id=?", (q,)).fetchall()
            if not rows:
                rows = conn.execute(
                    "SELECT * FROM runs WHERE substr(id, 1, length(?1))=?1 OR substr(id, -length(?1))=?1 ORDER BY id", (q,)
                ).fetchall()
            if not rows:
                raise NoSuchRunError(f"no run {run_id!r} in {self.path} (`qbench runs` lists them)")
            if len(rows) > 1:
                ids = [r["id"] for r in rows]
                more = f", ... ({len(ids)} in all)" if len(ids) > 4 else ""
                raise QBenchError(f"run id {run_id!r} is ambiguous: {', '.join(ids[:4])}{more}; give more characters")
            return self._row(conn, rows[0])

    def per_image(self, run_id: str) -> dict[str, dict[str, float]]:
        """Per-prompt scores of a run: metric -> prompt id -> score (empty for runs stored before
        per-prompt scores were kept)."""
        out: dict[str, dict[str, float]] = {}
        with self._connect() as conn:
            for r in conn.execute("SELECT metric, prompt_id, value FROM per_image WHERE run_id=?", (run_id,)):
                out.setdefault(r["metric"], {})[r["prompt_id"]] = r["value"]
        return out

    def models(self, status: str | None = "done") -> list[str]:
        """Models with at least one run (of ``status``; None: any)."""
        with self._connect() as conn:
            if status is None:
                return [r[0] for r in conn.execute("SELECT DISTINCT model FROM runs ORDER BY model")]
            return [r[0] for r in conn.execute("SELECT DISTINCT model FROM runs WHERE status=? ORDER BY model", (status,))]

    def _row(self, conn: sqlite3.Connection, r: sqlite3.Row) -> dict[str, Any]:
        """A stored run as a dict; ``status`` is derived (``stale`` for a ``running`` run whose
        process is gone) and ``status_note`` says why (or whose process runs it)."""
        from qbench.liveness import owner_state

        d = dict(r)
        for col, empty in (("config", {}), ("result", {}), ("owner", None)):
            d[col] = stored_json(d, col, empty)
        d["status_note"] = None
        if d["status"] == "running":
            state, why = owner_state(d["owner"])
            d["status_note"] = why
            if state == "gone":
                d["status"] = "stale"
                d["status_note"] = f"{why} without finishing; re-run the same command to resume (cached images are reused)"
        d["metrics"] = {
            m["name"]: {"value": m["value"], "stderr": m["stderr"], "n": m["n"], "higher_is_better": bool(m["higher_is_better"]), "details": m["details"]}
            for m in conn.execute("SELECT * FROM metrics WHERE run_id=? ORDER BY name", (d["id"],))
        }
        for m in d["metrics"].values():
            m["details"] = stored_json({"id": d["id"], "details": m["details"]}, "details", {}, raw=True)
        return d


def iter_chunks(items: list, n: int) -> Iterator[list]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


__all__ = ["Store", "iter_chunks", "utcnow"]
