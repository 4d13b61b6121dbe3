"""qbench: evaluation and benchmarking of post-training quantization of few-step text-to-image
diffusion models. ``import qbench`` is cheap; :func:`load_quantized` (a pipeline written by
``qbench export``, :mod:`qbench.export`) is imported on first use."""
from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "load_quantized":
        from qbench.export import load_quantized

        return load_quantized
    raise AttributeError(f"module 'qbench' has no attribute {name!r}")
