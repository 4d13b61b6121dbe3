"""qbench: evaluation and benchmarking of post-training quantization of few-step text-to-image
diffusion models.

The Python API (docs/api.md), each imported on first use so that ``import qbench`` stays cheap
(no torch): :func:`evaluate` (``qbench run``), :func:`compare` (``qbench compare`` as a pandas
DataFrame), :func:`quantize` (a registered method applied to a loaded pipeline),
:func:`load_pipeline` (a registered model's pipeline) and :func:`load_quantized` (a pipeline
written by ``qbench export``, :mod:`qbench.export`)."""
from __future__ import annotations

import os
import sys
from typing import Any

# GNU OpenMP (torch's CPU thread pool) reads OMP_WAIT_POLICY once, when torch loads it. Its default
# active wait made one CPU generation 170x slower (19.6 s vs 0.12 s for the same images) on a
# shared 2-core machine, so qbench asks for the passive wait unless the user chose otherwise. What
# torch actually got is recorded with every result (``provenance.omp_wait_policy``): when torch
# was imported before qbench, the environment of that moment.
OMP_WAIT_POLICY_AT_TORCH_LOAD: str | None = os.environ.get("OMP_WAIT_POLICY") if "torch" in sys.modules else None
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
if "torch" not in sys.modules:
    OMP_WAIT_POLICY_AT_TORCH_LOAD = os.environ["OMP_WAIT_POLICY"]


def _load_methods_of_this_checkout() -> None:
    """``qbench.methods`` from the ``methods/`` folder beside this ``qbench/`` folder, in a source
    checkout (pyproject.toml's ``package-dir`` maps ``qbench.methods`` to the top-level
    ``methods/``); nothing to do in an installed wheel, whose ``qbench/methods/`` imports normally.

    Without this, Python found ``qbench.methods`` through setuptools' editable finder, which knows
    only the checkout that was ``pip install -e``-ed: a second checkout (a git worktree) whose
    ``qbench`` came first on ``sys.path`` (the current folder of ``python -m pytest`` or ``python
    -c``, ``PYTHONPATH``) while that environment held the first checkout's editable install ran
    the second's harness with the first's method code, silently (the finder is appended to
    ``sys.meta_path``, so it answers only what the path finder cannot: ``qbench/`` has no
    ``methods`` subfolder)."""
    import importlib.util

    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(here)
    init = os.path.join(root, "methods", "__init__.py")
    if os.path.isdir(os.path.join(here, "methods")) or not (os.path.isfile(init) and os.path.isfile(os.path.join(root, "pyproject.toml"))):
        return
    spec = importlib.util.spec_from_file_location(__name__ + ".methods", init, submodule_search_locations=[os.path.dirname(init)])
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    globals()["methods"] = module  # what the import system sets on the parent package


_load_methods_of_this_checkout()


#: the public API: name -> the module that defines it (imported on first use)
_API = {"evaluate": "qbench.pyapi", "compare": "qbench.pyapi", "quantize": "qbench.pyapi", "load_pipeline": "qbench.pyapi",
        "load_quantized": "qbench.export"}
__all__ = list(_API)


def __getattr__(name: str) -> Any:
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'qbench' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
