"""Atomic file writes (a reader never sees a half-written file, and writers never collide) and
the sha256 of a file.

Every write goes to a uniquely named temporary file in the target's own folder
(``tempfile.mkstemp``, unique across processes and threads, so two writers never share one
temporary file) and is then renamed over the target with ``os.replace``, which POSIX makes
atomic within one file system: a reader opens either the old or the new file, whole. When
writers race, the last rename wins. Nothing is fsync'ed: this protects against concurrent
readers and writers and against a killed process, not against power loss.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from typing import Callable


def _read_umask() -> int:
    mask = os.umask(0o022)  # the only portable way to read it is to set it; put it back at once
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_read_umask()  # what a plain open(path, "w") would create


def atomic_write(path: str, write: Callable[[str], None]) -> str:
    """Create or replace ``path`` atomically; ``write(tmp_path)`` writes the whole content to the
    temporary file it is given (e.g. ``lambda t: torch.save(state, t)``).

    The parent folder is created if missing. The file gets the mode ``open(path, "w")`` would give
    (0o666 minus the umask), not ``mkstemp``'s 0o600. If ``write`` or the rename fails, the
    temporary file is removed, ``path`` is left as it was, and the error propagates (``OSError``
    from the file system, or whatever ``write`` raised). Returns ``path``.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        os.close(fd)
        os.chmod(tmp, _FILE_MODE)
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_write_text(path: str, text: str, encoding: str = "utf-8") -> str:
    """:func:`atomic_write` of one string (``encoding``, default UTF-8). Returns ``path``."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding=encoding) as f:
            f.write(text)

    return atomic_write(path, write)


__all__ = ["atomic_write", "atomic_write_text"]


def sha256_file(path: str) -> str:
    """Hex sha256 of the file at ``path``, read in 4 MiB blocks. Raises OSError if unreadable."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()
