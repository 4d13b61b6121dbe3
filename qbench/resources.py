"""The data qbench ships, found the same way in a source checkout and in an installed wheel.

Three top-level folders of the repo hold data that commands read:

* ``datasets/`` — the COCO caption sets (``--prompts coco2017:N``, :mod:`qbench.prompts`);
* ``sweeps/`` — the sweep files (``qbench sweep toy`` / ``sweeps/toy.yaml``, :mod:`qbench.sweep`);
* ``reports/baselines/`` — the regression baselines (``qbench regress``, :mod:`qbench.regress`).

A wheel installs them as package data under qbench's own namespace, ``qbench/data/datasets``,
``qbench/data/sweeps`` and ``qbench/data/baselines`` (pyproject.toml's ``package-dir`` maps
``qbench.data.datasets`` to ``datasets/`` and so on; a top-level ``datasets`` package could never
ship: it is Hugging Face ``datasets``' own name). :func:`data_path` asks
:func:`importlib.resources.files` for ``qbench``'s copy first and, where there is none (a source
checkout, editable install or not), takes the folder of the checkout this ``qbench/`` sits in.
"""
from __future__ import annotations

import atexit
import contextlib
import os
import re
from functools import cache
from importlib import resources

#: shipped data kind -> its folder in the repo (relative to the checkout root)
SHIPPED = {"datasets": "datasets", "sweeps": "sweeps", "baselines": os.path.join("reports", "baselines")}

_files = contextlib.ExitStack()  # keeps files extracted by importlib.resources.as_file until exit
atexit.register(_files.close)


@cache
def checkout_root() -> str | None:
    """The root of the qbench source checkout this ``qbench/`` package is in — the folder above it
    holds a ``pyproject.toml`` naming the project ``qbench`` and the ``methods/`` folder — or None
    for an installed qbench (a wheel's ``qbench/`` sits in ``site-packages``)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    toml = os.path.join(root, "pyproject.toml")
    if not (os.path.isfile(toml) and os.path.isfile(os.path.join(root, "methods", "__init__.py"))):
        return None
    try:
        with open(toml, encoding="utf-8") as f:
            text = f.read(1 << 20)
    except OSError:
        return None
    return root if re.search(r'^name\s*=\s*"qbench"\s*$', text, re.MULTILINE) else None


def data_path(kind: str, *parts: str) -> str:
    """The file-system path of ``parts`` under the shipped data folder ``kind`` (a key of
    :data:`SHIPPED`): the installed package data (``qbench/data/<kind>/...``, via
    :mod:`importlib.resources`) if qbench has it, else the checkout's folder. The path may not
    exist (callers say what is missing); ``data_path(kind)`` alone is the folder. Raises
    ``KeyError`` for an unknown ``kind``."""
    rel = SHIPPED[kind]
    shipped = resources.files("qbench").joinpath("data", kind, *parts)
    if shipped.is_file():
        return str(_files.enter_context(resources.as_file(shipped)))
    if shipped.is_dir() and isinstance(shipped, os.PathLike):
        return os.fspath(shipped)
    root = checkout_root()
    if root is not None:
        return os.path.join(root, rel, *parts)
    return os.fspath(shipped) if isinstance(shipped, os.PathLike) else str(shipped)


def where() -> str:
    """Where the shipped data comes from, in words (for error messages)."""
    root = checkout_root()
    return f"the qbench checkout {root}" if root else "the installed qbench package (qbench/data)"
