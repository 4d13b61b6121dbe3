"""The checks a command's arguments and named files allow before any model library is imported.

A refusal that the arguments alone decide (a bad ``--prompts`` spec, an unknown model, a value out
of range, ``--out-dir`` naming a file, a FIFO as ``--qsched-ckpt``) used to wait for the whole
preflight, which imports torch and diffusers first (10-90 s on a loaded 2-core machine; issue 23
§3). :func:`precheck_run` runs these checks with the standard library, the registries
(:mod:`qbench.catalog`: names only, nothing loaded) and the prompt readers, and raises every
problem it finds at once (:func:`qbench.errors.gather`). The full preflight
(:func:`qbench.preflight.plan_run`) still runs afterwards and checks what needs the libraries
(method options, devices, weights); measured times are in the README ("Start-up").
"""
from __future__ import annotations

import os
from typing import Any

from qbench.errors import ConfigError, gather

#: environment variables that must name a folder when set (a file there failed later with OSError)
FOLDER_VARIABLES = ("QBENCH_CACHE", "QBENCH_STANDIN_DIR", "QBENCH_ZOO_WORK", "HF_HOME", "HF_HUB_CACHE", "HF_DATASETS_CACHE", "TORCH_HOME",
                    "XDG_CACHE_HOME")
#: method options whose value is a file the method reads (a path string; a mapping is inline)
FILE_OPTIONS = ("layers", "allocation", "qsched_ckpt")


def check_folder_variables() -> None:
    """:class:`ConfigError` for a cache variable that names something other than a folder."""
    for var in FOLDER_VARIABLES:
        v = os.environ.get(var)
        if v and os.path.lexists(v) and not os.path.isdir(v):
            raise ConfigError(f"${var}={v!r} is not a folder; point it at a folder (or unset it)")


def check_out_dir(path: str | None, what: str = "--out-dir") -> None:
    """:class:`ConfigError` when ``path`` exists and is not a folder (it was reported as "not
    writable: File exists" after the preflight)."""
    if path and os.path.lexists(path) and not os.path.isdir(path):
        raise ConfigError(f"{what} {path!r} is a file, not a folder")


def check_option_files(options: dict[str, Any], where: str = "method option") -> None:
    """A method option naming a file (:data:`FILE_OPTIONS`, also inside ``base_options``) must be a
    regular file: a FIFO would block the reader, a folder was reported as "does not exist"."""
    from qbench.fsutil import require_regular_file

    for key, value in options.items():
        if key in FILE_OPTIONS and isinstance(value, str) and value.strip() and not value.lstrip().startswith(("{", "[")):
            require_regular_file(value, f"{where} {key}")
        elif key.endswith("_options") and isinstance(value, dict):
            check_option_files(value, f"{where} {key}")


def _check_prompts(spec: Any, flag: str) -> None:
    """Load ``spec`` to check it; an empty or blank one is refused (it would silently mean the default)."""
    from qbench.prompts import load_prompts

    if isinstance(spec, str) and not spec.strip():
        raise ConfigError(f"{flag} is empty: give a prompt spec (NAME:N, hf:..., or a file), or leave the flag out for the default")
    if isinstance(spec, str):
        load_prompts(spec)


def _check_names(cfg) -> list:
    from qbench.catalog import METHODS, METRICS, MODELS

    checks = [lambda r=reg, v=v: r.entry(v) for reg, v in ((MODELS, cfg.model), (METHODS, cfg.method)) if isinstance(v, str) and v]
    if isinstance(cfg.metrics, list):
        checks += [lambda n=n: METRICS.entry(n) for n in cfg.metrics if isinstance(n, str)]
    return checks


def _check_qsched_ckpt(path: Any) -> None:
    if isinstance(path, str) and path:
        from qbench.methods.qsched_scheduler import load_checkpoint

        load_checkpoint(path)


def precheck_run(cfg) -> None:
    """Every problem of ``cfg`` (a :class:`~qbench.config.RunConfig` from the flags) that needs no
    model library: field types and ranges, registered names, the prompt and calibration-prompt
    specs and files, the Q-Sched checkpoint, option files, ``--out-dir``/``--db`` and the cache
    variables. Raises :class:`ConfigError` or :class:`~qbench.errors.ManyErrors`; returns None."""
    opts = cfg.method_options if isinstance(cfg.method_options, dict) else {}
    gather(
        cfg.validate,
        *_check_names(cfg),
        lambda: _check_prompts(cfg.prompts, "--prompts"),
        lambda: _check_prompts(cfg.calib_prompts, "--calib-prompts"),
        lambda: _check_qsched_ckpt(opts.get("qsched_ckpt")),
        lambda: check_option_files({k: v for k, v in opts.items() if k != "qsched_ckpt"}),
        lambda: _check_finite("-O", cfg.method_options),
        lambda: _check_finite("-M", cfg.metric_options),
        lambda: check_out_dir(cfg.out_dir if isinstance(cfg.out_dir, str) else None),
        lambda: _check_db(cfg.db),
        check_folder_variables,
    )


def _check_finite(flag: str, options: Any) -> None:
    """Refuse an option value holding a non-finite number anywhere (``1e400`` parses as inf, NaN):
    no option means it, and stored configurations and identity keys must be strict JSON."""
    import math

    def bad(v: Any) -> bool:
        if isinstance(v, float):
            return not math.isfinite(v)
        if isinstance(v, dict):
            return any(bad(x) for x in v.values())
        if isinstance(v, (list, tuple)):
            return any(bad(x) for x in v)
        return False

    for k, v in (options.items() if isinstance(options, dict) else ()):
        if bad(v):
            raise ConfigError(f"{flag} {k}: holds a non-finite number (inf or NaN, e.g. 1e400): give a finite value")


def _check_db(db: Any) -> None:
    if isinstance(db, str) and db and os.path.isdir(db):
        raise ConfigError(f"--db {db!r} is a folder, not a qbench results database")
