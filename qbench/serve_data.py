"""What ``qbench serve`` shows, read from the results store (no web code here; :mod:`qbench.serve_app`
has the routes).

* :class:`StoreView` opens the store read-only per request (several requests and a running
  ``qbench run`` at once: SQLite's WAL readers), and remembers each finished run's prompts and image
  files (a finished run never changes).
* Images are found **by id only**: a run id and a prompt's position in the run's prompt list (or a
  pair token, or a try-it id); the file is the one the run's image folder holds for it
  (:func:`qbench.results_export.image_paths`), opened only if it resolves inside that folder, is a
  regular file and not a symbolic link. No path ever comes from a request.
"""
from __future__ import annotations

import io
import os
import threading
from typing import Any

from qbench.errors import NoSuchRunError, QBenchError

TOP_PROMPTS = 40  # prompts listed in the gallery's worst-first list


class NotFound(QBenchError):
    """An unknown id (run, prompt position, pair token, model): HTTP 404."""


class StoreView:
    """The results store at ``db`` as the web app reads it."""

    def __init__(self, db: str):
        from qbench.store import Store

        self.db = db
        Store(db, create=False)  # refuse a missing, foreign or newer store now, in one line
        self._runs: dict[str, tuple[list, dict[str, str]]] = {}
        self._lock = threading.Lock()

    def store(self, write: bool = False):
        from qbench.store import Store

        return Store(self.db, create=write)

    def models(self) -> list[str]:
        return self.store().models()

    def model_or_default(self, model: str | None) -> str:
        models = self.models()
        if not models:
            raise NotFound(f"no finished runs in {self.db}; run `qbench run` first")
        if model in (None, ""):
            return models[0]
        if model not in models:
            raise NotFound(f"no finished runs of model {str(model)[:80]!r} in this store")
        return model

    def groups(self, model: str) -> list[list[dict[str, Any]]]:
        from qbench.arena import groups

        return groups(self.store(), model)

    def run(self, run_id: str) -> dict[str, Any]:
        """A finished run by its full id (no prefix matching); NotFound otherwise."""
        if not isinstance(run_id, str) or not run_id or len(run_id) > 64:
            raise NotFound("malformed run id")
        try:
            r = self.store().get(run_id)
        except NoSuchRunError:
            raise NotFound(f"no run {run_id[:64]!r} in this store") from None
        except QBenchError as e:  # ambiguous prefix: never a match for a full id
            raise NotFound(str(e)) from None
        if r["id"] != run_id or r["status"] != "done":
            raise NotFound(f"no finished run {run_id[:64]!r} in this store")
        return r

    def prompts_and_paths(self, run: dict[str, Any]) -> tuple[list, dict[str, str]]:
        from qbench.arena import prompts_and_paths

        with self._lock:
            if run["id"] not in self._runs:
                self._runs[run["id"]] = prompts_and_paths(run)
            return self._runs[run["id"]]

    def image_file(self, run: dict[str, Any], index: int) -> str:
        """The PNG of the run's ``index``-th prompt (checked to lie in the run's image folder)."""
        prompts, paths = self.prompts_and_paths(run)
        if not 0 <= index < len(prompts) or prompts[index].id not in paths:
            raise NotFound(f"run {run['id']} has no image number {index}")
        return inside(paths[prompts[index].id], (run.get("result") or {}).get("images_dir"))

    def gallery(self, model: str | None, group: int = 0, metric: str | None = None, q: str = "", prompt: int | None = None) -> dict[str, Any]:
        """Everything the gallery page shows (see the module docstring of :mod:`qbench.serve_app`)."""
        from qbench.arena import label

        model = self.model_or_default(model)
        gs = self.groups(model)
        if not gs:
            raise NotFound(f"no {model} runs with recorded settings and images in this store")
        if not 0 <= group < len(gs):
            raise NotFound(f"no settings group {group} (there are {len(gs)})")
        runs = gs[group]
        shown = [r for r in runs if not q or q.lower() in label(r).lower()]
        base = next((r for r in runs if r["method"] == "fp"), runs[0])
        store = self.store()
        scores = {r["id"]: store.per_image(r["id"]) for r in runs}
        metrics = sorted({m for r in runs for m in scores[r["id"]]})
        if metric and metric not in metrics:
            raise NotFound(f"no per-image metric {metric[:40]!r} in these runs ({', '.join(metrics) or 'none'})")
        prompts, _ = self.prompts_and_paths(base)
        order = list(range(len(prompts)))
        worst: dict[int, float] = {}
        if metric:
            hib = next((r["metrics"][metric].get("higher_is_better", True) for r in runs if metric in r["metrics"]), True)
            judged = [r for r in shown if r is not base and metric in scores[r["id"]]] or [r for r in shown if metric in scores[r["id"]]]
            for i, p in enumerate(prompts):
                vals = [scores[r["id"]][metric][p.id] for r in judged if p.id in scores[r["id"]][metric]]
                if vals:
                    worst[i] = min(vals) if hib else max(vals)
            order = sorted(worst, key=lambda i: (worst[i] if hib else -worst[i], i))
        listed = order[:TOP_PROMPTS]
        if prompt is None:
            prompt = listed[0] if listed else 0
        if not 0 <= prompt < len(prompts):
            raise NotFound(f"no prompt number {prompt} (the prompt set has {len(prompts)})")
        p = prompts[prompt]
        cells = []
        for r in shown:
            per = {m: s[p.id] for m, s in scores[r["id"]].items() if p.id in s}
            cells.append({"run": r["id"], "label": label(r), "is_base": r is base, "metrics": per})
        from qbench.arena import seed_of

        return {"model": model, "models": self.models(), "group": group, "n_groups": len(gs), "metric": metric, "metrics": metrics, "q": q,
                "prompt": prompt, "prompt_text": p.text, "prompt_id": p.id, "seed": seed_of(base, p), "base": base["id"],
                "base_label": label(base), "cells": cells, "n_prompts": len(prompts),
                "worst": [(i, prompts[i].text, worst.get(i)) for i in listed], "settings": _settings_text(base)}


def _settings_text(run: dict[str, Any]) -> str:
    from qbench.comparison import run_settings

    s, _ = run_settings(run)
    return ", ".join(f"{k} {v}" for k, v in s.items() if k not in ("prompts_sha", "weights") and v is not None)


def inside(path: str, folder: str | None) -> str:
    """``path`` if it resolves inside ``folder`` and is a regular file (not a link); NotFound otherwise."""
    if not folder:
        raise NotFound("the run kept no image folder")
    real, root = os.path.realpath(path), os.path.realpath(folder)
    if os.path.commonpath([real, root]) != root or os.path.islink(path) or not os.path.isfile(real):
        raise NotFound("image not in the run's image folder")
    return real


def read_png(path: str) -> bytes:
    """The file's bytes, opened without following a link."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as f:
        return f.read()


def diff_png(image: str, reference: str) -> bytes:
    """The |difference| map of two images (:func:`qbench.grids.diff_map`, magma on a fixed scale) as PNG."""
    from PIL import Image

    from qbench.grids import diff_map

    with Image.open(io.BytesIO(read_png(image))) as a, Image.open(io.BytesIO(read_png(reference))) as b:
        out = diff_map(a.convert("RGB"), b.convert("RGB"))
    buf = io.BytesIO()
    out.save(buf, format="PNG")
    return buf.getvalue()
