"""Per-layer sensitivity of a denoiser, one layer perturbed at a time (MixDQ's metric-decoupled
analysis, ECCV 2024 §4.2; public code ``mixed_precision_scripts/get_sensitivity``).

Two kinds of measurement, each cached per (key, prompt) in a resumable
:class:`~qbench.calibctx.ScoreCache` (``key`` names the layer, the quantized tensor and the width):

* **image scores** (MixDQ's "content" layers: SSIM of the generated image against the
  full-precision image of the same prompt and seed): the whole pipeline runs with the perturbation
  applied; only the prompts missing from the cache are generated.
* **output SQNR** (MixDQ's "quality" layers): the denoiser's full-precision calls of the
  calibration trajectories are captured once (:func:`capture_calls`: positional and keyword
  inputs, output) and replayed with the perturbation; per prompt,
  ``10 log10(sum t^2 / sum (p - t)^2)`` over that prompt's outputs at every step
  (:func:`qbench.quant.allocate.sqnr`), capped at ``SQNR_CAP`` dB (a layer whose quantization
  changes nothing would be +inf). MixDQ likewise averages per-input SQNR over captured UNet inputs.

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
from torch.utils._pytree import tree_map

from qbench.errors import QBenchError
from qbench.quant.allocate import sqnr

SQNR_CAP = 200.0  # dB


@dataclass
class CapturedCall:
    """One denoiser call of a generation: its inputs, full-precision output and which prompt (index
    into the generated prompt list) each output row belongs to."""

    args: tuple
    kwargs: dict[str, Any]
    output: torch.Tensor
    rows: list[int]


def _clone(x: Any) -> Any:
    return tree_map(lambda t: t.detach().clone() if isinstance(t, torch.Tensor) else t, x)


def _first(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)):
        return out[0]
    return out.sample  # diffusers output dataclasses


@contextlib.contextmanager
def recording(denoiser: nn.Module, sink: list[CapturedCall], offset: int, n_prompts: int):
    """Record every call of ``denoiser`` into ``sink`` while active; row r of a call belongs to
    prompt ``offset + r`` (batch = prompts) or ``offset + r % n_prompts`` (classifier-free
    guidance doubles the batch)."""
    pending: list[tuple[tuple, dict]] = []

    def pre(mod, args, kwargs):
        pending.append((_clone(args), _clone(kwargs)))

    def post(mod, args, kwargs, out):
        a, k = pending.pop()
        o = _first(out).detach().clone()
        r = o.shape[0]
        if r % n_prompts:
            raise QBenchError(f"sensitivity: a denoiser batch of {r} rows for {n_prompts} prompts cannot be mapped to prompts")
        sink.append(CapturedCall(a, k, o, [offset + (i % n_prompts) for i in range(r)]))

    h1 = denoiser.register_forward_pre_hook(pre, with_kwargs=True)
    h2 = denoiser.register_forward_hook(post, with_kwargs=True)
    try:
        yield sink
    finally:
        h1.remove()
        h2.remove()


def capture_calls(denoiser: nn.Module, generate: Callable[[list[Any]], list[Any]], prompts: Sequence[Any], batch: int) -> tuple[list[Any], list[CapturedCall]]:
    """Generate ``prompts`` in batches of ``batch`` with ``generate`` (full precision) while
    recording the denoiser -> (images, calls)."""
    images: list[Any] = []
    calls: list[CapturedCall] = []
    for i in range(0, len(prompts), batch):
        chunk = list(prompts[i:i + batch])
        with recording(denoiser, calls, i, len(chunk)):
            images.extend(generate(chunk))
    return images, calls


class _Abort(Exception):
    pass


def first_call(model: Any, texts: list[str], seeds: list[int] | None = None) -> tuple[tuple, dict[str, Any]]:
    """The inputs of the first denoiser call of a generation of ``texts`` (the pipeline is stopped
    there: only the text encoders and latent set-up run)."""
    got: list[tuple[tuple, dict]] = []

    def pre(mod, args, kwargs):
        got.append((_clone(args), _clone(kwargs)))
        raise _Abort

    h = model.denoiser.register_forward_pre_hook(pre, with_kwargs=True)
    try:
        model.generate(list(texts), list(seeds or range(len(texts))))
    except _Abort:
        pass
    finally:
        h.remove()
    if not got:
        raise QBenchError("sensitivity: the pipeline never called its denoiser")
    return got[0]


def replay_outputs(denoiser: nn.Module, calls: Sequence[CapturedCall]) -> list[torch.Tensor]:
    with torch.inference_mode():
        return [_first(denoiser(*c.args, **c.kwargs)) for c in calls]


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

    def missing(self, key: str) -> list[int]:
        return [i for i, p in enumerate(self.prompts) if (key, p.id) not in self.cache]

    def image_scores(self, key: str, apply: Callable[[], ContextManager], score: Callable[[list[Any], list[Any], list[Any]], Sequence[float]], kind: str = "image") -> np.ndarray:
        """Per-prompt ``score(images, prompts, fp_images)`` of the pipeline under ``apply()``."""
        todo = self.missing(key)
        if todo:
            t = time.perf_counter()
            refs = self.references()
            with apply():
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

    def output_sqnr(self, key: str, apply: Callable[[], ContextManager]) -> np.ndarray:
        """Per-prompt SQNR of the denoiser output under ``apply()`` on the captured calls."""
        if self.missing(key):
            t = time.perf_counter()
            calls = self.calls()
            with apply():
                outs = replay_outputs(self.denoiser, calls)
            self.forward_passes += len(calls)
            s = per_prompt_sqnr(outs, calls, len(self.prompts))
            self.cache.put([(key, p.id, float(v)) for p, v in zip(self.prompts, s)])
            self.computed += 1
            self.seconds["sqnr"] = self.seconds.get("sqnr", 0.0) + time.perf_counter() - t
        else:
            self.reused += 1
        return np.array([self.cache.get(key, p.id) for p in self.prompts])
