"""Denoiser sizes on the real architectures, without their weights (``qbench size``).

    qbench size                                      # every real model x method x bit width
    qbench size --model sdxl-turbo --method naive --bits W8A8 [--json OUT.json]

Each real denoiser is built from its public config (:data:`qbench.models.specs.REAL_DENOISERS`,
the numbers copied from the model repositories' ``config.json``) on PyTorch's ``meta`` device:
every parameter has its real shape and no memory. For each method that quantizes through a
qbench :class:`~qbench.quant.spec.QuantConfig` (read from the method object built for that
model and ``--bits``, as ``qbench run`` builds it, in kernel mode) every layer the config
quantizes is sized in qbench's packed kernel format: the same code that sizes a quantized layer
(:class:`qbench.quant.linear.QuantLinear` / ``QuantConv2d``'s ``kernel_nbytes``) runs on a one-
and a two-row copy of the layer (zeros; a layer's size is linear in its output rows), and the
line through them gives the real row count's bytes. Every other floating-point tensor counts
at 2 bytes (FP16/BF16), biases of quantized layers too, as in
:func:`qbench.quant.api.size_report`'s ``deploy_bytes``.

Reported per cell: ``fp16_bytes`` (every parameter at 2 bytes: the FP16/BF16 denoiser),
``deploy_bytes``, their ratio, and the layer counts (Linear and Conv2d in the model, quantized
ones by bit width, skipped ones with the reason). A method whose per-layer widths come from a
calibration (a mixed-precision allocation) is sized at its QuantConfig's uniform ``--bits``
(``uniform_at_budget``: a calibrated allocation averages the same parameter-weighted bits within
its tolerance, so its bytes differ by the scales of the layers that moved). Methods that quantize
with another library (no QuantConfig) are listed as not sized, with the reason.
Errors: :class:`~qbench.errors.ConfigError` for an unknown model (one line).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Sequence
from functools import cache
from typing import Any

import torch
from torch import nn

from qbench.errors import ConfigError, QBenchError

BITS = ("W8A8", "W4A8", "W4A16")


def real_models() -> list[str]:
    from qbench.models.specs import REAL_DENOISERS

    return list(REAL_DENOISERS)


def build_meta(model: str) -> nn.Module:
    """The real denoiser of ``model`` with every parameter on the ``meta`` device (no memory).
    Raises :class:`ConfigError` for a model without a real config here."""
    import diffusers

    from qbench.models.specs import REAL_DENOISERS

    if model not in REAL_DENOISERS:
        raise ConfigError(f"no real architecture for model {model!r}; sized models: {', '.join(REAL_DENOISERS)}")
    cls_name, config, _ = REAL_DENOISERS[model]
    with torch.device("meta"):
        return getattr(diffusers, cls_name)(**config)


@cache
def _per_row(kind: str, k_shape: tuple[int, ...], bias: bool, spec: Any) -> tuple[int, int]:
    """``(bytes per output row, constant bytes)`` of one quantized layer in the packed format,
    bias at 2 bytes: from the real layer classes at 1 and 2 output rows (zero weights)."""
    from qbench.quant.linear import QuantConv2d, QuantLinear

    spec = dataclasses.replace(spec, mode="simulate")  # the same kernel_nbytes, without probing the machine's GEMM
    sizes = []
    for rows in (1, 2):
        if kind == "linear":
            q: Any = QuantLinear(torch.zeros(rows, k_shape[0]), torch.zeros(rows) if bias else None, spec)
        else:
            cin, kh, kw, sh, sw, ph, pw = k_shape
            conv = nn.Conv2d(cin, rows, (kh, kw), stride=(sh, sw), padding=(ph, pw), bias=bias)
            with torch.no_grad():
                conv.weight.zero_()
            q = QuantConv2d.from_float(conv, spec)
        sizes.append(q.kernel_nbytes - (rows * 4 if bias else 0) + (rows * 2 if bias else 0))
    return sizes[1] - sizes[0], 2 * sizes[0] - sizes[1]


def _layer_key(mod: nn.Module) -> tuple[str, tuple[int, ...]]:
    if isinstance(mod, nn.Conv2d):
        return "conv2d", (mod.in_channels, *mod.kernel_size, *mod.stride, *mod.padding)
    return "linear", (mod.in_features,)


def quant_config_of(method: str, model: str, bits: str, options: dict[str, Any] | None = None) -> tuple[Any, str]:
    """``(QuantConfig or None, note)`` of ``method`` (with method ``options``) built for ``model``
    and ``bits`` in kernel mode, as ``qbench run`` builds it; None with the reason when it has none."""
    from qbench.catalog import METHODS
    from qbench.config import RunConfig

    cls = METHODS.get(method)
    obj, err = None, ""
    for mode in ("kernel", None):  # a method whose own config decides the mode refuses --mode
        try:
            obj = cls(RunConfig(model=model, method=method, bits=bits, mode=mode, method_options=dict(options or {})))
            break
        except QBenchError as e:
            err = err or str(e).splitlines()[0]
    if obj is None:
        return None, f"refused: {err}"
    for holder in (obj, getattr(obj, "base", None)):  # a method over a base quantizer sizes as its base
        qc = getattr(holder, "qconfig", None)
        if qc is not None:
            return qc.replace(mode="kernel"), ""
    return None, "quantizes with another library (no qbench QuantConfig): its sizes are measured by `qbench run`"


def size_cell(denoiser: nn.Module, qconfig: Any | None) -> dict[str, Any]:
    """Sizes of ``denoiser`` (any device, meta included) under ``qconfig`` (None: FP16)."""
    from qbench.quant.api import candidate_layers, conv2d_supported

    named = dict(denoiser.named_modules())
    params = sum(p.numel() for p in denoiser.parameters())
    fp16 = 2 * sum(t.numel() for t in list(denoiser.parameters()) + list(denoiser.buffers()) if t.is_floating_point())
    counts = {"linear": sum(isinstance(m, nn.Linear) for m in named.values()), "conv2d": sum(isinstance(m, nn.Conv2d) for m in named.values())}
    out: dict[str, Any] = {"params": params, "fp16_bytes": fp16, "layers": counts, "quantized": {}, "skipped": {}}
    deploy = fp16
    for name in candidate_layers(named, qconfig) if qconfig is not None else []:
        mod = named[name]
        spec = qconfig.spec_for(name)
        kind, shape = _layer_key(mod)
        why = "kept in floating point" if spec is None else conv2d_supported(mod) if kind == "conv2d" else None
        if why:
            out["skipped"][why] = out["skipped"].get(why, 0) + 1
            continue
        per_row, const = _per_row(kind, shape, mod.bias is not None, spec)
        n = mod.out_channels if kind == "conv2d" else mod.out_features
        deploy += per_row * n + const - 2 * (mod.weight.numel() + (0 if mod.bias is None else mod.bias.numel()))
        key = f"{kind} {spec.bits}"
        out["quantized"][key] = out["quantized"].get(key, 0) + 1
    out["deploy_bytes"] = deploy
    out["deploy_vs_fp16"] = deploy / fp16
    return out


def quantizing_methods() -> list[str]:
    """Registered methods that take ``--bits`` (the others run the model at its FP16 size)."""
    from qbench.catalog import METHODS

    return [m for m in METHODS.names() if getattr(METHODS.get(m), "uses_bits", False)]


def size_table(models: Sequence[str], methods: Sequence[str], bits: Sequence[str], options: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Per model: one ``FP16`` row (method ``-``), then one row per method x bit width."""
    rows = []
    for model in models:
        den = build_meta(model)
        rows.append({"model": model, "method": "-", "bits": "FP16", "note": "", **size_cell(den, None)})
        for method in methods:
            for b in bits:
                qc, note = quant_config_of(method, model, b, options)
                row: dict[str, Any] = {"model": model, "method": method, "bits": b, "note": note}
                if qc is not None:
                    row.update(size_cell(den, qc))
                rows.append(row)
    return rows


def _mb(n: int) -> str:
    return f"{n / 1e6:,.0f} MB ({n / 2**20:,.0f} MiB)"


HEADER = ("denoiser bytes: FP16 = every parameter at 2 bytes; deploy = qbench's packed kernel format for the layers the method's "
          "QuantConfig quantizes at uniform --bits (before any calibration), everything else at 2 bytes; MB = 1e6 bytes")


def format_rows(rows: list[dict[str, Any]]) -> str:
    lines = [HEADER]
    for r in rows:
        head = f"{r['model']:<13} {r['method']:<8} {r['bits']:<6}"
        if "deploy_bytes" not in r:
            lines.append(f"{head} not sized: {r['note']}")
            continue
        q = ", ".join(f"{v} {k}" for k, v in sorted(r["quantized"].items())) or "none"
        sk = "; ".join(f"{v} {k}" for k, v in r["skipped"].items())
        lines.append(f"{head} {r['params'] / 1e9:.3f}B params, FP16 {_mb(r['fp16_bytes'])} -> {_mb(r['deploy_bytes'])} "
                     f"= {r['deploy_vs_fp16']:.3f}x ({1 / r['deploy_vs_fp16']:.2f}x smaller) | {r['layers']['linear']} Linear, "
                     f"{r['layers']['conv2d']} Conv2d; quantized: {q}" + (f"; skipped: {sk}" if sk else ""))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``qbench size``: prints one line per cell (``--json`` writes the rows too)."""
    from qbench.catalog import METHODS
    from qbench.quant.spec import BitSpec

    p = argparse.ArgumentParser(prog="qbench size", description="FP16 and deployable bytes of the real denoisers (built on the meta device) per method x bit width")
    p.add_argument("--model", default=None, help=f"one of {', '.join(real_models())} (default: all)")
    p.add_argument("--method", default=None, help="a registered method that takes --bits (default: all of them)")
    p.add_argument("--bits", default=",".join(BITS), help=f"comma-separated bit specs (default {','.join(BITS)})")
    p.add_argument("-O", "--option", action="append", default=[], metavar="KEY=VALUE",
                   help="method option, as for `qbench run` (e.g. -O layer_types=linear,conv2d)")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    a = p.parse_args(argv)
    options = {}
    for kv in a.option:
        k, sep, v = kv.partition("=")
        if not sep:
            raise ConfigError(f"-O {kv}: expected KEY=VALUE")
        options[k.strip()] = v.strip()  # the method's options parser validates it, as for `qbench run`
    models = [a.model] if a.model else real_models()
    for m in models:
        if m not in real_models():
            raise ConfigError(f"--model {m}: no real architecture here; sized models: {', '.join(real_models())}")
    methods = [a.method] if a.method else quantizing_methods()
    for m in methods:
        if not getattr(METHODS.get(m), "uses_bits", False):  # unknown: ConfigError from the registry
            raise ConfigError(f"--method {m} does not quantize (no --bits): its size is the FP16 row")
    bits = [b.strip().upper() for b in a.bits.split(",") if b.strip()]
    for b in bits:
        BitSpec.parse(b)
    rows = size_table(models, methods, bits, options)
    print(format_rows(rows))
    if a.json:
        with open(a.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
