"""``qbench`` command line: the entry point :func:`main` (``qbench.cli:main``). Every user-facing
error is one line on stderr and a non-zero exit (README, "Exit codes"); a failure that no check
anticipated is still one line, with its traceback in a log file (:func:`_last_resort`).

The flags are :mod:`qbench.cli_parser`, the commands :mod:`qbench.cli_commands`, the checks made
before any model library is imported :mod:`qbench.cli_checks`.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import warnings
from typing import Any, Sequence

from qbench.cli_commands import config_from_args, sweep_axes  # noqa: F401 (public API of qbench.cli)
from qbench.cli_parser import _Parser, build_parser  # noqa: F401 (_Parser: other commands' one-line errors)
from qbench.errors import QBenchError, RunInterrupted


def _log_to_stderr() -> None:
    """qbench's own warnings (``logging.getLogger("qbench")``) as ``qbench: warning: ...`` lines."""
    log = logging.getLogger("qbench")
    if not log.handlers:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("qbench: %(levelname)s: %(message)s"))
        log.addHandler(h)
        log.propagate = False
    log.setLevel(logging.WARNING)  # its own level: the root's is ERROR (quiet_libraries)


def quiet_libraries() -> None:
    """Silence import-time chatter of torch/torchao/bitsandbytes/diffusers that is not ours.

    Any library logger without a level of its own inherits the root's, set to ERROR here: a new
    release that starts logging a warning on import (kernels 0.19 via bitsandbytes: "Skipping
    publisher trust check ... offline mode") cannot add a line to qbench's one-line errors."""
    logging.getLogger().setLevel(logging.ERROR)
    for name in ("torch.utils._pytree", "bitsandbytes", "kernels", "torchao", "diffusers", "transformers", "datasets", "httpx2", "timm"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"(diffusers|transformers|torchvision|open_clip|timm)")
    warnings.filterwarnings("ignore", message=".*deprecated.*")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``qbench`` command; returns its exit code (documented in the README, "Exit codes").

    A :class:`QBenchError` is one line and its ``exit_code`` (2: bad input). Anything else is caught
    last (:func:`_last_resort`): one line naming the command and the input, the traceback in a
    log file, exit 2 for an operating-system error on an input (a file, a folder, a full disk)
    and 1 for an internal error, said as such."""
    # With more busy threads than cores, libgomp's default active wait stalls every parallel
    # region ~10 ms (measured on the 2-core CI machine); it must be set before torch loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    quiet_libraries()
    _log_to_stderr()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    restore = _stop_signals_interrupt()
    try:
        from qbench import cli_commands
        from qbench.progress import working

        with working(_quiet_work(args)):  # a spinner where a command would otherwise say nothing for a while
            return getattr(cli_commands, args.func)(args)  # the parser names its command (no import cycle)
    except QBenchError as e:
        by = f"{signal.Signals(_SIGNALLED[0]).name}: " if _SIGNALLED and isinstance(e, RunInterrupted) else ""
        sys.stderr.write(f"qbench: error: {by}{one_line(str(e), keep_lines=True)}\n")
        return 128 + _SIGNALLED[0] if by else e.exit_code
    except KeyboardInterrupt:
        by = f" by {signal.Signals(_SIGNALLED[0]).name}" if _SIGNALLED else ""
        sys.stderr.write(f"qbench: interrupted{by}; results already stored are kept\n")
        return 128 + (_SIGNALLED[0] if _SIGNALLED else signal.SIGINT)
    except Exception as e:  # noqa: BLE001 - the last resort: never a bare traceback
        return _last_resort(args, e)
    finally:
        for sig, handler in restore.items():
            signal.signal(sig, handler)
        _close_process_group()


def _close_process_group() -> None:
    """Close a sharded run's process group before exit (qbench.dist.close); never raises."""
    if "qbench.dist" not in sys.modules:
        return
    try:
        sys.modules["qbench.dist"].close()
    except Exception as e:  # noqa: BLE001 - the exit code is already decided; say it and go on
        sys.stderr.write(f"qbench: warning: closing the process group: {one_line(str(e))}\n")


def _quiet_work(args) -> str | None:
    """What a command that prints nothing until it is done is doing (None: it shows its own
    progress, or is quick): ``report``, ``plan`` and every ``--dry-run`` load libraries, model
    configurations and stored results for tens of seconds on a small machine."""
    if args.func == "cmd_report":
        return "qbench report: reading the stored runs, drawing the figures and the image grid"
    if args.func == "cmd_plan":
        return "qbench plan: reading the sweep and each model's configuration"
    if getattr(args, "dry_run", False):
        return f"qbench {args.command} --dry-run: loading libraries and planning"
    return None


#: longest error line printed (a message that serialised a huge value once took 5.5 GB)
MAX_MESSAGE = 2000


def one_line(text: str, keep_lines: bool = False) -> str:
    """``text`` bounded to :data:`MAX_MESSAGE` characters per line; one line unless ``keep_lines``
    (a QBenchError listing several problems, :class:`~qbench.errors.ManyErrors` or the preflight's,
    gives one per line)."""
    lines = text.splitlines() or [""]
    if not keep_lines:
        lines = [" ".join(x.strip() for x in lines if x.strip())]
    return "\n".join(x if len(x) <= MAX_MESSAGE else x[: MAX_MESSAGE - 3] + "..." for x in lines)


def _last_resort(args: argparse.Namespace, e: BaseException) -> int:
    """One line for an exception no check turned into a QBenchError: exit 2 with the file for an
    ``OSError`` (an input or the file system: a full disk, a read-only folder, a name too long),
    exit 1 "internal error" for anything else; the traceback goes to a log file named on the line."""
    import traceback

    log = _write_log("".join(traceback.format_exception(type(e), e, e.__traceback__)))
    where = f"; traceback in {log}" if log else ""
    cmd = f"qbench {args.command}"
    if isinstance(e, OSError):
        name = " and ".join(repr(str(f))[:160] for f in (e.filename, e.filename2) if f is not None) or "a file it uses"
        sys.stderr.write(f"qbench: error: {cmd}: {e.strerror or type(e).__name__} on {name}{where}\n")
        return 2
    what = one_line(f"{type(e).__name__}: {e}" if str(e) else type(e).__name__)
    if isinstance(e, (MemoryError, RecursionError)):
        sys.stderr.write(f"qbench: error: {cmd}: an input is too large or too deeply nested ({what}){where}\n")
        return 2
    sys.stderr.write(f"qbench: internal error: {cmd}: {what} (a bug in qbench, not in your input; please report it{where})\n")
    return 1


def _write_log(text: str) -> str | None:
    """Write ``text`` to a new ``qbench-error-*.log`` in the qbench cache's ``logs`` folder, else the
    temporary folder; its path, or None if neither can be written."""
    import tempfile

    cache = os.environ.get("QBENCH_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "qbench")
    for folder in (os.path.join(cache, "logs"), tempfile.gettempdir()):
        try:
            os.makedirs(folder, exist_ok=True)
            fd, path = tempfile.mkstemp(prefix="qbench-error-", suffix=".log", dir=folder)
            with os.fdopen(fd, "w", encoding="utf-8", errors="replace") as f:
                f.write(text)
            return path
        except OSError:
            continue
    return None


#: the stop signal received during this command (SIGTERM, SIGHUP), if any
_SIGNALLED: list[int] = []


def _on_stop_signal(signum: int, frame: Any) -> None:
    """SIGTERM (``timeout``, a CI cancel, Slurm) and SIGHUP (a closed terminal) stop a command the
    way Ctrl-C does: KeyboardInterrupt in the main thread, so a run is marked ``interrupted`` and
    keeps its images. A second signal while that cleanup runs is ignored (kill -9 still works; the
    run is then shown as ``stale``)."""
    if not _SIGNALLED:
        _SIGNALLED.append(signum)
        raise KeyboardInterrupt(signal.Signals(signum).name)


def _stop_signals_interrupt() -> dict[int, Any]:
    """Install :func:`_on_stop_signal` for SIGTERM and SIGHUP where they have their default action
    (an ignored SIGHUP, as under ``nohup``, stays ignored); returns the handlers to restore."""
    _SIGNALLED.clear()
    if threading.current_thread() is not threading.main_thread():
        return {}
    old = {}
    for name in ("SIGTERM", "SIGHUP"):
        sig = getattr(signal, name, None)
        if sig is not None and signal.getsignal(sig) is signal.SIG_DFL:
            old[sig] = signal.signal(sig, _on_stop_signal)
    return old


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
