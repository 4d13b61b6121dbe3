"""MixDQ allocation files: MixDQ's per-layer YAML (``layer.name: 4`` or ``{w: 4, a: 16}``) written
and read, and the check of the header comment qbench writes (the model and ``--bits`` a file was
made for). The method: ``methods/mixdq.py``."""
from __future__ import annotations

from typing import Any

from qbench.errors import ConfigError
from qbench.quant.spec import BitSpec, load_overrides, made_for


def overrides_of(alloc: dict[str, dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Allocation ``{name: {"w", "a"}}`` (a None = 16) -> QuantConfig overrides."""
    return {n: {"w": int(v["w"]), "a": 16 if v["a"] is None else int(v["a"])} for n, v in alloc.items()}


def allocation_yaml(alloc: dict[str, dict[str, Any]], bits: BitSpec, header: str) -> str:
    """MixDQ's per-layer YAML (``name: 4``; ``name: {w: 4, a: 16}`` where a differs from ``bits``)."""
    lines = [f"# {line}" for line in header.splitlines()]
    for n in sorted(alloc):
        w, a = alloc[n]["w"], alloc[n]["a"]
        lines.append(f"{n}: {w}" if a == bits.a else f"{n}: {{w: {w}, a: {16 if a is None else a}}}")
    return "\n".join(lines) + "\n"


def parse_allocation(source: Any, bits: BitSpec) -> dict[str, dict[str, Any]]:
    """A YAML/JSON allocation file or mapping -> ``{name: {"w", "a"}}`` (refuses fp16 entries:
    MixDQ quantizes every layer it allocates)."""
    out = {}
    for name, v in load_overrides(source).items():
        if isinstance(v, bool) or not isinstance(v, (int, dict)):
            raise ConfigError(f"mixdq allocation entry {name!r}: expected bits (4) or {{w: 4, a: 8}}, got {v!r}")
        w, a = (v, bits.a) if isinstance(v, int) else (v.get("w", bits.w), v.get("a", 16 if bits.a is None else bits.a))
        a = None if a in (16, None) else a
        BitSpec(int(w), None if a is None else int(a))
        out[str(name)] = {"w": int(w), "a": None if a is None else int(a)}
    if not out:
        raise ConfigError("mixdq allocation is empty")
    return out


def check_made_for(path: str, model: str, bits: BitSpec) -> None:
    """Refuse (ConfigError, one line) an allocation whose header names another model or --bits:
    its widths were solved for that budget, and the run would be labelled with this one."""
    made = made_for(path)
    if made is None:
        return
    m, b = made
    try:
        same_bits = BitSpec.parse(b) == bits
    except (ConfigError, ValueError):
        same_bits = False
    if m == model and same_bits:
        return
    fix = (f"pass --bits {b}" if m == model else f"pass --model {m} --bits {b}") + f", or calibrate one for {model} --bits {bits} (qbench calibrate --method mixdq)"
    raise ConfigError(f"mixdq allocation {path} was made for {m} --bits {b} (its header), this run is {model} --bits {bits}: {fix}")


__all__ = ["allocation_yaml", "check_made_for", "overrides_of", "parse_allocation"]


def allocation_identity(method: Any) -> Any:
    """The :class:`~qbench.identity.Identity` of the allocation a :class:`~qbench.methods.mixdq.MixDQ`
    configuration calibrates: :meth:`~qbench.methods.mixdq.MixDQ.allocation_key` (bits, sampling
    settings, every option that changes it), the model (spec, weights content), the calibration
    prompts' ids and texts, dtype and device type, the code of the method and of the generation
    path, and the generation and metric (SSIM) libraries. A stored allocation is used only under
    this key (its file name carries it)."""
    from qbench.generation import model_code, model_inputs
    from qbench.identity import GENERATION_LIBRARIES, METRIC_LIBRARIES, make
    from qbench.models.loader import locate_model
    from qbench.prompts import load_prompts

    cfg = method.cfg
    key = method.allocation_key()
    ref = locate_model(cfg.model, model_path=cfg.model_path, device=cfg.device, dtype=cfg.dtype)
    prompts = load_prompts(key["calib"])
    return make("mixdq-allocation", {**key, **model_inputs(ref), "calibration_prompts": [[p.id, p.text] for p in prompts],
                                     "dtype": str(ref.dtype), "device_type": ref.device.split(":")[0]},
                code={"generation": model_code(ref), "method": method.code_modules()}, libraries=GENERATION_LIBRARIES + METRIC_LIBRARIES)
