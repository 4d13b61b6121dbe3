"""qbench: evaluation and benchmarking of post-training quantization of few-step text-to-image
diffusion models. ``import qbench`` is cheap; :func:`load_quantized` (a pipeline written by
``qbench export``, :mod:`qbench.export`) is imported on first use."""
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


def __getattr__(name: str) -> Any:
    if name == "load_quantized":
        from qbench.export import load_quantized

        return load_quantized
    raise AttributeError(f"module 'qbench' has no attribute {name!r}")
