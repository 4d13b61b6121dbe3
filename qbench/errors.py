"""Errors that the CLI turns into one clear line and a non-zero exit code."""
from __future__ import annotations


class QBenchError(Exception):
    """A user-facing error: bad input, missing weights, unknown name, ...

    The CLI prints ``qbench: error: <message>`` and exits with ``exit_code``; it never shows a
    traceback for these. Everything else is a bug and keeps its traceback.
    """

    exit_code = 2


class UnknownNameError(QBenchError):
    """A name that is not in a registry."""


class ConfigError(QBenchError):
    """A malformed configuration value (bit spec, flag, option)."""


class NoSuchRunError(QBenchError):
    """A run id (or prefix/suffix) that matches no stored run."""


class DiskFullError(QBenchError):
    """A write failed for lack of space (SQLite's SQLITE_FULL, ENOSPC)."""


class MissingWeightsError(QBenchError):
    """Weights that cannot be found locally while the hub is unreachable or disabled."""

    exit_code = 3


class NonFiniteOutputError(QBenchError):
    """A model produced NaN or inf."""

    exit_code = 4


class RunInterrupted(QBenchError):
    """Ctrl-C during a run: what was produced so far is kept."""

    exit_code = 130


class ManyErrors(QBenchError):
    """Several independent problems found by one check (see :func:`gather`)."""

    def __init__(self, errors: list[QBenchError]):
        self.errors = list(errors)
        super().__init__(f"{len(self.errors)} problems:\n" + "\n".join(f"  - {e}" for e in self.errors))
        self.exit_code = max(e.exit_code for e in self.errors)


def gather(*checks) -> None:
    """Run every check (callables without arguments); raise what they raised: the one error, or
    :class:`ManyErrors` when several failed, so a caller can report all problems at once."""
    found: list[QBenchError] = []
    for check in checks:
        try:
            check()
        except ManyErrors as e:
            found.extend(e.errors)
        except QBenchError as e:
            found.append(e)
    if len(found) == 1:
        raise found[0]
    if found:
        raise ManyErrors(found)
