"""Prompt sets: the shipped COCO caption sets, registered extra sets, and user files.

Spec grammar (``--prompts``):

* ``NAME:N`` — the first N prompts of a registered set (``qbench list prompts``); ``NAME`` = all.
  The order of every set is fixed and documented, so "the first N" is a stated, stable subset.
* ``PATH`` or ``PATH:N`` — a ``.txt`` file (one prompt per line, blank lines skipped) or a
  ``.jsonl``/``.json``/``.csv`` file with a caption column (``caption``, ``text`` or ``prompt``;
  an ``id`` column, if present, gives the stable ids), loaded with Hugging Face ``datasets``.
* ``hf:<dataset>[:<split>][@<revision>]`` or with ``:N`` — a Hugging Face Hub dataset (or a local
  dataset folder), and the named Hub sets ``mjhq-30k``, ``mjhq-5k``, ``sdci``, ``parti-prompts``,
  ``drawbench``: :mod:`qbench.hubprompts` (pinned revisions, resolved commit recorded).

Every prompt keeps a stable id and its index in the full set; generation seeds are
``run seed + index``.
"""
from __future__ import annotations

import csv
import json
import os
from functools import lru_cache
from typing import Callable

from qbench.api import Prompt
from qbench.errors import ConfigError, QBenchError

CAPTION_COLUMNS = ("caption", "text", "prompt")
FILE_SUFFIXES = (".txt", ".jsonl", ".json", ".csv")


def data_dir() -> str:
    """The shipped ``datasets/`` folder (the repo's, or the wheel's ``qbench/data/datasets``:
    :func:`qbench.resources.data_path`); ``QBENCH_DATA`` overrides."""
    if os.environ.get("QBENCH_DATA"):
        return os.environ["QBENCH_DATA"]
    from qbench.resources import data_path

    return data_path("datasets")


def _data_file(*parts: str) -> str:
    if os.environ.get("QBENCH_DATA"):
        path = os.path.join(os.environ["QBENCH_DATA"], *parts)
    else:
        from qbench.resources import data_path

        path = data_path("datasets", *parts)
    if not os.path.isfile(path):
        from qbench.resources import where

        raise QBenchError(f"prompt data file {path} is missing (the COCO caption sets ship with qbench: looked in {where()}"
                          f"{'; QBENCH_DATA is set' if os.environ.get('QBENCH_DATA') else ''})")
    return path


# -- the shipped COCO sets --------------------------------------------------------------------------
@lru_cache(maxsize=None)
def coco2014_30k() -> tuple[Prompt, ...]:
    """COCO-30k val2014: one caption per image, in file order (the zero-shot FID-30k convention)."""
    out = []
    with open(_data_file("coco", "MS-COCO_val2014_30k_captions.csv"), newline="", encoding="utf-8") as f:
        for i, row in enumerate(csv.DictReader(f)):
            out.append(Prompt(id=f"coco2014/{row['image_id']}", text=row["text"].strip(), index=i, meta={"image_id": int(row["image_id"])}))
    return tuple(out)


@lru_cache(maxsize=None)
def coco2017() -> tuple[Prompt, ...]:
    """COCO val2017: the first caption (lowest annotation id) of each image, images by ascending id."""
    first: dict[int, dict] = {}
    with open(_data_file("coco", "captions_val2017.jsonl"), encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            cur = first.get(row["image_id"])
            if cur is None or row["id"] < cur["id"]:
                first[row["image_id"]] = row
    out = []
    for i, image_id in enumerate(sorted(first)):
        row = first[image_id]
        text = " ".join(row["caption"].split())
        out.append(Prompt(id=f"coco2017/{image_id}/{row['id']}", text=text, index=i, meta={"image_id": image_id}))
    return tuple(out)


# -- user files ----------------------------------------------------------------------------------------
#: most rows a prompt file may have (COCO-30k, the largest standard set, has 30,000); a
#: 2,000,000-line file took 167 s and 1.85 GB before anything was said (issue 23 §3)
MAX_PROMPT_ROWS = 200_000
#: largest prompt file read (bytes)
MAX_PROMPT_FILE_BYTES = 64 << 20
#: longest prompt id (ids name cached image files; 300 characters failed as "file name too long")
MAX_ID_CHARS = 120


def _check_text_file(path: str) -> bytes:
    """Refuse, in one line, what ``datasets`` would fail on with an opaque message, before it is
    imported: a missing path, a folder, FIFO or device (:func:`qbench.fsutil.read_input_bytes`),
    more than :data:`MAX_PROMPT_FILE_BYTES` or :data:`MAX_PROMPT_ROWS` rows, an empty, binary or
    non-UTF-8 file."""
    from qbench.fsutil import read_input_bytes

    if os.path.isdir(path):
        raise QBenchError(f"prompt file {path!r} is a folder; pass a .txt/.jsonl/.json/.csv file or a prompt set name (qbench list prompts)")
    data = read_input_bytes(path, "prompt file", MAX_PROMPT_FILE_BYTES)
    if not data.strip():
        raise QBenchError(f"prompt file {path!r} is empty")
    rows = data.count(b"\n") + (not data.endswith(b"\n"))
    if rows > MAX_PROMPT_ROWS:
        raise QBenchError(f"prompt file {path!r} has {rows} lines, more than the {MAX_PROMPT_ROWS} accepted; split it into smaller files")
    if b"\x00" in data:
        raise QBenchError(f"prompt file {path!r} is binary (it holds NUL bytes), not text")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise QBenchError(f"prompt file {path!r} is not UTF-8 text (invalid byte at offset {e.start})") from None
    return data


def load_prompt_file(path: str) -> list[Prompt]:
    """Prompts of a user file. A prompt's index (and so its seed) is its row number in the file,
    counting empty rows, which are skipped with a warning: editing one row never shifts the seeds
    of the others."""
    suffix = os.path.splitext(path)[1].lower()
    if os.path.exists(path) and not os.path.isdir(path):  # a FIFO or device: said so, whatever its suffix
        from qbench.fsutil import require_regular_file

        require_regular_file(path, "prompt file")
    if suffix not in FILE_SUFFIXES and not os.path.isdir(path):
        raise QBenchError(f"prompt file {path!r}: unsupported type {suffix or '(none)'}; use {', '.join(FILE_SUFFIXES)}")
    data = _check_text_file(path)
    import logging
    import tempfile

    import datasets

    datasets.disable_progress_bars()
    builder = {".txt": "text", ".jsonl": "json", ".json": "json", ".csv": "csv"}[suffix]
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.abspath(path)
        if data.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark would become part of the first prompt (or column name)
            src = os.path.join(tmp, "prompts" + suffix)
            with open(src, "wb") as f:
                f.write(data[3:])
        log = logging.getLogger("datasets")
        level = log.level
        log.setLevel(logging.CRITICAL)  # datasets logs its own error line before raising: ours is the one line
        try:
            ds = datasets.load_dataset(builder, data_files=src, split="train", cache_dir=os.path.join(tmp, "hf"))
        except Exception as e:  # datasets raises many types for malformed files; report it in one line
            cause = e.__cause__ or e
            raise QBenchError(f"prompt file {path!r} could not be parsed as {builder}: {str(cause).splitlines()[0] if str(cause) else type(cause).__name__}") from None
        finally:
            log.setLevel(level)
        columns, records = ds.column_names, ds.to_list()  # read before the temporary cache goes
    base = os.path.basename(path)
    rows: list[tuple[int, str, str]] = []  # (row, id, text)
    empty: list[int] = []
    if builder == "text":
        for i, r in enumerate(records):
            text = " ".join(str(r["text"]).split())
            (rows.append((i, f"{base}:{i}", text)) if text else empty.append(i))
    else:
        col = next((c for c in CAPTION_COLUMNS if c in columns), None)
        if col is None:
            raise QBenchError(f"prompt file {path!r} has no caption column; expected one of {', '.join(CAPTION_COLUMNS)} (found: {', '.join(columns)})")
        has_id = "id" in columns
        for i, r in enumerate(records):
            value = r[col]
            if value is not None and not isinstance(value, str):
                raise QBenchError(f"prompt file {path!r} row {i + 1}: {col!r} must be a string, got {type(value).__name__} {str(value)[:40]}")
            text = " ".join((value or "").split())
            if not text:
                empty.append(i)
                continue
            if has_id and r["id"] is not None and (not isinstance(r["id"], (str, int)) or len(str(r["id"])) > MAX_ID_CHARS):
                raise QBenchError(f"prompt file {path!r} row {i + 1}: 'id' must be a string or integer of at most {MAX_ID_CHARS} characters, got {str(r['id'])[:40]!r}...")
            rows.append((i, f"{base}:{r['id']}" if has_id and r["id"] is not None else f"{base}:{i}", text))
    ids = [r[1] for r in rows]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise QBenchError(f"prompt file {path!r} has duplicate ids (e.g. {dup!r})")
    if empty:
        import logging

        shown = ", ".join(str(i + 1) for i in empty[:5]) + (" ..." if len(empty) > 5 else "")
        logging.getLogger("qbench").warning(f"prompt file {path}: skipped {len(empty)} empty row(s) ({shown}); the other rows keep their row numbers (and seeds)")
    return [Prompt(id=pid, text=text, index=row) for row, pid, text in rows]


# -- spec parsing --------------------------------------------------------------------------------------
def _split_limit(spec: str) -> tuple[str, int | None]:
    head, sep, tail = spec.rpartition(":")
    if sep and tail.strip().lstrip("-").isdigit():
        n = int(tail)
        if n <= 0:
            raise ConfigError(f"prompt spec {spec!r}: N must be a positive integer")
        return head, n
    return spec, None


def _looks_like_path(name: str) -> bool:
    return os.path.sep in name or name.lower().endswith(FILE_SUFFIXES) or os.path.exists(name)


def load_prompts(spec: str) -> list[Prompt]:
    """Prompts for a spec (see the module docstring); raises one clear QBenchError on bad input."""
    from qbench.catalog import PROMPTS

    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError("empty prompt spec")
    if len(spec) > 4096 or "\0" in spec:
        raise ConfigError(f"prompt spec {spec[:40]!r}...: too long or holds a NUL byte")
    name, n = _split_limit(spec.strip())
    if name.startswith("hf:"):
        from qbench.hubprompts import load_hf

        prompts = load_hf(name[3:])
    elif _looks_like_path(name):
        prompts = load_prompt_file(name)
    else:
        head, sep, tail = name.rpartition(":")
        if sep and name not in PROMPTS and head in PROMPTS:  # a known set with a bad count
            raise ConfigError(f"prompt spec {spec!r}: N must be a positive integer, got {tail!r} (e.g. {head}:8)")
        source: Callable[[], "tuple[Prompt, ...] | list[Prompt]"] = PROMPTS.get(name)
        prompts = list(source())
    if not prompts:
        raise QBenchError(f"prompt set {spec!r} is empty")
    if n is not None:
        if n > len(prompts):
            raise ConfigError(f"prompt set {name!r} has {len(prompts)} prompts; {n} requested")
        prompts = prompts[:n]
    return list(prompts)
