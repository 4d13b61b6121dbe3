"""Progress that stays readable in a terminal and in a log.

In a terminal: rich progress bars. Anywhere else (CI logs, ``nohup``, a pipe): one plain line per
task at its start, at every further 10 % (or at least every 30 s) and at its end, with elapsed
time and an estimate of the time left, so a long run never goes silent.
"""
from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from typing import Any


class LineProgress:
    """The subset of ``rich.progress.Progress`` qbench uses, printing plain lines to ``stream``."""

    def __init__(self, stream: Any = None, every_s: float = 30.0):
        self.stream = stream or sys.stderr
        self.every_s = every_s
        self._tasks: dict[int, dict[str, Any]] = {}

    def add_task(self, description: str, total: float | None = None, completed: float = 0, **_: Any) -> int:
        tid = len(self._tasks)
        self._tasks[tid] = {"d": description, "total": total, "done": completed, "t0": time.monotonic(), "last_t": time.monotonic(), "last_pct": -1}
        self._emit(tid, force=True)
        return tid

    def advance(self, task: int, advance: float = 1) -> None:
        self._tasks[task]["done"] += advance
        self._emit(task)

    def update(self, task: int, *, completed: float | None = None, advance: float | None = None, description: str | None = None, **_: Any) -> None:
        t = self._tasks[task]
        if completed is not None:
            t["done"] = completed
        if advance is not None:
            t["done"] += advance
        if description is not None:
            t["d"] = description
        self._emit(task)

    def _emit(self, task: int, force: bool = False) -> None:
        t = self._tasks[task]
        now = time.monotonic()
        total, done = t["total"], t["done"]
        pct = int(100 * done / total) // 10 * 10 if total else -1
        finished = bool(total) and done >= total
        if not (force or finished or pct > t["last_pct"] or now - t["last_t"] >= self.every_s):
            return
        if finished and t.get("ended"):
            return
        t["ended"] = finished
        t["last_pct"], t["last_t"] = pct, now
        el = now - t["t0"]
        text = f"[qbench] {t['d']}: {done:g}/{total:g}" if total else f"[qbench] {t['d']}: {done:g}"
        if total:
            text += f" ({100 * done / total:.0f}%)"
        text += f", {el:.0f} s elapsed"
        if total and 0 < done < total and el > 0:
            text += f", ~{el * (total - done) / done:.0f} s left"
        print(text, file=self.stream, flush=True)

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


class NullProgress(LineProgress):
    def _emit(self, task: int, force: bool = False) -> None:
        pass


_LIVE: list[Any] = []  # the rich progress displays now on screen, newest last


def say(msg: Any, style: str | None = None, fallback: Any = None) -> None:
    """Print one message line (control characters stripped: :mod:`qbench.safetext`) without
    tearing a live progress display: through the console of the rich ``Progress`` now on screen
    (rich then redraws the bars below the line), else through ``fallback`` (a console), else on
    stderr."""
    from qbench.safetext import console as safe_console

    con = _LIVE[-1].console if _LIVE else (fallback or safe_console(stderr=True))
    con.print(msg, style=style, markup=False, highlight=False, soft_wrap=True)


@contextlib.contextmanager
def working(what: str | None) -> Iterator[None]:
    """A spinner with ``what`` on stderr while the block runs, only where stderr is a terminal and
    ``what`` is given (logs and pipes get nothing: the command's own output says what happened);
    messages given to :func:`say` meanwhile print above it."""
    if not (what and sys.stderr.isatty()):
        yield
        return
    from qbench.safetext import console as safe_console

    with safe_console(stderr=True).status(what, spinner="dots") as status:
        _LIVE.append(status)
        try:
            yield
        finally:
            _LIVE.remove(status)


def _rich_progress_class():
    from rich.progress import Progress

    class QProgress(Progress):
        """rich's ``Progress``; a task added already complete (every image from the cache) is
        finished at once, so its clock stops at ~0 s instead of running until the display ends;
        while started, messages given to :func:`say` print above the bars."""

        def add_task(self, description: str, *args: Any, **kwargs: Any):
            tid = super().add_task(description, *args, **kwargs)
            with self._lock:
                t = self._tasks[tid]
                if t.total is not None and t.completed >= t.total:
                    t.finished_time = 0.0
                    t.stop_time = t.start_time
            return tid

        def start(self) -> None:
            super().start()
            _LIVE.append(self)

        def stop(self) -> None:
            if self in _LIVE:
                _LIVE.remove(self)
            super().stop()

    return QProgress


def make_progress(enabled: bool = True, console: Any = None):
    """A rich ``Progress`` when the console is a terminal, a :class:`LineProgress` otherwise, a
    :class:`NullProgress` when disabled."""
    if not enabled:
        return NullProgress()
    from qbench.safetext import console as safe_console

    con = console or safe_console(stderr=True)
    if not con.is_terminal:
        return LineProgress(con.file)
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return _rich_progress_class()(TextColumn("{task.description}", style="bold", markup=False), BarColumn(), MofNCompleteColumn(),
                                  TimeElapsedColumn(), TimeRemainingColumn(), console=con, transient=False)
