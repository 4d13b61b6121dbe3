"""The results database's SQLite plumbing (:mod:`qbench.store` uses it): the one error path
(:func:`db_error`: every ``sqlite3`` error, by SQLite's error code, as one
:class:`~qbench.errors.QBenchError` line naming the database), the reader's open mode
(:func:`reader_mode`) and small checks. SQLite's result codes: https://www.sqlite.org/rescode.html;
URI parameters (``mode=ro``, ``immutable=1``): https://www.sqlite.org/uri.html."""
from __future__ import annotations

import json
import os
import sqlite3
from typing import Any

from qbench.errors import DiskFullError, QBenchError

SQLITE_MAGIC = b"SQLite format 3\x00"


def check_sqlite_file(path: str) -> None:
    """Refuse, without writing to it, a file that is not an SQLite database (an empty file is a new
    database to SQLite and is let through)."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(SQLITE_MAGIC))
    except OSError as e:
        raise QBenchError(f"cannot read the results database {path}: {e.strerror}") from None
    if head and head != SQLITE_MAGIC:
        raise QBenchError(f"{path} is not a qbench results database (not an SQLite file)")


def tables(conn: sqlite3.Connection) -> set[str]:
    return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def columns(conn: sqlite3.Connection) -> set[str]:
    return {r[1] for r in conn.execute("PRAGMA table_info(runs)")}


class _translated:
    """``with _translated(path, conn):`` turns a sqlite3 error into :func:`db_error`'s line."""

    def __init__(self, path: str, conn: sqlite3.Connection | None = None):
        self.path, self.conn = path, conn

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type, exc, tb) -> None:
        # ProgrammingError/InterfaceError are qbench's own bugs (a value SQLite cannot bind): they
        # stay exceptions for the CLI's last resort ("internal error"), never a user-facing line
        if isinstance(exc, sqlite3.Error) and not isinstance(exc, (sqlite3.ProgrammingError, sqlite3.InterfaceError)):
            if self.conn is not None:
                self.conn.close()
            raise db_error(self.path, exc) from None


class _ClosingConnection(_translated):
    """``with store._connect() as conn`` that always closes (sqlite3's own context manager does
    not) and turns every sqlite3 error inside the block into one QBenchError line."""

    def __init__(self, conn: sqlite3.Connection, path: str):
        super().__init__(path, conn)

    def __enter__(self) -> sqlite3.Connection:  # type: ignore[override]
        return self.conn

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            super().__exit__(exc_type, exc, tb)
        finally:
            self.conn.close()


def db_error(path: str, e: sqlite3.Error) -> QBenchError:
    """The one line for an sqlite3 error on the database ``path`` (by SQLite's error code)."""
    code = getattr(e, "sqlite_errorname", "") or ""
    text = str(e)
    if code == "SQLITE_FULL" or "disk is full" in text:
        return DiskFullError(f"the disk holding the results database {path} is full ({text}); free space and re-run (finished results are kept)")
    if code.startswith("SQLITE_READONLY") or "readonly database" in text:
        return QBenchError(f"the results database {path} cannot be written ({text}): the file or its folder is read-only, "
                           f"or its -wal/-shm files belong to another account (remove them once no qbench runs there)")
    if code in ("SQLITE_CORRUPT", "SQLITE_NOTADB") or "malformed" in text or "not a database" in text:
        return QBenchError(f"{path} is corrupt or not a qbench results database ({text}); restore it from a backup or use another --db")
    if code.startswith("SQLITE_BUSY") or "locked" in text:
        return QBenchError(f"the results database {path} stayed locked by another process for 60 s ({text})")
    if code.startswith("SQLITE_CANTOPEN") or "unable to open" in text:
        return QBenchError(f"cannot open the results database {path} ({text})")
    if "no such table" in text or "no such column" in text or "constraint failed" in text:
        return QBenchError(f"{path} is not a qbench results database of this schema ({text})")
    return QBenchError(f"results database {path}: {text}")


def stored_json(d: dict[str, Any], col: str, empty: Any, raw: bool = False) -> Any:
    """A JSON column of a stored row (``{}``/None when empty); one QBenchError line when corrupt."""
    text = d.get(col)
    if not text:
        return empty
    try:
        return json.loads(text)
    except (ValueError, TypeError, RecursionError):
        raise QBenchError(f"run {d.get('id')}: its stored {col} is not valid JSON (the database was edited or damaged)") from None


def reader_mode(path: str) -> str:
    """The URI mode for a reader: ``mode=rw`` where this account owns the database and may write
    its folder (closing removes the side files); else ``immutable=1`` (creates nothing) unless a
    ``-wal`` file exists (a writer is active: ``mode=ro`` reads its pages)."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        owner = os.stat(path).st_uid
    except OSError:
        owner = None
    if owner == _uid() and os.access(folder, os.W_OK) and os.access(path, os.W_OK):
        return "mode=rw"
    return "mode=ro" if os.path.exists(path + "-wal") else "immutable=1"


def _uid() -> int | None:
    return os.getuid() if hasattr(os, "getuid") else None


def rollback(conn: sqlite3.Connection) -> None:
    try:
        conn.execute("ROLLBACK")
    except sqlite3.Error:  # SQLite already rolled back (a full disk, an I/O error)
        pass


def unlink_quiet(path: str) -> bool:
    try:
        os.unlink(path)
        return True
    except OSError:
        return False
