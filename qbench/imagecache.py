"""The on-disk image cache: what keys a generated image, and where it lives.

A cached image is reused only when everything that changes its pixels is the same:

* the **folder key** (:func:`qbench.generation.image_identity`, an :class:`qbench.identity.Identity`):
  the model's spec, weights source and content fingerprint, the method's full description, steps,
  guidance, resolution, dtype, device type, batch size, the **code** that makes the pixels (the
  generation and model-loading modules and the method's own modules, each with what it imports:
  adding another method changes nothing here) and the versions of torch, diffusers, transformers,
  peft and accelerate;
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
from typing import TYPE_CHECKING, Any

from qbench.errors import QBenchError
from qbench.fsutil import atomic_write, atomic_write_text

if TYPE_CHECKING:  # pragma: no cover
    from qbench.api import Prompt

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def sha(obj: Any, n: int = 16) -> str:
    """Short sha256 of a JSON-serialisable object (sorted keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


def weights_fingerprint(folder: str) -> str:
    """Content fingerprint of a local weights folder: every file's relative path and full sha256
    (:func:`qbench.identity.tree_digest`; digests of large files are remembered under their stat
    key, so a multi-GB folder is read once). Hub snapshots are identified by their revision
    instead (part of the source string)."""
    from qbench.identity import tree_digest

    return tree_digest(folder).digest


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
        return os.path.exists(self.path(prompt, seed, batch))

    def load(self, prompt: Prompt, seed: int, batch: str):
        from PIL import Image

        with Image.open(self.path(prompt, seed, batch)) as im:
            return im.convert("RGB")

    def save(self, image, prompt: Prompt, seed: int, batch: str) -> str:
        path = self.path(prompt, seed, batch)
        return atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))
