"""Quantization core: bit specs, quantizer primitives, int packing, quantized layers, kernels.

Entry point: ``from qbench.quant.api import quantize_`` with a
:class:`qbench.quant.spec.QuantConfig`. Submodules are imported on use (this file imports
nothing heavy).
"""
from __future__ import annotations

from typing import Any

_EXPORTS = {
    "quantize_": "qbench.quant.api",
    "freeze_": "qbench.quant.api",
    "observe_": "qbench.quant.api",
    "QuantReport": "qbench.quant.api",
    "QuantConfig": "qbench.quant.spec",
    "BitSpec": "qbench.quant.spec",
    "QuantLinear": "qbench.quant.linear",
    "QuantConv2d": "qbench.quant.linear",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'qbench.quant' has no attribute {name!r}")
