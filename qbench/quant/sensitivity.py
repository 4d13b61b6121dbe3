"""Per-layer sensitivity of a denoiser, one layer perturbed at a time (MixDQ's metric-decoupled
analysis, ECCV 2024 §4.2; public code ``mixed_precision_scripts/get_sensitivity``).

Two kinds of measurement, each cached per (key, prompt) in a resumable
:class:`~qbench.calibctx.ScoreCache` (``key`` names the layer, the quantized tensor and the width):

* **image scores** (MixDQ's "content" layers: SSIM of the generated image against the
  full-precision image of the same prompt and seed): the whole pipeline runs with the perturbation
  applied; only the prompts missing from the cache are generated.
* **output SQNR** (MixDQ's "quality" layers): the denoiser's full-precision calls of the
  calibration trajectories are captured once (:func:`capture_calls`: positional and keyword
  inputs, output) and replayed with the perturbation. What is cached per prompt is the error
  energy ``sum (p - t)^2`` over that prompt's outputs at every step (:func:`per_prompt_energy`),
  and once the signal energy ``sum t^2``; the layer's score is ONE SQNR over the whole batch,
  ``10 log10(sum_i signal_i / sum_i error_i)`` (:func:`qbench.quant.allocate.sqnr_of_energies`),
  capped at ``SQNR_CAP`` dB (a layer whose quantization changes nothing would be +inf): MixDQ's
  ``quant_quality.py`` calls its ``LossFunction`` once on the whole batch of saved UNet inputs
  and outputs, not per input. (A mean of per-prompt dB would weight a prompt whose output is
  small, where the same error costs more dB, like any other.)

**Prefix reuse** (result-preserving): the units of the denoiser before the perturbed layer are served
from recorded full-precision outputs (:class:`qbench.quant.capture.PrefixCache`), in the replays and
in the first step of every image; the scores are bit-identical (tested).

A perturbation is a context-manager factory (``apply() -> ContextManager``), e.g.
:func:`swap_module` (a quantized copy of one layer) or :func:`quantized_input` (fake-quantized
input activations of one layer, weights untouched).
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager as ContextManager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from qbench.quant.allocate import sqnr
from qbench.quant.capture import (  # noqa: F401 - re-exported: the sensitivity pass's building blocks
    CapturedCall,
    PrefixCache,
    capture_calls,
    denoiser_units,
    first_call,
    forward_with_hooks,
    recording,
    replay_outputs,
    same_inputs,
)

SQNR_CAP = 200.0  # dB


def activation_sizes(denoiser: nn.Module, names: Sequence[str], args: tuple, kwargs: dict[str, Any]) -> dict[str, int]:
    """Per layer, the number of elements of its input activation for ONE sample (the first input's
    numel divided by its leading batch dimension), from one full-precision forward of
    ``denoiser(*args, **kwargs)`` with hooks: MixDQ's activation budget weights layers by this
    size (``tensor_ratio/*/act_ratio_config.yaml``: e.g. SDXL-Turbo's ``conv_in`` 4x64x64 / 320 =
    51.2). A layer the forward never calls gets 0 (it holds no activation to budget)."""
    sizes: dict[str, int] = {}
    hooks = []
    for n in names:
        def pre(mod, a, n=n):
            x = a[0]
            sizes.setdefault(n, int(x.numel() // max(1, x.shape[0])))
        hooks.append(denoiser.get_submodule(n).register_forward_pre_hook(pre))
    forward_with_hooks(denoiser, hooks, args, kwargs)
    return {n: sizes.get(n, 0) for n in names}




def per_prompt_energy(outputs: Sequence[torch.Tensor] | None, calls: Sequence[CapturedCall], n_prompts: int) -> np.ndarray:
    """Per prompt, float64 ``sum (p - t)^2`` over all of its output rows (every step), or with
    ``outputs=None`` the signal energy ``sum t^2`` of the captured outputs -> array ``(n_prompts,)``."""
    out = np.zeros(n_prompts, dtype=np.float64)
    for i, c in enumerate(calls):
        t = c.output.double()
        d = t if outputs is None else outputs[i].double() - t
        e = (d * d).reshape(d.shape[0], -1).sum(dim=1)
        for r, p in enumerate(c.rows):
            out[p] += float(e[r])
    return out


def per_prompt_sqnr(outputs: Sequence[torch.Tensor], calls: Sequence[CapturedCall], n_prompts: int, cap: float = SQNR_CAP) -> np.ndarray:
    """SQNR per prompt over all of its output rows (every step), in dB, capped at ``cap``."""
    preds: list[list[torch.Tensor]] = [[] for _ in range(n_prompts)]
    targets: list[list[torch.Tensor]] = [[] for _ in range(n_prompts)]
    for out, c in zip(outputs, calls):
        for r, p in enumerate(c.rows):
            preds[p].append(out[r].flatten())
            targets[p].append(c.output[r].flatten())
    return np.array([sqnr(torch.cat(preds[i]), torch.cat(targets[i]), cap=cap) for i in range(n_prompts)])


def set_module(root: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Replace the submodule ``name`` of ``root`` by ``new``; returns the old one."""
    parent_name, _, attr = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    old = getattr(parent, attr)
    setattr(parent, attr, new)
    return old


@contextlib.contextmanager
def swap_module(root: nn.Module, name: str, new: nn.Module):
    """Replace the submodule ``name`` of ``root`` by ``new`` while active."""
    old = set_module(root, name, new)
    try:
        yield new
    finally:
        set_module(root, name, old)


@contextlib.contextmanager
def quantized_input(mod: nn.Module, quantize: Callable[[torch.Tensor], torch.Tensor]):
    """Replace the first positional input ``x`` of ``mod`` by ``quantize(x)`` while active."""
    def hook(m, args):
        return (quantize(args[0]),) + tuple(args[1:])

    h = mod.register_forward_pre_hook(hook)
    try:
        yield mod
    finally:
        h.remove()


@dataclass
class Runner:
    """Measures perturbations on the calibration prompts, with a cache, progress and counts.

    ``generate(prompts) -> images`` runs the (perturbed) pipeline; ``references`` / ``calls`` are
    callables giving the full-precision images and captured denoiser calls (made on first use).
    """

    prompts: list[Any]
    generate: Callable[[list[Any]], list[Any]]
    references: Callable[[], list[Any]]
    calls: Callable[[], list[CapturedCall]]
    denoiser: nn.Module
    cache: Any  # qbench.calibctx.ScoreCache
    batch: int = 8
    images_generated: int = 0
    forward_passes: int = 0
    computed: int = 0
    reused: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    reuse_prefix: bool = True
    prefix: PrefixCache | None = None

    def missing(self, key: str) -> list[int]:
        return [i for i, p in enumerate(self.prompts) if (key, p.id) not in self.cache]

    def prefix_cache(self) -> PrefixCache:
        """The :class:`PrefixCache` of the captured calls (recorded on first use: one replay)."""
        if self.prefix is None:
            calls = self.calls()
            self.prefix = PrefixCache(self.denoiser, calls)
            self.forward_passes += len(calls)
        return self.prefix

    def image_scores(self, key: str, apply: Callable[[], ContextManager], score: Callable[[list[Any], list[Any], list[Any]], Sequence[float]],
                     kind: str = "image", layer: str | None = None) -> np.ndarray:
        """Per-prompt ``score(images, prompts, fp_images)`` of the pipeline under ``apply()``; with
        ``layer`` (the one perturbed) and ``reuse_prefix``, the first step's units before it are
        served from the :class:`PrefixCache` (:meth:`PrefixCache.serving`: same images)."""
        todo = self.missing(key)
        if todo:
            t = time.perf_counter()
            refs = self.references()
            serve = self.prefix_cache().serving(layer) if (self.reuse_prefix and layer is not None) else contextlib.nullcontext()
            with apply(), serve:
                for j in range(0, len(todo), self.batch):
                    idx = todo[j:j + self.batch]
                    ps = [self.prompts[i] for i in idx]
                    ims = self.generate(ps)
                    self.images_generated += len(ims)
                    s = score(ims, ps, [refs[i] for i in idx])
                    self.cache.put([(key, p.id, float(v)) for p, v in zip(ps, s)])
            self.computed += 1
            self.seconds[kind] = self.seconds.get(kind, 0.0) + time.perf_counter() - t
        else:
            self.reused += 1
        return np.array([self.cache.get(key, p.id) for p in self.prompts])

    def signal(self, key: str = "signal") -> np.ndarray:
        """Per-prompt signal energy ``sum t^2`` of the full-precision denoiser outputs (cached)."""
        if self.missing(key):
            s = per_prompt_energy(None, self.calls(), len(self.prompts))
            self.cache.put([(key, p.id, float(v)) for p, v in zip(self.prompts, s)])
        return np.array([self.cache.get(key, p.id) for p in self.prompts])

    def output_error(self, key: str, apply: Callable[[], ContextManager], layer: str | None = None) -> np.ndarray:
        """Per-prompt error energy ``sum (p - t)^2`` of the denoiser output under ``apply()`` on
        the captured calls (cached); with ``layer`` (the perturbed one) and ``reuse_prefix`` the
        units before it are served from the :class:`PrefixCache` (same result, less work)."""
        if self.missing(key):
            t = time.perf_counter()
            calls = self.calls()
            if self.reuse_prefix and layer is not None:
                self.prefix_cache()
            with apply():
                outs = self.prefix.replay(layer, calls) if (self.prefix is not None and layer is not None) else replay_outputs(self.denoiser, calls)
            self.forward_passes += len(calls)
            s = per_prompt_energy(outs, calls, len(self.prompts))
            self.cache.put([(key, p.id, float(v)) for p, v in zip(self.prompts, s)])
            self.computed += 1
            self.seconds["sqnr"] = self.seconds.get("sqnr", 0.0) + time.perf_counter() - t
        else:
            self.reused += 1
        return np.array([self.cache.get(key, p.id) for p in self.prompts])
