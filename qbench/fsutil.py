"""Atomic file writes (a reader never sees a half-written file, and writers never collide), the
sha256 of a file, and bounded reads of the files a user names (:func:`read_input_bytes`,
:func:`read_text_file`, :func:`read_json_file`).

Every write goes to a uniquely named temporary file in the target's own folder
(``tempfile.mkstemp``, unique across processes and threads, so two writers never share one
temporary file) and is then renamed over the target with ``os.replace``, which POSIX makes
atomic within one file system: a reader opens either the old or the new file, whole. When
writers race, the last rename wins. Nothing is fsync'ed: this protects against concurrent
readers and writers and against a killed process, not against power loss.
"""
from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
from typing import Any, Callable

from qbench.errors import ConfigError


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


__all__ = ["atomic_write", "atomic_write_text", "read_input_bytes", "read_json_file", "read_text_file", "sha256_file", "check_writable_folder", "require_regular_file", "parse_json", "json_depth"]


def sha256_file(path: str) -> str:
    """Hex sha256 of the file at ``path``, read in 4 MiB blocks. Raises OSError if unreadable."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


# -- files a user names (configs, checkpoints, prompt files, option files) ---------------------------
#: largest JSON/YAML/text input read whole (64 MiB: a real config or checkpoint is a few KiB)
MAX_INPUT_BYTES = 64 << 20
#: deepest nesting accepted in a JSON input (a RunConfig or checkpoint nests 3-4 levels)
MAX_JSON_DEPTH = 64


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"


def read_input_bytes(path: str, what: str, max_bytes: int = MAX_INPUT_BYTES) -> bytes:
    """The bytes of the regular file ``path`` (``what`` names it in errors, e.g. "config file").

    Opened with ``O_NONBLOCK`` and checked with ``fstat`` before reading, so a FIFO without a
    writer is refused at once instead of blocking forever. Raises :class:`ConfigError` (one line)
    for a missing or unreadable path, a folder, FIFO, socket or device, and a file larger than
    ``max_bytes``."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise ConfigError(f"{what} {path!r} does not exist") from None
    except OSError as e:
        raise ConfigError(f"cannot read {what} {path!r}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{what} {path!r} is {_kind(st.st_mode)}: a regular file is needed")
        if st.st_size > max_bytes:
            raise ConfigError(f"{what} {path!r} is {st.st_size / 2**20:.1f} MiB, more than the {max_bytes / 2**20:.0f} MiB accepted")
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as e:
        raise ConfigError(f"cannot read {what} {path!r}: {e.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > max_bytes:  # grew while read
        raise ConfigError(f"{what} {path!r} is larger than the {max_bytes / 2**20:.0f} MiB accepted")
    return data


def require_regular_file(path: str, what: str) -> None:
    """:class:`ConfigError` unless ``path`` is an existing regular file (checked without opening
    it, so a FIFO never blocks); for inputs read later by a library (weights, images)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ConfigError(f"{what} {path!r} does not exist") from None
    except OSError as e:
        raise ConfigError(f"cannot read {what} {path!r}: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{what} {path!r} is {_kind(st.st_mode)}: a regular file is needed")


def read_text_file(path: str, what: str, max_bytes: int = MAX_INPUT_BYTES) -> str:
    """:func:`read_input_bytes` decoded as UTF-8 (BOM allowed); ConfigError if it is not UTF-8."""
    try:
        return read_input_bytes(path, what, max_bytes).decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {path!r} is not UTF-8 text") from None


def json_depth(value: Any, limit: int) -> int:
    """Nesting depth of a parsed JSON/YAML value (a scalar is 0), counted without recursion and
    stopping once it passes ``limit``."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict):
            v = list(v.values())
        if isinstance(v, (list, tuple)):
            deepest = max(deepest, d + 1)
            if deepest > limit:
                return deepest
            stack.extend((x, d + 1) for x in v)
    return deepest


def parse_json(text: str, what: str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``json.loads`` with one-line :class:`ConfigError` for malformed JSON and for nesting deeper
    than ``max_depth`` (json's own recursion limit would otherwise raise RecursionError)."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise ConfigError(f"{what} nests deeper than {max_depth} levels") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{what} is malformed JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    if json_depth(value, max_depth) > max_depth:
        raise ConfigError(f"{what} nests deeper than {max_depth} levels")
    return value


def read_json_file(path: str, what: str, max_bytes: int = MAX_INPUT_BYTES, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """The parsed JSON file ``path``: :func:`read_text_file` then :func:`parse_json`."""
    return parse_json(read_text_file(path, what, max_bytes), f"{what} {path!r}", max_depth)


def check_writable_folder(path: str, what: str = "output folder") -> None:
    """Create the folder ``path`` if needed and prove it writable with a probe file made by
    ``tempfile.mkstemp`` (``O_CREAT | O_EXCL``: a planted symlink is never followed), always removed.

    Raises :class:`ConfigError` (one line) for a path that is a file, a folder that cannot be
    created, or one where a file cannot be created and written (read-only, full, no permission)."""
    if os.path.lexists(path) and not os.path.isdir(path):
        raise ConfigError(f"{what} {path!r} is a file, not a folder")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"{what} {path!r} is not writable: cannot create it ({e.strerror})") from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=path)
    except OSError as e:
        raise ConfigError(f"{what} {path!r} is not writable: {e.strerror}") from None
    try:
        os.write(fd, b"ok")
        os.fsync(fd)  # a full disk fails here, not only at the next real write
    except OSError as e:
        raise ConfigError(f"{what} {path!r} is not writable: {e.strerror}") from None
    finally:
        os.close(fd)
        try:
            os.unlink(probe)
        except FileNotFoundError:
            pass
