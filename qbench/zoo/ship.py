"""Copy the newest trained exports into ``qbench/zoo/weights`` (fp16 safetensors) + MANIFEST.json.

Weights are stored in float16 to stay within the repo's size budget; the loader upcasts to the
run dtype (float32 on CPU), so the float32 "full-precision" reference is the fp16-rounded model.
"""
from __future__ import annotations

import json
import os
import shutil
import time

from qbench.errors import MissingWeightsError
from qbench.fsutil import atomic_write_text, sha256_file
from qbench.zoo import common

SHIPPED = {"toy-clip": "clip", "toy-lcm": "unet", "toy-flux": "flux"}
COMMANDS = {
    "vae": "qbench zoo train vae --minutes 6.5 --steps 1600 --seed 0",
    "clip": "qbench zoo train clip --minutes 18 --steps 3000 --seed 0 --batch 64",
    "unet": "qbench zoo train unet --minutes 40 --seed 0 --batch 32",
    "flux": "qbench zoo train flux --minutes 40 --seed 0 --batch 32",
}


def training_phases(rows: list[dict], final_step: int | None) -> list[dict]:
    """Which settings trained which steps: one phase per logged start/resume that records its lr
    (the first phase is taken to begin at step 0), consecutive phases with equal settings merged."""
    phases: list[dict] = []
    for r in rows:
        if r.get("event") in ("start", "resume") and "lr" in r:
            ph = {"from_step": 0 if not phases else int(r["step"]), "lr": r["lr"], "batch": r.get("batch"),
                  "pairs": r.get("pairs", 0.0), "train_text_encoder": bool(r.get("train_text_encoder", False))}
            if phases and phases[-1]["from_step"] == ph["from_step"]:
                phases[-1] = ph if len(phases) > 1 else dict(ph, from_step=0)  # a run stopped before its first step
                continue
            if phases and all(phases[-1][k] == ph[k] for k in ("lr", "batch", "pairs", "train_text_encoder")):
                continue
            phases.append(ph)
    for a, b in zip(phases, phases[1:] + [None]):
        a["to_step"] = b["from_step"] if b is not None else final_step
    return phases


def training_record(kind: str) -> dict:
    """Steps, wall time, resumes and settings of one model, read from its training log. Lines of
    the log that are not JSON are skipped and listed under ``"skipped_log_lines"`` (1-based)."""
    path = os.path.join(common.work_dir(kind, create=False), "log.jsonl")
    if not os.path.exists(path):
        return {"trained": False}
    rows, bad = common.read_log(path)
    steps = [r for r in rows if "loss" in r or "i2t" in r]
    last = steps[-1] if steps else {}
    done = [r for r in rows if r.get("event") in ("done", "checkpoint")]
    final = (done[-1] if done else last).get("step")
    phases = training_phases(rows, final)
    if phases:
        reproduce = " && ".join(
            f"qbench zoo train {kind} --steps {ph['to_step']} --lr {ph['lr']:g}" + (f" --batch {ph['batch']}" if ph["batch"] else "")
            + (f" --pairs {ph['pairs']:g}" if ph["pairs"] else "")
            + (" --train-text-encoder" if ph["train_text_encoder"] else "") + " --minutes 100000" for ph in phases)
    else:
        reproduce = f"qbench zoo train {kind} --steps {final} --minutes 100000"
    return {
        "trained": True,
        **({"skipped_log_lines": bad} if bad else {}),
        "steps": final,
        "wall_time_s": (done[-1] if done else last).get("elapsed"),
        "resumes": sum(1 for r in rows if r.get("event") == "resume"),
        "phases": phases,
        "last_logged": {k: v for k, v in last.items() if k != "time"},
        "command": COMMANDS[kind],
        "seed": 0,
        "threads": 1,
        "machine": "1 thread on a 2-core CPU shared with other jobs (wall time depends on the load)",
        "reproduce": reproduce + " (step counts, not the original time budgets; batches are functions of (seed, step))",
    }


def _fp16_safetensors(folder: str) -> None:
    from safetensors.torch import load_file, save_file

    for root, _, files in os.walk(folder):
        for f in files:
            if f.endswith(".safetensors"):
                p = os.path.join(root, f)
                sd = load_file(p)
                save_file({k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in sd.items()}, p,
                          metadata={"format": "pt"})
                os.chmod(p, 0o644)


def ship(kinds=("clip", "unet", "flux")) -> dict:
    for name, kind in SHIPPED.items():
        if kind not in kinds:
            continue
        src = os.path.join(common.work_dir(kind, create=False), "export")
        if not os.path.isdir(src):
            raise MissingWeightsError(f"no export for {kind} in {src}; train it first (qbench zoo train {kind})")
        dst = os.path.join(common.WEIGHTS_DIR, name)
        tmp = dst + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp)
        _fp16_safetensors(tmp)
        shutil.rmtree(dst, ignore_errors=True)
        os.replace(tmp, dst)
    return write_manifest()


def write_manifest() -> dict:
    files = {}
    for root, _, names in os.walk(common.WEIGHTS_DIR):
        for n in sorted(names):
            p = os.path.join(root, n)
            rel = os.path.relpath(p, common.WEIGHTS_DIR)
            if rel == "MANIFEST.json":
                continue
            files[rel] = {"sha256": sha256_file(p), "bytes": os.path.getsize(p)}
    manifest = {
        "what": "the toy world's trained models (qbench/zoo); every number they produce is a toy-world number",
        "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "storage_dtype": "float16 (upcast by the loader)",
        "total_bytes": sum(f["bytes"] for f in files.values()),
        "training": {k: training_record(k) for k in ("vae", "clip", "unet", "flux")},
        "versions": common.versions(),
        "files": dict(sorted(files.items())),
    }
    atomic_write_text(os.path.join(common.WEIGHTS_DIR, "MANIFEST.json"), json.dumps(manifest, indent=1))
    return manifest


def verify() -> list[str]:
    """Files whose sha256 differs from MANIFEST.json (empty list: all good)."""
    with open(os.path.join(common.WEIGHTS_DIR, "MANIFEST.json")) as f:
        m = json.load(f)
    bad = []
    for rel, info in m["files"].items():
        p = os.path.join(common.WEIGHTS_DIR, rel)
        if not os.path.exists(p) or sha256_file(p) != info["sha256"]:
            bad.append(rel)
    return bad
