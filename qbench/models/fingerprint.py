"""Content fingerprint of a pipeline object in memory: :func:`pipeline_fingerprint`.

Used to key the image cache of a pipeline the user brings (``qbench.harness.run(cfg, pipe=...)``):
two pipelines get the same fingerprint only if every component has the same class, the same
module tree (module classes, ``extra_repr``, quantization specs, attention processor classes,
forward hooks) and the same tensor bytes (parameters and buffers; a tensor subclass such as
torchao's by its inner tensors and its flatten context), and the same configs (scheduler and
pipeline). It may change when nothing that matters did (e.g. a tokenizer loaded from another
folder): that costs a regeneration, never a wrong image.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any


def _update_tensor(h, name: str, t) -> None:
    import torch

    from qbench.models.base import tensor_parts

    h.update(f"{name}:{type(t).__module__}.{type(t).__qualname__}:{t.dtype}:{tuple(t.shape)}".encode())
    if hasattr(type(t), "__tensor_flatten__"):
        h.update(repr(t.__tensor_flatten__()[1]).encode())
    for p in tensor_parts(t):
        h.update(f"|{p.dtype}:{tuple(p.shape)}".encode())
        if p.device.type == "meta":
            h.update(b"meta")
            continue
        raw = p.detach().to("cpu").contiguous().reshape(-1)
        h.update(raw.view(torch.uint8).numpy().data if raw.numel() else b"")


def _update_module(h, module) -> None:
    for mname, m in module.named_modules():
        h.update(f"\n{mname}:{type(m).__module__}.{type(m).__qualname__}:{m.extra_repr()}".encode())
        spec = getattr(m, "spec", None)
        if hasattr(spec, "to_dict"):
            h.update(json.dumps(spec.to_dict(), sort_keys=True, default=str).encode())
        proc = getattr(m, "processor", None)
        if proc is not None:
            h.update(f"processor:{type(proc).__module__}.{type(proc).__qualname__}".encode())
        for hooks in (m._forward_pre_hooks, m._forward_hooks):
            for fn in hooks.values():
                h.update(f"hook:{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', type(fn).__qualname__)}".encode())
        for tname, t in list(m._parameters.items()) + list(m._buffers.items()):
            if t is not None:
                _update_tensor(h, tname, t)


def pipeline_fingerprint(pipe: Any) -> str:
    """sha256 (first 16 hex digits) over a diffusers pipeline's components (see the module
    docstring). Reads every weight once: seconds per GB."""
    from torch import nn

    h = hashlib.sha256(f"{type(pipe).__module__}.{type(pipe).__qualname__}".encode())
    comps = getattr(pipe, "components", None)
    if not isinstance(comps, dict):
        raise TypeError(f"expected a diffusers pipeline, got {type(pipe).__name__}")
    for name in sorted(comps):
        comp = comps[name]
        h.update(f"\n[{name}] {type(comp).__module__}.{type(comp).__qualname__}".encode())
        if isinstance(comp, nn.Module):
            _update_module(h, comp)
        config = getattr(comp, "config", None)
        if config is not None and not isinstance(comp, nn.Module):
            h.update(json.dumps(dict(config), sort_keys=True, default=str).encode())
        elif comp is not None and not isinstance(comp, nn.Module):
            h.update(repr(comp).encode())
    return h.hexdigest()[:16]
