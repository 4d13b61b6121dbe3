"""The installed dependency tree of qbench: every package it pulls in, its licence and its size on disk.

Run with the Python of the environment to measure (it reads that environment's metadata)::

    .venv/bin/python tools/deps_report.py                  # runtime tree of `pip install qbench`
    .venv/bin/python tools/deps_report.py --extras pyiqa   # ... with the pyiqa extra
    .venv/bin/python tools/deps_report.py --json out.json  # also as JSON (per package)

* Tree: qbench's ``Requires-Dist`` (with the given extras), followed recursively through each
  installed package's ``Requires-Dist`` with environment markers evaluated (``packaging``), so a
  package the environment holds but qbench does not need is left out.
* Size: the sum of the files each package's ``RECORD`` lists, as they lie on disk (``stat``); the
  total counts a path once even where two packages write it (opencv-python and
  opencv-python-headless both write ``cv2/``).
* Licence: the ``License-Expression`` metadata field (PEP 639) where set, else the ``License``
  field's first line, else the ``License ::`` trove classifiers, else ``?``.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from importlib import metadata

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


def licence_of(dist: metadata.Distribution) -> str:
    """The licence a distribution declares (see the module docstring for the order)."""
    meta = dist.metadata
    expr = meta.get("License-Expression")
    if expr:
        return expr.strip()
    text = (meta.get("License") or "").strip()
    if text and "\n" not in text and len(text) <= 40 and text.upper() != "UNKNOWN":
        return text
    classifiers = [c.split("::")[-1].strip() for c in meta.get_all("Classifier") or [] if c.startswith("License ::")]
    if classifiers:
        return "; ".join(classifiers)
    folder = getattr(dist, "_path", None)  # the .dist-info folder (importlib.metadata.PathDistribution)
    for name in (meta.get_all("License-File") or []) if folder else []:  # no licence field: name the text's kind
        for cand in (os.path.join(folder, "licenses", name), os.path.join(folder, name)):
            if os.path.isfile(cand):
                with open(cand, encoding="utf-8", errors="replace") as f:
                    head = f.read(4000)
                for pattern, label in LICENCE_TEXTS:
                    if re.search(pattern, head):
                        return f"{label} (licence file)"
    return "?"


#: (regex on the start of a licence file, its SPDX name), for packages whose metadata names none
LICENCE_TEXTS = (
    (r"Apache License\s+Version 2\.0", "Apache-2.0"),
    (r"Redistribution and use in source and binary forms.*\n(.*\n)*.*Neither the name", "BSD-3-Clause"),
    (r"Redistribution and use in source and binary forms", "BSD-2-Clause"),
    (r"Permission is hereby granted, free of charge", "MIT"),
)


def files_of(dist: metadata.Distribution) -> list[str]:
    """Absolute paths of the files a distribution's RECORD lists that exist on disk."""
    out = []
    for f in dist.files or []:
        p = os.path.realpath(str(dist.locate_file(f)))
        if os.path.isfile(p):
            out.append(p)
    return out


def tree(root: str, extras: tuple[str, ...]) -> dict[str, tuple[metadata.Distribution, set[str]]]:
    """{canonical name: (distribution, names of the packages that require it)} reachable from ``root``."""
    dists = {canonicalize_name(d.metadata["Name"]): d for d in metadata.distributions()}
    seen: dict[str, tuple[metadata.Distribution, set[str]]] = {}
    todo: list[tuple[str, tuple[str, ...], str]] = [(canonicalize_name(root), extras, "")]
    while todo:
        name, wanted, parent = todo.pop()
        if name not in dists:
            continue
        if name in seen:
            seen[name][1].add(parent)
            if not wanted:
                continue
        else:
            seen[name] = (dists[name], {parent} if parent else set())
        for line in dists[name].requires or []:
            req = Requirement(line)
            envs = [{"extra": e} for e in wanted] or [{"extra": ""}]
            if req.marker is None or any(req.marker.evaluate(env) for env in envs):
                child = canonicalize_name(req.name)
                if child not in seen:
                    todo.append((child, tuple(req.extras), name))
                else:
                    seen[child][1].add(name)
                    if req.extras:
                        todo.append((child, tuple(req.extras), name))
    return seen


def report(extras: tuple[str, ...]) -> dict:
    found = tree("qbench", extras)
    rows, all_files = [], set()
    for name, (dist, parents) in sorted(found.items()):
        files = files_of(dist)
        all_files.update(files)
        rows.append({
            "name": dist.metadata["Name"], "version": dist.version, "licence": licence_of(dist),
            "bytes": sum(os.path.getsize(f) for f in files), "required_by": sorted(parents),
        })
    return {"extras": list(extras), "packages": rows, "n_packages": len(rows),
            "total_bytes": sum(os.path.getsize(f) for f in all_files), "python": sys.executable}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--extras", default="", help="comma-separated extras of qbench to include (e.g. pyiqa,test)")
    ap.add_argument("--json", help="also write the per-package report as JSON here")
    args = ap.parse_args(argv)
    extras = tuple(e for e in args.extras.split(",") if e)
    rep = report(extras)
    for r in sorted(rep["packages"], key=lambda r: -r["bytes"]):
        print(f"{r['bytes'] / 2**20:9.1f} MiB  {r['name']:<28} {r['version']:<14} {r['licence']}")
    print(f"{rep['total_bytes'] / 2**20:9.1f} MiB  total, {rep['n_packages']} packages (qbench{'[' + ','.join(extras) + ']' if extras else ''})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rep, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
