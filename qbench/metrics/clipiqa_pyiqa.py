"""The optional pyiqa extra (``pip install 'qbench[pyiqa]'``): its gate and pyiqa's CLIP-IQA network.

pyiqa (chaofengc/IQA-PyTorch) is licensed PolyForm-Noncommercial-1.0.0 and pulls in about 1 GB of
dependencies, so qbench's defaults never need it. It serves two opt-in uses:

* ``-M clipiqa_impl=pyiqa``: pyiqa's ``clipiqa`` arch (model_type ``clipiqa``, native resolution,
  ``pos_embedding=False``, logit scale ``exp(logit_scale)`` of the checkpoint) on the backbone that
  :func:`qbench.metrics.clipiqa.resolve_backbone` resolves, with qbench's prompt set; used to
  cross-check qbench's own CLIP-IQA and for ViT backbones;
* the ``piqe`` metric and JAQ's ``-M jaq_quality=piqe`` (:mod:`qbench.metrics.quality`).

Where pyiqa is absent (or cannot be imported) each refuses in one line naming the extra.
"""
from __future__ import annotations

import os
from typing import Any

from qbench.api import MetricContext
from qbench.errors import ConfigError
from qbench.metrics import common

EXTRA = "pip install 'qbench[pyiqa]'"


def require_pyiqa(what: str, clip: bool = False) -> None:
    """Raise :class:`ConfigError` (one line naming the extra) unless pyiqa imports; with ``clip``,
    also its CLIP code, which imports OpenAI's ``clip`` package, which needs ``pkg_resources``
    (gone from setuptools 81 on): that failure is named too rather than shown as a traceback.
    (PIQE needs no CLIP: pyiqa imports its archs lazily.)"""
    import importlib

    try:
        importlib.import_module("pyiqa")
        if clip:
            importlib.import_module("pyiqa.archs.clip_imports")
    except ModuleNotFoundError as e:
        if e.name == "pkg_resources":
            raise ConfigError(
                f"{what} needs pyiqa's CLIP, whose `clip` dependency imports pkg_resources, which setuptools>=81 no longer ships: "
                "pip install 'setuptools<81' in this environment (pyiqa is the optional extra qbench[pyiqa])"
            ) from None
        raise ConfigError(f"{what} needs the optional pyiqa extra (PolyForm-Noncommercial licence): {EXTRA}") from None


_PYIQA: dict[tuple[str, str, str], Any] = {}


class PyiqaCLIPIQA:
    """pyiqa's ``clipiqa`` network with the given flat prompt list ``(pos, neg, pos, neg, ...)``.

    ``score_tensor(x)``: ``(N, 3, H, W)`` float [0, 1] tensor -> ``(N,)`` float64 numpy scores."""

    def __init__(self, ctx: MetricContext, prompts: list[str], device: str, backbone: tuple[str, dict[str, Any]]):
        """``backbone``: ``(local path, provenance)`` from :func:`qbench.metrics.clipiqa.resolve_backbone`."""
        require_pyiqa("-M clipiqa_impl=pyiqa", clip=True)
        import torch

        from qbench.metrics.clip_models import read_backbone

        path, prov = backbone
        key = (os.path.realpath(path), "\n".join(prompts), device)
        if key not in _PYIQA:
            from unittest import mock

            import pyiqa
            from pyiqa.archs import clipiqa_arch
            from pyiqa.archs.clip_imports import clip
            from pyiqa.archs.clip_model import build_model

            state, how = read_backbone(path)
            # pyiqa's CLIPIQA calls clip_model.load(backbone, "cpu"), which would open the file itself
            # (torch.jit.load, then torch.load): hand it the CLIP rebuilt from the tensors read above
            with mock.patch.object(clipiqa_arch, "load", lambda name, device="cpu", **kw: build_model(dict(state)).to(device).float()):
                metric = pyiqa.create_metric("clipiqa", device=torch.device(device), backbone=path)
            metric.net.prompt_pairs = clip.tokenize(prompts)  # pyiqa reads this attribute in forward()
            _PYIQA[key] = (metric, how)
        self._metric, how = _PYIQA[key]
        self.details: dict[str, Any] = {
            "network": "pyiqa CLIPIQA (model_type clipiqa, native resolution, pos_embedding=False)",
            "preprocess": "no resize; (x - OpenAI CLIP mean) / std",
            "versions": common.versions("torch", "pyiqa"),
            "licence": "pyiqa: PolyForm-Noncommercial-1.0.0",
        }
        common.merge_provenance(self.details, "clipiqa_backbone", {**prov, "read_as": how})

    def score_tensor(self, x):
        return self._metric(x).reshape(-1).double().cpu().numpy()
