"""The on-disk image cache: what keys a generated image, and where it lives.

A cached image is reused only when everything that changes its pixels is the same:

* the **folder key** (:func:`folder_meta`): model name, weights identity (source + a fingerprint of
  local weight files), pipeline and scheduler classes and their settings, the method's full
  description, steps, guidance, resolution, dtype, device type, batch size, and the **code**
  (qbench's version, a hash of the source files on the pixel path, and the versions of torch,
  diffusers and transformers);
* the **file name**: prompt id, seed, and a hash of the prompt's *text* together with the batch the
  image was generated in (the ids, texts and seeds of its batch-mates): batch size and batch
  composition change pixels (batched GEMMs take other code paths; per-tensor activation scales see
  the whole batch), so an image is reused only by a run that would generate it in the same batch.

Runs cut the prompt list into consecutive batches of ``batch_size`` (by position), and a batch is
generated whole whenever one of its images is missing, so a resumed run reproduces the batches of
an uninterrupted one bit for bit. Files are written atomically (temp file + rename).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from qbench.errors import QBenchError
from qbench.fsutil import atomic_write, atomic_write_text

if TYPE_CHECKING:  # pragma: no cover
    from qbench.api import Prompt

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
#: source folders/files (relative to the qbench package / repo) whose code decides the pixels
PIXEL_PATH_SOURCES = ("models", "quant", "generation.py", "imagecache.py", "methods")
PIXEL_PATH_LIBRARIES = ("torch", "diffusers", "transformers", "peft", "accelerate")


def sha(obj: Any, n: int = 16) -> str:
    """Short sha256 of a JSON-serialisable object (sorted keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


@lru_cache(maxsize=None)
def source_fingerprint() -> str:
    """sha256 over the source files of the pixel path (``PIXEL_PATH_SOURCES``): any edit to the
    model loading, quantization or method code changes it, committed or not."""
    import qbench

    pkg = os.path.dirname(os.path.abspath(qbench.__file__))
    h = hashlib.sha256()
    for rel in PIXEL_PATH_SOURCES:
        path = os.path.join(pkg, rel)
        if rel == "methods":  # installed as qbench.methods (package-dir mapping)
            import qbench.methods

            path = os.path.dirname(os.path.abspath(qbench.methods.__file__))
        files = [path] if os.path.isfile(path) else sorted(
            os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs if f.endswith(".py")
        )
        for f in files:
            h.update(os.path.relpath(f, os.path.dirname(path)).encode())
            with open(f, "rb") as fh:
                h.update(fh.read())
    return h.hexdigest()[:16]


def code_version() -> dict[str, Any]:
    """qbench's version, its pixel-path source hash and the pixel-relevant library versions."""
    from importlib import metadata

    out: dict[str, Any] = {"source_sha": source_fingerprint()}
    for pkg in ("qbench",) + PIXEL_PATH_LIBRARIES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


_BIG = 64 * 2**20  # files larger than this are fingerprinted by size + first and last MiB


@lru_cache(maxsize=64)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if size <= _BIG:
            h.update(f.read())
        else:
            h.update(f.read(2**20))
            f.seek(size - 2**20)
            h.update(f.read())
    return h.hexdigest()[:16]


def weights_fingerprint(folder: str) -> str:
    """Content fingerprint of a local weights folder: every file's relative path, size and
    sha256 (files over 64 MiB: size + first and last MiB). Hub snapshots are identified by their
    revision instead (part of the source string)."""
    entries = []
    for d, _, fs in sorted(os.walk(folder)):
        for f in sorted(fs):
            p = os.path.join(d, f)
            if f.startswith(".") or not os.path.isfile(p):
                continue
            st = os.stat(p)
            entries.append((os.path.relpath(p, folder), st.st_size, _file_digest(p, st.st_size, st.st_mtime_ns)))
    return sha(entries)


def batch_signature(members: list[tuple[str, str, int]]) -> str:
    """Hash of a batch's (prompt id, prompt text, seed) triples, in order."""
    return sha([list(m) for m in members])


class ImageCache:
    """PNG files under ``<root>/images/<model>/<key>/`` plus ``meta.json`` describing the key."""

    def __init__(self, root: str, model: str, key: str, meta: dict[str, Any], create: bool = True):
        self.dir = os.path.join(root, "images", _SAFE.sub("_", model), key)
        if not create:  # read-only use (counting cached images): touch nothing
            return
        try:
            os.makedirs(self.dir, exist_ok=True)
        except OSError as e:
            raise QBenchError(f"cannot create the image folder {self.dir}: {e.strerror}") from None
        meta_path = os.path.join(self.dir, "meta.json")
        if not os.path.exists(meta_path):
            atomic_write_text(meta_path, json.dumps(meta, indent=1, sort_keys=True, default=str))

    def path(self, prompt: Prompt, seed: int, batch: str) -> str:
        """File of ``prompt`` at ``seed`` generated in the batch with signature ``batch``."""
        tag = sha([prompt.text, batch], 12)
        return os.path.join(self.dir, f"{_SAFE.sub('_', prompt.id)}-s{seed}-{tag}.png")

    def has(self, prompt: Prompt, seed: int, batch: str) -> bool:
        """True if a usable image is cached: a regular file (a symlink is never followed out of
        the cache) that starts with the PNG signature and ends with the ``IEND`` chunk. A 0-byte,
        truncated or random file counts as missing, so the run regenerates it (issue 23 §3)."""
        return _looks_like_png(self.path(prompt, seed, batch))

    def load(self, prompt: Prompt, seed: int, batch: str):
        """The cached image as RGB. A file that passes :meth:`has` but does not decode is removed
        and reported in one line (:class:`QBenchError`): the next run regenerates it."""
        from PIL import Image

        path = self.path(prompt, seed, batch)
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
            with os.fdopen(fd, "rb") as f, Image.open(f) as im:
                return im.convert("RGB")
        except (OSError, SyntaxError, ValueError) as e:  # PIL raises these for broken files
            try:
                os.unlink(path)
            except OSError:
                pass
            raise QBenchError(f"cached image {path} is unreadable ({str(e)[:80]}); it was removed and is regenerated by the next run") from None

    def save(self, image, prompt: Prompt, seed: int, batch: str) -> str:
        """Write ``image`` as PNG atomically; a file, or a symlink, already at the path is replaced
        (the rename replaces the link itself, never its target)."""
        path = self.path(prompt, seed, batch)
        return atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the IEND chunk: length 0, type, CRC (PNG spec, section 11.2.5)


def _looks_like_png(path: str) -> bool:
    """A regular file (not a symlink) with the PNG signature and a final IEND chunk."""
    import stat

    try:
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode) or st.st_size < len(_PNG_SIGNATURE) + len(_PNG_END):
            return False
        with open(path, "rb") as f:
            head = f.read(len(_PNG_SIGNATURE))
            f.seek(-len(_PNG_END), os.SEEK_END)
            return head == _PNG_SIGNATURE and f.read() == _PNG_END
    except OSError:
        return False
