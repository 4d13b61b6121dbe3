"""``fp``: full precision — the model in its native dtype, nothing changed.

The reference every other method is compared with (``fid-fp``, PSNR/SSIM/LPIPS to FP).
"""
from __future__ import annotations

from qbench.api import Method


class FullPrecision(Method):
    name = "fp"
    description = "full precision (the model's native dtype), no quantization"
