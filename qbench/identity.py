"""One identity for every artefact: what made it, as a key.

A benchmark that serves yesterday's number for today's inputs is worse than none. Every artefact
qbench reuses — generated images, FID reference statistics, Q-Sched checkpoints, MixDQ allocations,
calibration score caches, finished sweep cells / stored runs — is keyed here, from its declared
inputs only:

* **inputs** — every option value and setting that changes it (JSON; canonical, sorted keys);
* **files** — the content (sha256) of every file it reads: prompt files, weights folders, layer /
  allocation files, checkpoints, reference image folders (:func:`file_digest`, :func:`tree_digest`);
* **code** — per component, a digest of the source of the modules that compute it and of every
  qbench module they import (by AST, module- and function-level imports; :func:`code_digest`),
  not the whole tree: adding a method file changes no other method's key;
* **libraries** — the versions of the libraries that change its bits (:func:`library_versions`).

:class:`Identity` turns these into a key (sha256 of the canonical JSON). "Finished" / "cached"
means a stored artefact whose key equals the key the current inputs give; an artefact under
another key is recomputed, never reused. Where a user names a file explicitly (``-O
qsched_ckpt=FILE``) it is used as given and labelled by its content hash (a ``files`` entry).

Modules that cannot change a number (the registry, the CLI, tables, reports, the store, progress
bars, this module) are left out of code digests (:data:`NOT_NUMERIC`): editing a table layout does
not invalidate images. A module may also name, in a module-level ``NOT_NUMERIC_IMPORTS`` tuple,
qbench modules it imports for something that cannot change a number (the model loader imports the
quantizer's API only to guard ``save_pretrained``). :data:`KEY_VERSION` changes when the key scheme itself changes.
"""
from __future__ import annotations

import ast
import hashlib
import json
import os
import stat as _stat
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Iterable

KEY_VERSION = 2
#: qbench modules whose code cannot change a generated pixel, a score or a statistic
NOT_NUMERIC = (
    "qbench", "qbench.catalog", "qbench.registry", "qbench.errors", "qbench.progress", "qbench.cli", "qbench.__main__",
    "qbench.store", "qbench.report", "qbench.report_figures", "qbench.report_html", "qbench.comparison", "qbench.compare_table",
    "qbench.tables", "qbench.plots", "qbench.grids", "qbench.liveness", "qbench.results_export", "qbench.regress",
    "qbench.identity", "qbench.fsutil", "qbench.sweep", "qbench.costs", "qbench.preflight", "qbench.export",
    "qbench.harness", "qbench.phases", "qbench.dist", "qbench.options",
)
NOT_NUMERIC_PREFIXES = ("qbench.cli", "qbench.store", "qbench.zoo.train", "qbench.zoo.ship")
#: libraries whose versions change generated images
GENERATION_LIBRARIES = ("torch", "diffusers", "transformers", "peft", "accelerate")
#: libraries whose versions change metric values (beside the generation libraries' torch)
METRIC_LIBRARIES = ("torch", "torchvision", "numpy", "scipy", "pillow", "open_clip_torch", "torchmetrics", "scikit-image", "transformers")


def canonical(obj: Any) -> str:
    """Canonical JSON of ``obj`` (sorted keys; non-JSON values by ``str``; NaN refused)."""
    return json.dumps(obj, sort_keys=True, default=str, allow_nan=False, separators=(",", ":"))


def digest(obj: Any, n: int = 16) -> str:
    """sha256 (hex, first ``n`` characters) of the canonical JSON of ``obj``."""
    return hashlib.sha256(canonical(obj).encode()).hexdigest()[:n]


# -- file content --------------------------------------------------------------------------------
_MEMO_MIN = 64 * 2**20  # files at least this large keep their digest in an on-disk memo


def _stat_key(st: os.stat_result) -> tuple[int, int, int, int, int]:
    """What changes whenever a file's content can have changed: a write moves mtime and ctime
    (ctime cannot be set back by a user), a replacement changes the inode."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@lru_cache(maxsize=4096)
def _sha_file(path: str, key: tuple[int, ...]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _memo_path(path: str, key: tuple[int, ...]) -> str:
    root = os.environ.get("QBENCH_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "qbench")
    return os.path.join(root, "digests", digest([os.path.realpath(path), list(key)], 32))


def file_digest(path: str) -> str:
    """sha256 (hex) of the whole content of the regular file ``path``. Digests of files of 64 MiB
    and more are remembered on disk (``$QBENCH_CACHE/digests``) under the file's (device, inode,
    size, mtime, ctime), so multi-GB weights are read once; any write to the file changes that
    stat key. Raises OSError (missing file, not a regular file)."""
    st = os.stat(path)
    if not _stat.S_ISREG(st.st_mode):
        raise OSError(f"{path} is not a regular file")
    key = _stat_key(st)
    if st.st_size < _MEMO_MIN:
        return _sha_file(path, key)
    memo = _memo_path(path, key)
    try:
        with open(memo, encoding="ascii") as f:
            value = f.read().strip()
        if len(value) == 64:
            return value
    except OSError:
        pass
    value = _sha_file(path, key)
    try:
        from qbench.fsutil import atomic_write_text

        os.makedirs(os.path.dirname(memo), exist_ok=True)
        atomic_write_text(memo, value)
    except OSError:  # a read-only cache only costs the next run another read
        pass
    return value


@dataclass
class TreeDigest:
    """Content of a folder: ``digest`` over (relative path, sha256) of the files taken, in sorted
    order; ``files`` those pairs; ``skipped`` what was not taken and why (relative path -> reason)."""

    digest: str
    files: list[tuple[str, str]]
    skipped: dict[str, str] = field(default_factory=dict)


def tree_digest(folder: str, *, suffixes: tuple[str, ...] | None = None, recursive: bool = True) -> TreeDigest:
    """Digest of the regular files under ``folder`` (hidden files and symlinks skipped; with
    ``suffixes``, only names ending in one of them, case-insensitive; ``recursive=False``: the
    top level only, subfolders reported as skipped)."""
    taken: list[tuple[str, str]] = []
    skipped: dict[str, str] = {}
    for d, dirs, files in os.walk(folder):
        dirs.sort()
        rel_d = os.path.relpath(d, folder)
        if not recursive and rel_d != ".":
            continue
        if not recursive:
            for sub in dirs:
                skipped[sub + "/"] = "subfolder (not read)"
        for name in sorted(files):
            p = os.path.join(d, name)
            rel = os.path.normpath(os.path.join(rel_d, name))
            if name.startswith("."):
                continue
            if os.path.islink(p) or not os.path.isfile(p):
                skipped[rel] = "not a regular file"
            elif suffixes and not name.lower().endswith(suffixes):
                skipped[rel] = "not an image file (" + ", ".join(suffixes) + ")"
            else:
                taken.append((rel, file_digest(p)))
    return TreeDigest(digest([list(t) for t in taken]), taken, skipped)


def path_digest(value: Any) -> str | None:
    """Content digest of ``value`` when it names an existing local file or folder, else None
    (e.g. a hub name or an option that is not a path)."""
    if not isinstance(value, str) or not value or len(value) > 4096:
        return None
    try:
        if os.path.isfile(value):
            return file_digest(value)
        if os.path.isdir(value):
            return tree_digest(value).digest
    except OSError:
        return None
    return None


def option_files(options: dict[str, Any], declared: Iterable[Any]) -> dict[str, str]:
    """``{option: content digest}`` of the options declared as paths (``Opt.path``) whose value
    names a local file or folder."""
    paths = {o.name for o in declared if getattr(o, "path", False)}
    out = {}
    for k in sorted(paths & set(options)):
        d = path_digest(options[k])
        if d is not None:
            out[k] = d
    return out


# -- code ----------------------------------------------------------------------------------------
def _module_file(name: str) -> str | None:
    import importlib.util

    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    origin = getattr(spec, "origin", None) if spec is not None else None
    return origin if origin and origin.endswith(".py") and os.path.isfile(origin) else None


def _imports_of(name: str, path: str) -> set[str]:
    """qbench modules ``name`` imports (module- and function-level), resolved to modules."""
    with open(path, "rb") as f:
        tree = ast.parse(f.read(), filename=path)
    pkg = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    out: set[str] = set()
    ignored: set[str] = set()
    for node in tree.body:  # NOT_NUMERIC_IMPORTS = ("qbench.x", ...): imports that cannot change a number
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == "NOT_NUMERIC_IMPORTS" for t in targets) and node.value is not None:
                ignored |= {c.value for c in ast.walk(node.value) if isinstance(c, ast.Constant) and isinstance(c.value, str)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = pkg.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)  # `from pkg import module`
    return {m for m in out if (m == "qbench" or m.startswith("qbench.")) and m not in ignored and m.rpartition(".")[0] not in ignored}


def _numeric(name: str) -> bool:
    return name not in NOT_NUMERIC and not name.startswith(NOT_NUMERIC_PREFIXES)


@lru_cache(maxsize=None)
def _closure(roots: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    seen: dict[str, str] = {}
    todo = [r for r in roots]
    while todo:
        name = todo.pop()
        if name in seen or not _numeric(name):
            continue
        path = _module_file(name)
        if path is None:  # an attribute imported from a module (``from qbench.x import f``)
            continue
        seen[name] = path
        todo.extend(sorted(_imports_of(name, path) - set(seen)))
    return tuple(sorted(seen.items()))


def code_modules(modules: Iterable[str]) -> list[str]:
    """The qbench modules whose code ``modules`` run: themselves and everything they import,
    transitively, less :data:`NOT_NUMERIC`."""
    return [m for m, _ in _closure(tuple(sorted(set(modules))))]


def code_digest(modules: Iterable[str]) -> str:
    """Digest of the source of :func:`code_modules` (module name + file content each)."""
    h = hashlib.sha256()
    for name, path in _closure(tuple(sorted(set(modules)))):
        h.update(name.encode() + b"\0")
        h.update(bytes.fromhex(_sha_file(path, _stat_key(os.stat(path)))))
    return h.hexdigest()[:16]


def library_versions(names: Iterable[str]) -> dict[str, str | None]:
    """Installed versions of ``names`` (distribution names; None when not installed)."""
    from importlib import metadata

    out: dict[str, str | None] = {}
    for n in sorted(set(names)):
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            out[n] = None
    return out


# -- the identity ----------------------------------------------------------------------------------
@dataclass
class Identity:
    """What made an artefact of kind ``kind``; :attr:`key` is its cache key."""

    kind: str
    inputs: dict[str, Any]
    files: dict[str, str] = field(default_factory=dict)  # input name -> content sha256
    code: dict[str, str] = field(default_factory=dict)  # component -> code_digest
    libraries: dict[str, str | None] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "key_version": KEY_VERSION, "inputs": self.inputs, "files": self.files, "code": self.code,
                "libraries": self.libraries}

    @property
    def key(self) -> str:
        return digest(self.to_dict())

    def record(self) -> dict[str, Any]:
        """What a run stores about an artefact it used: kind, key and the parts."""
        return {"key": self.key, **self.to_dict()}

    def diff(self, other: dict[str, Any]) -> list[str]:
        """Top-level parts (``inputs.steps``, ``code.method``, ...) that differ from a stored
        :meth:`to_dict` — to say why a stored artefact was not reused."""
        mine = self.to_dict()
        out = []
        for part in ("inputs", "files", "code", "libraries"):
            a, b = mine.get(part) or {}, (other or {}).get(part) or {}
            out += [f"{part}.{k}" for k in sorted(set(a) | set(b)) if canonical(a.get(k)) != canonical(b.get(k))]
        return out


def make(kind: str, inputs: dict[str, Any], *, files: dict[str, str] | None = None, code: dict[str, Iterable[str]] | None = None,
         libraries: Iterable[str] = ()) -> Identity:
    """An :class:`Identity`: ``code`` maps each component to the modules that compute it."""
    return Identity(kind, json.loads(canonical(inputs)), dict(files or {}),
                    {c: code_digest(mods) for c, mods in sorted((code or {}).items())}, library_versions(libraries))
