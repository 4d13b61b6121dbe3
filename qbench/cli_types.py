"""argparse value types of the command line, in a module of their own: the commands' own
argument parsers (report, export-results, regress) use them without importing the CLI."""
from __future__ import annotations

import argparse
import math


def _number(text: str, kind: type) -> float:
    try:
        v = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text[:40]!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text[:40]!r}")
    return v


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (``--gpus``, ``--repeats``, ...)."""
    v = int(_number(text, int))
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def nonneg_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    v = int(_number(text, int))
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


def bounded_int(lo: int, hi: int):
    """argparse type: an integer in [lo, hi] (``bench-kernels --repeats 1-1000``)."""

    def parse(text: str) -> int:
        v = int(_number(text, int))
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"must be from {lo} to {hi}, got {v}")
        return v

    return parse


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0 (``--tflops``)."""
    v = _number(text, float)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return v


def fraction(text: str) -> float:
    """argparse type: a number in (0, 1] (``--mfu``: a utilisation)."""
    v = _number(text, float)
    if not 0 < v <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return v


def id_list(text: str) -> str:
    """argparse type: comma-separated run ids with at least one id (``,,,`` compares nothing)."""
    if not [x for x in text.split(",") if x.strip()]:
        raise argparse.ArgumentTypeError(f"lists no run id: {text[:40]!r}")
    return text
