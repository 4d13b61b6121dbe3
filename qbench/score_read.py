"""Images made elsewhere, mapped to prompt ids (``qbench score``): :func:`read_images`.

Four documented readers (``layout``), picked from what the path is unless named:

* ``qbench`` — a folder qbench wrote (the image folder of a run, where the ``image_path`` of
  ``qbench export-results`` points): files ``<prompt id, unsafe characters as _>-s<seed>-<12 hex>.png``
  (:meth:`qbench.imagecache.ImageCache.path`). A file belongs to the prompt whose id gives its
  first part; its seed must be qbench's seed rule (``--seed`` + the prompt's index).
* ``nunchaku`` — a folder of ``<name>.png`` / ``.jpg``, as nunchaku's ``app/flux.1/t2i/evaluate.py``
  writes per dataset (``results/<model>/<precision>/<dataset>/<filename>.png``; its seed is a hash
  of the file name, not qbench's rule). ``<name>`` is the prompt's id, the id with unsafe
  characters as ``_``, or the id's last ``/`` segment (``coco2017/139/372891`` -> ``372891``).
* ``modelopt-json`` — ModelOpt's diffusers eval JSON (``examples/diffusers/eval`` of
  NVIDIA/TensorRT-Model-Optimizer): ``[{"prompt": TEXT, "images": {MODEL_NAME: PATH, ...}}, ...]``;
  ``FILE#MODEL_NAME`` picks one model's images (needed when it holds several); matched by prompt
  text.
* ``records`` — a JSON list or JSON Lines of ``{"prompt_id": ID (or "prompt": TEXT), "image_path":
  PATH}``, which ``qbench export-results`` writes (one run's records).

Relative image paths in a JSON file are taken relative to that file's folder. Refused, one line
each: a missing path, a file mapped to two prompts or a prompt given two files (ambiguous), a
prompt without an image (every prompt needs one: the statistics are paired by prompt), an
unreadable image, images of different sizes, a qbench file whose seed is not the rule's.
Images that map to no prompt are reported (count and examples) and not scored.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

from qbench.errors import ConfigError, QBenchError

LAYOUTS = ("qbench", "nunchaku", "modelopt-json", "records")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")  # as qbench.imagecache names files
_QBENCH_FILE = re.compile(r"^(?P<id>.+)-s(?P<seed>-?\d+)-(?P<tag>[0-9a-f]{12})\.png$")
_SHOW = 3  # examples named in a message


@dataclass
class ImageSet:
    """Images read from ``source`` by reader ``layout``: ``files`` prompt id -> image file in prompt
    order, ``size`` (width, height) of every image, ``digest`` the sha256 over the (prompt id, file
    sha256) pairs (:func:`qbench.identity.digest`), ``extra`` images that map to no prompt."""

    source: str
    layout: str
    entry: str | None
    files: dict[str, str]
    size: tuple[int, int]
    digest: str
    file_digests: dict[str, str] = field(default_factory=dict)
    extra: list[str] = field(default_factory=list)

    def load(self, prompt_id: str):
        """The image of ``prompt_id`` as an RGB ``PIL.Image`` (QBenchError if it no longer reads)."""
        return _open(self.files[prompt_id])

    def describe(self) -> dict[str, Any]:
        return {"source": self.source, "layout": self.layout, "entry": self.entry, "n_images": len(self.files),
                "size": list(self.size), "digest": self.digest, "extra": {"n": len(self.extra), "examples": self.extra[:_SHOW]}}


class LazyImages:
    """The images of an :class:`ImageSet` in prompt order, decoded when indexed (a sequence)."""

    def __init__(self, images: ImageSet, prompt_ids: list[str]):
        self.images, self.ids = images, prompt_ids

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return self.images.load(self.ids[i])


def split_source(spec: str) -> tuple[str, str | None]:
    """``FILE#NAME`` -> (FILE, NAME) when FILE exists and SPEC does not; else (SPEC, None)."""
    if "#" in spec and not os.path.exists(spec):
        path, _, name = spec.rpartition("#")
        if os.path.isfile(path):
            return path, name or None
    return spec, None


def read_images(spec: str, prompts: list, *, seed: int, layout: str | None = None, what: str = "images") -> ImageSet:
    """Map the images at ``spec`` (a folder, or a JSON / JSONL file, optionally ``FILE#NAME``) to
    ``prompts`` (:class:`qbench.api.Prompt`) and check them (module docstring); ``seed`` is the
    base seed of qbench's rule. Raises :class:`ConfigError` / :class:`QBenchError` (one line per
    problem) and reads every image once (decoded, to find unreadable files)."""
    path, entry = split_source(spec)
    if not os.path.exists(path):
        raise ConfigError(f"{what}: no such folder or file {spec!r}")
    path = os.path.abspath(path)
    if layout is not None and layout not in LAYOUTS:
        raise ConfigError(f"--layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
    if os.path.isdir(path):
        if entry:
            raise ConfigError(f"{what}: #{entry} names a model inside a ModelOpt eval JSON file, but {path} is a folder")
        names = _folder_images(path, what)
        layout = layout or ("qbench" if os.path.isfile(os.path.join(path, "meta.json")) or all(_QBENCH_FILE.match(n) for n in names) else "nunchaku")
        if layout not in ("qbench", "nunchaku"):
            raise ConfigError(f"{what}: --layout {layout} reads a JSON file, but {path} is a folder")
        pairs = [(n, os.path.join(path, n)) for n in names]
        found, extra, problems = (_by_qbench_name if layout == "qbench" else _by_nunchaku_name)(pairs, prompts, seed)
    else:
        records = _read_json(path, what)
        if layout in ("qbench", "nunchaku"):
            raise ConfigError(f"{what}: --layout {layout} reads a folder, but {path} is a file")
        layout = layout or ("modelopt-json" if records and isinstance(records[0], dict) and "images" in records[0] else "records")
        pairs, key, entry = (_modelopt_pairs(records, entry, path, what) if layout == "modelopt-json" else _record_pairs(records, path, what))
        found, extra, problems = _match(pairs, prompts, key)
    return check_files(path, layout, entry, found, prompts, what, extra, problems)


def check_files(source: str, layout: str, entry: str | None, found: dict[str, str], prompts: list, what: str = "images",
                extra: list[str] | None = None, problems: list[str] | None = None) -> ImageSet:
    """The :class:`ImageSet` of ``found`` (prompt id -> file) after the checks every reader shares:
    every prompt has an image, every image decodes, all have one size (QBenchError otherwise,
    with ``problems`` the reader found, one line each)."""
    path, problems, extra = source, list(problems or []), list(extra or [])
    missing = [p.id for p in prompts if p.id not in found]
    if missing:
        problems.append(f"{len(missing)} of {len(prompts)} prompts have no image ({_examples(missing)}); every prompt needs one "
                        "(scores are paired by prompt id): add them, or score fewer prompts with --prompts SPEC:N")
    files = {p.id: found[p.id] for p in prompts if p.id in found}  # decoded even when some are missing: every problem at once
    sizes, digests, bad = {}, {}, []
    for pid, f in files.items():
        try:
            im = _open(f)
            sizes.setdefault(im.size, []).append(os.path.basename(f))
            from qbench.identity import file_digest

            digests[pid] = file_digest(f)
        except (QBenchError, OSError) as e:
            bad.append(str(e))
    if bad:
        problems.append(f"{len(bad)} unreadable image(s): {'; '.join(bad[:_SHOW])}")
    if len(sizes) > 1:
        problems.append("images of different sizes: " + ", ".join(f"{w}x{h} ({len(v)}, e.g. {v[0]})" for (w, h), v in sizes.items()))
    if problems:
        _raise(what, path, layout, problems)
    from qbench.identity import digest

    return ImageSet(path, layout, entry, files, next(iter(sizes)), digest([[pid, digests[pid]] for pid in files]), digests, extra)


def _raise(what: str, path: str, layout: str, problems: list[str]) -> None:
    if len(problems) == 1:
        raise QBenchError(f"{what} {path} ({layout} layout): {problems[0]}")
    raise QBenchError(f"{what} {path} ({layout} layout): {len(problems)} problems:\n" + "\n".join(f"      - {p}" for p in problems))


def _examples(items: list[str]) -> str:
    return "e.g. " + ", ".join(repr(x) for x in items[:_SHOW]) + (", ..." if len(items) > _SHOW else "")


def _open(path: str):
    """Decode ``path`` fully as RGB (a truncated or non-image file raises QBenchError)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except (OSError, SyntaxError, ValueError, UnidentifiedImageError, Image.DecompressionBombError) as e:
        raise QBenchError(f"{path}: not a readable image ({type(e).__name__}: {str(e)[:80]})") from None


def _folder_images(path: str, what: str) -> list[str]:
    """Image file names at the top of ``path`` (hidden files left out); refuses a folder without any."""
    try:
        names = sorted(os.listdir(path))
    except OSError as e:
        raise ConfigError(f"{what}: cannot list {path}: {e.strerror}") from None
    images = [n for n in names if not n.startswith(".") and n.lower().endswith(IMAGE_SUFFIXES)]
    if not images:
        subs = [n for n in names if os.path.isdir(os.path.join(path, n)) and not n.startswith(".")]
        hint = f"; it has subfolders ({', '.join(subs[:_SHOW])}): nunchaku writes one per dataset, name one (e.g. {os.path.join(path, subs[0])})" if subs else ""
        raise ConfigError(f"{what}: no image files ({', '.join(IMAGE_SUFFIXES)}) in {path}{hint}")
    return images


def _by_qbench_name(pairs, prompts, seed: int):
    """qbench layout: ``<safe id>-s<seed>-<tag>.png``; the seed must be ``seed + index``."""
    by_safe: dict[str, list] = {}
    for p in prompts:
        by_safe.setdefault(_SAFE.sub("_", p.id), []).append(p)
    found: dict[str, str] = {}
    extra, problems, seeds, dup, clash = [], [], [], [], []
    for name, f in pairs:
        m = _QBENCH_FILE.match(name)
        hits = by_safe.get(m.group("id"), []) if m else []
        if not hits:
            extra.append(name)
        elif len(hits) > 1:
            clash.append(f"{name} -> {', '.join(p.id for p in hits)}")
        elif int(m.group("seed")) != seed + hits[0].index:
            seeds.append(f"{name} (prompt {hits[0].id!r} has seed {seed + hits[0].index})")
        elif hits[0].id in found:
            dup.append(f"{hits[0].id!r}: {os.path.basename(found[hits[0].id])}, {name}")
        else:
            found[hits[0].id] = f
    if clash:
        problems.append(f"{len(clash)} file(s) match several prompt ids once unsafe characters are _ (ambiguous): {'; '.join(clash[:_SHOW])}")
    if dup:
        problems.append(f"{len(dup)} prompt(s) have several images (ambiguous: e.g. generated in other batches): {'; '.join(dup[:_SHOW])}")
    if seeds:
        problems.append(f"{len(seeds)} image(s) were not made with qbench's seed rule (--seed {seed} + prompt index): {'; '.join(seeds[:_SHOW])}; "
                        "pass the --seed they were made with")
    return found, extra, problems


def _by_nunchaku_name(pairs, prompts, seed: int):
    """nunchaku layout: ``<name>.<ext>`` with name = id, safe id or the id's last ``/`` segment."""
    keys: dict[str, set[str]] = {}
    for p in prompts:
        for k in {p.id, _SAFE.sub("_", p.id), p.id.rsplit("/", 1)[-1]}:
            keys.setdefault(k, set()).add(p.id)
    return _match([(os.path.splitext(n)[0], n, f) for n, f in pairs], prompts, lambda p: p.id, keys)


def _match(items, prompts, key, index: dict[str, set[str]] | None = None):
    """``items``: (key, shown name, file); a key maps to the prompt ids ``index`` gives (default:
    the prompts whose ``key(p)`` equals it)."""
    if index is None:
        index = {}
        for p in prompts:
            index.setdefault(key(p), set()).add(p.id)
    found: dict[str, str] = {}
    extra, clash, dup = [], [], []
    for k, name, f in items:
        hits = sorted(index.get(k, ()))
        if not hits:
            extra.append(name)
        elif len(hits) > 1:
            clash.append(f"{name} -> {', '.join(hits[:_SHOW])}")
        elif hits[0] in found and os.path.abspath(found[hits[0]]) != os.path.abspath(f):
            dup.append(f"{hits[0]!r}: {os.path.basename(found[hits[0]])}, {os.path.basename(f)}")
        else:
            found[hits[0]] = f
    problems = []
    if clash:
        problems.append(f"{len(clash)} image(s) match several prompts (ambiguous): {'; '.join(clash[:_SHOW])}")
    if dup:
        problems.append(f"{len(dup)} prompt(s) have several images (ambiguous): {'; '.join(dup[:_SHOW])}")
    return found, extra, problems


def _read_json(path: str, what: str) -> list:
    """A JSON list, or JSON Lines (one object per line), of objects."""
    from qbench.fsutil import parse_json, read_text_file

    text = read_text_file(path, f"{what} file")
    if path.lower().endswith(".jsonl"):
        records = [parse_json(line, f"{what} {path} line {i}") for i, line in enumerate(text.splitlines(), 1) if line.strip()]
    else:
        records = parse_json(text, f"{what} {path}")
    if not isinstance(records, list) or not records or not all(isinstance(r, dict) for r in records):
        raise ConfigError(f"{what} {path}: expected a non-empty JSON list (or JSON Lines) of objects")
    return records


def _resolve(p: Any, base: str, where: str) -> str:
    if not isinstance(p, str) or not p:
        raise ConfigError(f"{where}: image path must be a non-empty string, got {str(p)[:40]!r}")
    return p if os.path.isabs(p) else os.path.join(os.path.dirname(base), p)


def _modelopt_pairs(records, entry, path, what):
    """ModelOpt eval JSON: ``[{"prompt": TEXT, "images": {MODEL: PATH}}]`` -> (text, name, file)."""
    names = sorted({k for r in records for k in (r.get("images") or {}) if isinstance(r.get("images"), dict)})
    if entry is None:
        if len(names) != 1:
            raise ConfigError(f"{what} {path} holds the images of {len(names)} models ({', '.join(names[:6]) or 'none'}): name one as {path}#MODEL")
        entry = names[0]
    elif entry not in names:
        raise ConfigError(f"{what} {path}: no model {entry!r} in its images (it has {', '.join(names[:6]) or 'none'})")
    out = []
    for i, r in enumerate(records):
        if not isinstance(r.get("prompt"), str) or not isinstance(r.get("images"), dict):
            raise ConfigError(f"{what} {path} record {i}: expected {{\"prompt\": TEXT, \"images\": {{MODEL: PATH}}}}")
        if entry in r["images"]:
            out.append((r["prompt"], f"record {i}", _resolve(r["images"][entry], path, f"{what} {path} record {i}")))
    return out, (lambda p: p.text), entry


def _record_pairs(records, path, what):
    """``{"prompt_id"|"prompt", "image_path"}`` records (``qbench export-results``' JSONL)."""
    runs = sorted({str(r["run_id"]) for r in records if "run_id" in r})
    if len(runs) > 1:
        raise ConfigError(f"{what} {path} holds the records of {len(runs)} runs ({', '.join(x[-6:] for x in runs[:_SHOW])}...): "
                          "export one (`qbench export-results --runs ID -o FILE`)")
    by_id = all("prompt_id" in r for r in records)
    if not by_id and not all(isinstance(r.get("prompt"), str) for r in records):
        raise ConfigError(f"{what} {path}: every record needs \"prompt_id\" (or every record \"prompt\") and \"image_path\"")
    out = []
    for i, r in enumerate(records):
        k = str(r["prompt_id"]) if by_id else r["prompt"]
        out.append((k, f"record {i} ({k[:40]})", _resolve(r.get("image_path"), path, f"{what} {path} record {i}")))
    return out, ((lambda p: p.id) if by_id else (lambda p: p.text)), None
