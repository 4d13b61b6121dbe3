"""Recording a denoiser's calls and serving its full-precision prefix (MixDQ's sensitivity pass,
:mod:`qbench.quant.sensitivity`).

:func:`capture_calls` records every denoiser call of full-precision generations (inputs and
output, the prompt of each row); :func:`replay_outputs` replays them (e.g. with one layer
perturbed); :func:`first_call` gives the inputs of a generation's first call.

**Prefix reuse** (:class:`PrefixCache`, result-preserving): a replayed call's inputs are the
full-precision ones, so every unit of the denoiser (a top-level child, or an element of a top-level
``ModuleList``) that runs before the unit holding the perturbed layer sees exactly its
full-precision inputs and gives exactly its full-precision output. Those outputs are recorded once
per captured call and returned (as clones) instead of recomputed: on average about half of each
replay is skipped, and the scores are bit-identical (tested). Recording stops (and replays run in
full) when the recorded outputs would exceed ``limit_bytes``. The same record serves the image
scores (:meth:`PrefixCache.serving`): a perturbed generation's first denoiser call has the same
inputs as the full-precision one (same prompts, seeds and batches), bit for bit, so its units
before the perturbed one are served too; a call whose inputs differ in any bit (every later step)
runs in full.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_flatten, tree_map

from qbench.errors import QBenchError


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


def forward_with_hooks(denoiser: nn.Module, hooks: Sequence[Any], args: tuple, kwargs: dict[str, Any]) -> Any:
    """``denoiser(*args, **kwargs)`` under ``torch.inference_mode``, then remove ``hooks`` (the
    handles of hooks registered for this one forward), also when it raises."""
    try:
        with torch.inference_mode():
            return denoiser(*args, **kwargs)
    finally:
        for h in hooks:
            h.remove()


def replay_outputs(denoiser: nn.Module, calls: Sequence[CapturedCall]) -> list[torch.Tensor]:
    with torch.inference_mode():
        return [_first(denoiser(*c.args, **c.kwargs)) for c in calls]


def denoiser_units(denoiser: nn.Module) -> list[tuple[str, nn.Module]]:
    """The denoiser's units: its direct children, with a ``ModuleList``/``Sequential`` child
    replaced by its elements (``down_blocks.0``, ``transformer_blocks.3``, ...)."""
    out = []
    for name, child in denoiser.named_children():
        if isinstance(child, (nn.ModuleList, nn.Sequential)):
            out.extend((f"{name}.{i}", m) for i, m in enumerate(child))
        else:
            out.append((name, child))
    return out


class PrefixCache:
    """Full-precision outputs of the denoiser's units for every captured call, in execution order
    (see the module docstring). :meth:`replay` replays the calls with the units that run before
    the one holding ``layer`` served from the record."""

    def __init__(self, denoiser: nn.Module, calls: Sequence[CapturedCall], limit_bytes: int = 2 << 30):
        self.denoiser = denoiser
        self.units = denoiser_units(denoiser)
        self.traces: list[list[tuple[str, Any]]] | None = []
        self.inputs = [(c.args, c.kwargs) for c in calls]  # what each trace was recorded from
        self.nbytes = 0
        self.served = 0  # calls of a generation served from a trace (:meth:`serving`)
        for c in calls:
            trace: list[tuple[str, Any]] = []
            hooks = [m.register_forward_hook(lambda mod, a, out, n=n, trace=trace: trace.append((n, _clone(out)))) for n, m in self.units]
            forward_with_hooks(self.denoiser, hooks, c.args, c.kwargs)
            self.nbytes += sum(t.numel() * t.element_size() for _, o in trace for t in _tensors(o))
            if self.nbytes > limit_bytes:
                self.traces = None  # too large to keep: replays run in full
                return
            self.traces.append(trace)

    def unit_of(self, layer: str) -> str | None:
        return next((n for n, _ in self.units if layer == n or layer.startswith(n + ".")), None)

    def _prefix_queues(self, trace: list[tuple[str, Any]], unit: str) -> dict[str, list[Any]]:
        first = next((i for i, (n, _) in enumerate(trace) if n == unit), len(trace))
        queues: dict[str, list[Any]] = {}
        for n, o in trace[:first]:
            queues.setdefault(n, []).append(o)
        return queues

    @contextlib.contextmanager
    def serving(self, layer: str):
        """While active, a denoiser call whose inputs equal a recorded call's bit for bit (a
        generation's first step, same prompts, seeds and batch) takes the units before ``layer``'s
        unit from that call's trace; any other call runs in full. Same outputs, less work."""
        unit = self.unit_of(layer)
        if self.traces is None or unit is None:
            yield
            return
        mods = dict(self.units)
        active = contextlib.ExitStack()  # the units served during the current call

        def pre(mod: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
            active.close()
            for (a, k), trace in zip(self.inputs, self.traces or []):
                if same_inputs((args, kwargs), (a, k)):
                    active.enter_context(_served_units(mods, self._prefix_queues(trace, unit)))
                    self.served += 1
                    return

        h1 = self.denoiser.register_forward_pre_hook(pre, with_kwargs=True)
        h2 = self.denoiser.register_forward_hook(lambda mod, args, kwargs, out: active.close(), with_kwargs=True)
        try:
            yield
        finally:
            h1.remove()
            h2.remove()
            active.close()

    def replay(self, layer: str, calls: Sequence[CapturedCall]) -> list[torch.Tensor]:
        """Outputs of ``calls`` (the denoiser as it is now, e.g. with ``layer`` perturbed), the
        units before ``layer``'s unit answered from the record."""
        unit = self.unit_of(layer)
        if self.traces is None or unit is None:
            return replay_outputs(self.denoiser, calls)
        mods = dict(self.units)
        outs = []
        for c, trace in zip(calls, self.traces):
            with _served_units(mods, self._prefix_queues(trace, unit)):
                outs.extend(replay_outputs(self.denoiser, [c]))
        return outs


def same_inputs(x: Any, y: Any) -> bool:
    """Whether two (args, kwargs) trees are equal: the same structure, equal non-tensor leaves and
    tensors of the same dtype, shape and values, bit for bit (``torch.equal``)."""
    lx, sx = tree_flatten(x)
    ly, sy = tree_flatten(y)
    if sx != sy or len(lx) != len(ly):
        return False
    pairs = list(zip(lx, ly))
    for a, b in pairs:  # the cheap checks first: types, shapes, dtypes, scalars
        if isinstance(a, torch.Tensor) != isinstance(b, torch.Tensor):
            return False
        if isinstance(a, torch.Tensor):
            if a.shape != b.shape or a.dtype != b.dtype or a.device != b.device:
                return False
        elif a is not b:
            try:
                if type(a) is not type(b) or not bool(a == b):
                    return False
            except (TypeError, ValueError):  # no single truth value (an array): not comparable here
                return False
    return all(torch.equal(a, b) for a, b in pairs if isinstance(a, torch.Tensor))


@contextlib.contextmanager
def _served_units(mods: dict[str, nn.Module], queues: dict[str, list[Any]]):
    """While active, each unit ``mods[n]`` of ``queues`` answers from ``queues[n]`` (recorded
    outputs, in order) before computing again (:func:`_serve`)."""
    for n, q in queues.items():
        mods[n].forward = _serve(mods[n].forward, q)
    try:
        yield
    finally:
        for n in queues:
            del mods[n].forward  # the instance attribute: back to the class's forward


def _serve(forward: Callable[..., Any], queue: list[Any]) -> Callable[..., Any]:
    """``forward`` that returns clones of ``queue``'s outputs, in order, while there are any."""
    pending = list(queue)

    def fwd(*args: Any, **kwargs: Any) -> Any:
        return _clone(pending.pop(0)) if pending else forward(*args, **kwargs)

    return fwd


def _tensors(x: Any) -> list[torch.Tensor]:
    found: list[torch.Tensor] = []
    tree_map(lambda t: found.append(t) if isinstance(t, torch.Tensor) else None, x)
    return found
