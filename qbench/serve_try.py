"""``qbench serve``'s try-it page: a typed prompt generated live by stored configurations.

A configuration is a finished run: its stored config is run through the same phases as ``qbench run``
(:data:`qbench.phases.SEQUENCES` ``"try"``: plan -> load -> apply -> generate, nothing recorded as a
run) with the prompt list replaced by the typed prompt (id ``try/<sha of the text>``, index 0, so
its seed is the run's seed). The image lands in the run's image cache (same image identity, same
folder: :class:`qbench.imagecache.ImageCache`), so typing the same prompt again reads it back. The
loaded, quantized model of the last :data:`KEEP` configurations stays in memory (the toy world
generates in about a second on a CPU; a real model keeps its loaded pipeline). One generation at a
time (a lock): the models share the machine's cores.
"""
from __future__ import annotations

import os
import secrets
import threading
import time
from collections import OrderedDict
from typing import Any

from qbench.errors import QBenchError

KEEP = 4  # loaded configurations kept in memory
MAX_PROMPT = 300  # characters of a typed prompt


def check_prompt(text: Any) -> str:
    if not isinstance(text, str) or not text.strip():
        raise QBenchError("type a prompt")
    t = " ".join(text.split())
    if len(t) > MAX_PROMPT or not t.isprintable():
        raise QBenchError(f"a prompt is at most {MAX_PROMPT} printable characters")
    return t


def out_dir_of(run: dict[str, Any]) -> str:
    """The results folder the run's image cache lives in (``<out>/images/<model>/<key>``)."""
    d = (run.get("result") or {}).get("images_dir")
    if not d:
        raise QBenchError(f"run {run['id']} kept no image folder: it cannot be tried")
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.normpath(os.path.abspath(d)))))


class TryIt:
    """Live generation for the web app; :meth:`generate` returns an id to :meth:`image` by."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._states: OrderedDict[str, Any] = OrderedDict()
        self._images: dict[str, tuple[str, str]] = {}  # try id -> (file, its cache folder)

    def _state(self, run: dict[str, Any], prompt):
        import dataclasses

        from qbench.phases import RunState, run_phases
        from qbench.preflight import plan_run
        from qbench.results_export import run_config

        if run["id"] in self._states:
            self._states.move_to_end(run["id"])
            return self._states[run["id"]], False
        cfg = dataclasses.replace(run_config(run), out_dir=out_dir_of(run), db=None)
        plan = plan_run(cfg)
        plan.prompts = [prompt]
        state = run_phases(RunState(cfg=plan.cfg, plan=plan, record=False, show_progress=False), "try")
        self._states[run["id"]] = state
        while len(self._states) > KEEP:
            self._states.popitem(last=False)
        return state, True

    def generate(self, run: dict[str, Any], text: str) -> dict[str, Any]:
        """Generate (or read back from the cache) the image of ``text`` by the run's configuration:
        ``{"id", "how"}``. QBenchError (one line) when the configuration cannot be loaded."""
        from qbench.api import Prompt
        from qbench.generation import batches, generate_cached, seed_for
        from qbench.imagecache import sha
        from qbench.progress import make_progress

        text = check_prompt(text)
        prompt = Prompt(id=f"try/{sha(text, 12)}", text=text, index=0)
        t = time.perf_counter()
        with self._lock:
            state, fresh = self._state(run, prompt)
            n_new = state.n_generated
            if not fresh:
                with make_progress(False) as progress:
                    _, n_new = generate_cached(state.model, state.cache, [prompt], state.cfg, progress, "try")
            (_chunk, sig), = batches([prompt], state.cfg)
            path = state.cache.path(prompt, seed_for(state.cfg, prompt), sig)
        if not state.cache.has(prompt, seed_for(state.cfg, prompt), sig):
            raise QBenchError(f"generation by run {run['id']} left no image")
        tid = secrets.token_hex(12)
        self._images[tid] = (path, state.cache.dir)
        how = (("generated" if n_new else "read from the image cache") + (" after loading the configuration" if fresh else "")
               + f" in {time.perf_counter() - t:.1f} s, seed {seed_for(state.cfg, prompt)}")
        return {"id": tid, "how": how}

    def image(self, try_id: str) -> tuple[str, str]:
        """``(file, folder it must lie in)`` of a generated image; KeyError for an unknown id."""
        return self._images[try_id]
