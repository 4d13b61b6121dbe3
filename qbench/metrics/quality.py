"""Classical no-reference quality scores that need no downloads: BRISQUE and PIQE.

* BRISQUE (Mittal et al. 2012) via the ``brisque`` package and the SVM it ships; under numpy 2
  the package's feature vector holds 1-element arrays, so :class:`_Brisque` flattens it to
  float64 before scaling (the only change). Range about [0, 100] (can leave it), lower is better.
* PIQE (Venkatanath et al. 2015) via pyiqa's pure-torch ``piqe`` (MATLAB port); range [0, 100],
  lower is better. pyiqa is the optional extra ``qbench[pyiqa]`` (PolyForm-Noncommercial licence):
  without it PIQE is refused in one line naming the extra, before any image is generated.

As JAQ quality terms (higher is better) both are mapped by :func:`lower_better_to_quality`:
``q = 1 - score / 100`` (unclipped, so it stays an affine, order-reversing map; ~[0, 1]).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from qbench.metrics import common
from qbench.metrics.base import PerImageMetric


def lower_better_to_quality(scores) -> np.ndarray:
    """Pure function: a 0..100 lower-is-better score -> ``1 - s/100`` (higher is better)."""
    return 1.0 - np.asarray(scores, dtype=np.float64) / 100.0


_BRISQUE = None


def _brisque():
    global _BRISQUE
    if _BRISQUE is None:
        from itertools import chain

        from brisque import BRISQUE

        class _Brisque(BRISQUE):
            def calculate_brisque_features(self, image, kernel_size=7, sigma=7 / 6):
                feats = super().calculate_brisque_features(image, kernel_size=kernel_size, sigma=sigma)
                return np.array([float(np.asarray(f, dtype=np.float64).reshape(-1)[0]) for f in chain(feats)], dtype=np.float64)

        _BRISQUE = _Brisque(url=False)
    return _BRISQUE


def brisque_scores(images: Sequence[Any]) -> np.ndarray:
    """Per-image BRISQUE (lower is better) with the ``brisque`` package's shipped SVM."""
    model = _brisque()
    return np.array([float(model.score(common.to_uint8_array(im))) for im in images], dtype=np.float64)


def preflight_piqe() -> None:
    """Raise :class:`qbench.errors.ConfigError` (naming the extra) unless pyiqa can be imported."""
    from qbench.metrics.clipiqa_pyiqa import require_pyiqa

    require_pyiqa("PIQE")


def piqe_scores(images: Sequence[Any]) -> np.ndarray:
    """Per-image PIQE (float64, lower is better), pyiqa's implementation on float [0, 1] RGB.

    Raises :class:`qbench.errors.ConfigError` where the ``qbench[pyiqa]`` extra is absent."""
    import torch

    preflight_piqe()
    from pyiqa.archs.piqe_arch import piqe

    out = []
    with torch.inference_mode():
        for im in images:
            x = torch.from_numpy(common.to_unit_float_array(im)).permute(2, 0, 1)[None].double()
            out.append(float(piqe(x)[0].reshape(-1)[0]))
    return np.array(out, dtype=np.float64)


class BRISQUEMetric(PerImageMetric):
    name: ClassVar[str] = "brisque"
    description: ClassVar[str] = "BRISQUE no-reference quality (brisque package SVM; ~0-100, lower is better)"
    higher_is_better: ClassVar[bool] = False
    formula: ClassVar[str] = "BRISQUE score per image (brisque package, shipped LIVE SVM)"

    def score_batch(self, images, prompts, references=None) -> np.ndarray:
        return brisque_scores(images)

    def describe(self) -> dict[str, Any]:
        return {"network": "none (NSS features + shipped SVM)", "range": "~[0, 100]", "versions": common.versions("brisque", "numpy")}


class PIQEMetric(PerImageMetric):
    name: ClassVar[str] = "piqe"
    description: ClassVar[str] = "PIQE no-reference quality (pyiqa, extra qbench[pyiqa]; no weights; 0-100, lower is better)"
    higher_is_better: ClassVar[bool] = False
    formula: ClassVar[str] = "PIQE score per image (pyiqa piqe, block size 16)"

    @classmethod
    def preflight(cls, ctx, prompts) -> None:
        preflight_piqe()

    def __init__(self, ctx):
        preflight_piqe()
        super().__init__(ctx)

    def score_batch(self, images, prompts, references=None) -> np.ndarray:
        return piqe_scores(images)

    def describe(self) -> dict[str, Any]:
        return {"network": "none (block-wise distortion analysis)", "range": "[0, 100]", "versions": common.versions("pyiqa", "torch")}
