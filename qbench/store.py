"""The results store: one embedded SQLite database (WAL mode); images live in :mod:`qbench.imagecache`.

* Every write is one transaction; SQLite's locking (with a generous busy timeout) makes two runs
  writing at once safe, and a crashed run leaves its row with status ``running``/``failed``/
  ``interrupted`` rather than a half-written result.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import sqlite3
import uuid
from typing import Any, Iterator

from qbench.errors import QBenchError

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
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
    error TEXT
);
CREATE INDEX IF NOT EXISTS runs_model ON runs(model, created);
CREATE TABLE IF NOT EXISTS metrics (
    run_id TEXT NOT NULL REFERENCES runs(id),
    name TEXT NOT NULL,
    value REAL,
    stderr REAL,
    n INTEGER,
    higher_is_better INTEGER,
    details TEXT,
    PRIMARY KEY (run_id, name)
);
CREATE TABLE IF NOT EXISTS per_image (
    run_id TEXT NOT NULL REFERENCES runs(id),
    metric TEXT NOT NULL,
    prompt_id TEXT NOT NULL,
    value REAL,
    PRIMARY KEY (run_id, metric, prompt_id)
);
"""


def utcnow() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_run_id() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


class Store:
    def __init__(self, path: str):
        self.path = path
        parent = os.path.dirname(os.path.abspath(path))
        try:
            os.makedirs(parent, exist_ok=True)
        except OSError as e:
            raise QBenchError(f"cannot create the results folder {parent}: {e.strerror}") from None
        if not os.access(parent, os.W_OK):
            raise QBenchError(f"the results folder {parent} is not writable")
        with self._connect() as conn:
            conn.executescript(SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
        except sqlite3.Error as e:
            raise QBenchError(f"cannot open the results database {self.path}: {e}") from None
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA busy_timeout=60000")
        conn.row_factory = sqlite3.Row
        return _ClosingConnection(conn)

    # -- writes (each one transaction) -------------------------------------------------------------
    def start_run(self, cfg: dict[str, Any], label: str, bits: str | None, mode: str) -> str:
        run_id = new_run_id()
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                "INSERT INTO runs (id, created, status, model, method, label, bits, mode, config) VALUES (?,?,?,?,?,?,?,?,?)",
                (run_id, utcnow(), "running", cfg["model"], cfg["method"], label, bits, mode, json.dumps(cfg, sort_keys=True)),
            )
            conn.execute("COMMIT")
        return run_id

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
                conn.execute("ROLLBACK")
                raise

    def mark(self, run_id: str, status: str, error: str | None = None) -> None:
        with self._connect() as conn:
            conn.execute("UPDATE runs SET status=?, finished=?, error=? WHERE id=?", (status, utcnow(), error, run_id))

    # -- reads -------------------------------------------------------------------------------------
    def runs(self, model: str | None = None, status: str | None = "done") -> list[dict[str, Any]]:
        q, args = "SELECT * FROM runs WHERE 1=1", []
        if model:
            q += " AND model=?"
            args.append(model)
        if status:
            q += " AND status=?"
            args.append(status)
        q += " ORDER BY created, id"
        with self._connect() as conn:
            rows = [self._row(conn, r) for r in conn.execute(q, args).fetchall()]
        return rows

    def get(self, run_id: str) -> dict[str, Any]:
        with self._connect() as conn:
            rows = conn.execute("SELECT * FROM runs WHERE id LIKE ? ORDER BY id", (run_id + "%",)).fetchall()
            if not rows:
                raise QBenchError(f"no run {run_id!r} in {self.path}")
            if len(rows) > 1 and rows[0]["id"] != run_id:
                raise QBenchError(f"run id prefix {run_id!r} is ambiguous: {', '.join(r['id'] for r in rows[:5])}")
            return self._row(conn, rows[0])

    def per_image(self, run_id: str) -> dict[str, dict[str, float]]:
        """Per-prompt scores of a run: metric -> prompt id -> score (empty for runs stored before
        per-prompt scores were kept)."""
        out: dict[str, dict[str, float]] = {}
        with self._connect() as conn:
            for r in conn.execute("SELECT metric, prompt_id, value FROM per_image WHERE run_id=?", (run_id,)):
                out.setdefault(r["metric"], {})[r["prompt_id"]] = r["value"]
        return out

    def models(self) -> list[str]:
        with self._connect() as conn:
            return [r[0] for r in conn.execute("SELECT DISTINCT model FROM runs WHERE status='done' ORDER BY model")]

    @staticmethod
    def _row(conn: sqlite3.Connection, r: sqlite3.Row) -> dict[str, Any]:
        d = dict(r)
        d["config"] = json.loads(d["config"]) if d["config"] else {}
        d["result"] = json.loads(d["result"]) if d["result"] else {}
        d["metrics"] = {
            m["name"]: {"value": m["value"], "stderr": m["stderr"], "n": m["n"], "higher_is_better": bool(m["higher_is_better"]), "details": json.loads(m["details"] or "{}")}
            for m in conn.execute("SELECT * FROM metrics WHERE run_id=? ORDER BY name", (d["id"],))
        }
        return d


class _ClosingConnection:
    """``with store._connect() as conn`` that always closes (sqlite3's own context manager does not)."""

    def __init__(self, conn: sqlite3.Connection):
        self._conn = conn

    def __enter__(self) -> sqlite3.Connection:
        return self._conn

    def __exit__(self, *exc) -> None:
        self._conn.close()


def iter_chunks(items: list, n: int) -> Iterator[list]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


__all__ = ["Store", "iter_chunks", "utcnow"]
