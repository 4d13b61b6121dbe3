"""The Fréchet distance between two Gaussians, in float64, with round-off handled explicitly.

``d = ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr(sqrtm(S1 S2))`` (Dowson & Landau 1982; FID,
Heusel et al. 2017). It is the squared 2-Wasserstein distance of N(mu1, S1) and N(mu2, S2), so it
is never negative in exact arithmetic. Two round-off effects made qbench print negative values
for a set against itself (-2.6 with 2 images of the stand-in network, ~-1e-4 at 2048 dims):

* **round-off eigenvalues.** A covariance of n < d+1 samples has d-n+1 zero eigenvalues, which
  ``eigh`` returns as +-(d eps lambda_max) noise; their square roots (~1e-8 sqrt(lambda_max) each)
  entered the trace term. Here every eigenvalue ``w <= d * eps * max|w|`` (numpy's
  ``matrix_rank`` tolerance) of each covariance is set to 0, and the traces ``tr(S)`` are summed
  from the same eigenvalues as the square roots, so all three terms see one PSD matrix.
* **squared condition number.** ``tr sqrtm(S1 S2)`` is computed as the nuclear norm (sum of
  singular values) of ``S1^(1/2) S2^(1/2)``, whose singular values are the square roots of the
  eigenvalues of ``S1^(1/2) S2 S1^(1/2)`` (the usual route) but are obtained without squaring the
  matrix, i.e. to ``eps * lambda_max`` rather than ``sqrt(eps) * lambda_max``.

What remains is float64 round-off of order ``d * eps * (tr S1 + tr S2)`` (measured: <= 1e-15
relative). A result with ``|d| <= ROUNDOFF_REL * (tr S1 + tr S2) + ROUNDOFF_ABS`` is reported as
exactly 0.0; a result below ``-that`` cannot come from round-off and raises :class:`QBenchError`.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from qbench.errors import ConfigError, QBenchError

EPS64 = float(np.finfo(np.float64).eps)
ROUNDOFF_REL = 1e-9  # a million times the measured round-off, far below any FID worth reporting
ROUNDOFF_ABS = 1e-12
ROUNDOFF_NOTE = (
    "float64; covariance eigenvalues <= d*eps*max (round-off) set to 0 for traces and square roots alike; "
    f"tr sqrtm(S1 S2) = nuclear norm of S1^1/2 S2^1/2 (SVD); |FID| <= {ROUNDOFF_REL:g}*(tr S1 + tr S2) + {ROUNDOFF_ABS:g} "
    "is round-off, reported as 0.0; a more negative value raises"
)


def psd_eig(sigma: np.ndarray) -> tuple[np.ndarray, np.ndarray, int, float]:
    """Eigen-decomposition of the symmetric part of ``sigma`` ``(d, d)`` with round-off removed.

    Returns ``(w, v, n_dropped, min_rel)``: eigenvalues ``(d,)`` with every
    ``w <= d * eps * max|w|`` set to 0 (negative ones included), eigenvectors ``(d, d)``
    (columns), how many were zeroed, and the smallest raw eigenvalue over the largest (a value
    well below ``-d * eps`` means ``sigma`` was not PSD, e.g. float32-rounded statistics).
    """
    a = np.asarray(sigma, dtype=np.float64)
    w, v = np.linalg.eigh((a + a.T) / 2)
    top = float(np.abs(w).max(initial=0.0))
    keep = w > top * a.shape[0] * EPS64
    return np.where(keep, w, 0.0), v, int((~keep).sum()), float(w.min() / top) if top > 0 else 0.0


def _sqrt(w: np.ndarray, v: np.ndarray) -> np.ndarray:
    return (v * np.sqrt(w)) @ v.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """``tr(sqrtm(sigma1 @ sigma2))`` for PSD ``(d, d)`` matrices (float64, round-off removed).

    ``sigma1 @ sigma2`` is similar to ``A = S1h sigma2 S1h`` (``S1h`` the PSD square root), and
    ``A = M M^T`` with ``M = S1h S2h``: the trace is the sum of the singular values of ``M``.
    """
    return _trace_sqrt(psd_eig(sigma1)[:2], psd_eig(sigma2)[:2])


def _trace_sqrt(e1: tuple[np.ndarray, np.ndarray], e2: tuple[np.ndarray, np.ndarray]) -> float:
    m = _sqrt(*e1) @ _sqrt(*e2)
    sv = np.linalg.svd(m, compute_uv=False)
    tol = float(sv.max(initial=0.0)) * m.shape[0] * EPS64
    return float(sv[sv > tol].sum())


def frechet_terms(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> dict[str, Any]:
    """The Fréchet distance and its parts: ``value`` (float, >= 0), ``raw`` (before the round-off
    snap), ``mean_term``, ``trace1``, ``trace2``, ``trace_sqrt``, ``tolerance``,
    ``dropped_eigenvalues`` ([n1, n2]) and ``min_eigenvalue_rel`` ([r1, r2], see :func:`psd_eig`). ``mu`` are ``(d,)``, ``sigma`` ``(d, d)``, any float dtype.

    Raises :class:`ConfigError` when the shapes do not match and :class:`QBenchError` when the
    statistics hold NaN/inf or the distance is negative beyond round-off (which, with both traces
    and the square roots taken from the same PSD eigenvalues, only a bug can cause).
    """
    mu1, mu2 = np.asarray(mu1, np.float64).ravel(), np.asarray(mu2, np.float64).ravel()
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise ConfigError(f"FID statistics do not match: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs {sigma2.shape}")
    if not all(np.isfinite(x).all() for x in (mu1, mu2, sigma1, sigma2)):
        raise QBenchError("FID statistics hold NaN/inf")
    w1, v1, n1, m1 = psd_eig(sigma1)
    w2, v2, n2, m2 = (w1, v1, n1, m1) if np.array_equal(sigma1, sigma2) else psd_eig(sigma2)  # a set against itself
    diff = mu1 - mu2
    mean_term, tr1, tr2 = float(diff @ diff), float(w1.sum()), float(w2.sum())
    tsp = _trace_sqrt((w1, v1), (w2, v2))
    raw = mean_term + tr1 + tr2 - 2.0 * tsp
    tol = ROUNDOFF_REL * (tr1 + tr2) + ROUNDOFF_ABS
    if raw < -tol:
        raise QBenchError(
            f"Frechet distance came out negative ({raw:.6g}) beyond float64 round-off (tolerance {tol:.3g}); "
            "the covariances are not positive semi-definite or the computation is wrong"
        )
    return {"value": 0.0 if abs(raw) <= tol else float(raw), "raw": float(raw), "mean_term": mean_term, "trace1": tr1,
            "trace2": tr2, "trace_sqrt": tsp, "tolerance": tol, "dropped_eigenvalues": [n1, n2], "min_eigenvalue_rel": [m1, m2]}


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """``||mu1 - mu2||^2 + tr(sigma1) + tr(sigma2) - 2 tr(sqrtm(sigma1 sigma2))`` (float, >= 0);
    see :func:`frechet_terms` for the round-off handling and the errors raised."""
    return frechet_terms(mu1, sigma1, mu2, sigma2)["value"]


class FeatureStats:
    """Running float64 sums of features: ``n``, ``sum x``, ``sum x x^T`` (memory independent of n).

    Rows are summed in fixed blocks of ``BLOCK`` consecutive rows, so the float64 result depends
    only on the sequence of rows, not on how the caller batched them: a sharded run that replays
    every rank's features in image order (:meth:`record` / :meth:`replay`) gets bit-identical sums."""

    BLOCK = 64

    def __init__(self, dim: int = 2048):  # Inception-v3 pool3
        self.dim = dim
        self.reset()

    def reset(self) -> None:
        self.n = 0
        self.sum = np.zeros(self.dim, dtype=np.float64)
        self.outer = np.zeros((self.dim, self.dim), dtype=np.float64)
        self._pending: list[np.ndarray] = []
        self._log: list[np.ndarray] | None = None

    def record(self) -> None:
        """Keep every feature array given to :meth:`update` (float32 when exact), for :meth:`replay`."""
        self._log = []

    @property
    def log(self) -> list[np.ndarray]:
        return list(self._log or [])

    def replay(self, logs: Sequence[Sequence[np.ndarray]]) -> None:
        """Reset, then update with every array of ``logs`` (a list per rank, in image order)."""
        self.reset()
        for log in logs:
            for x in log:
                self.update(x)

    def update(self, features: np.ndarray) -> None:
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected features of shape (N, {self.dim}), got {x.shape}")
        if not np.isfinite(x).all():
            raise QBenchError("non-finite Inception features (NaN/inf in the images or the network)")
        if self._log is not None:
            x32 = x.astype(np.float32)
            self._log.append(x32 if np.array_equal(x32.astype(np.float64), x) else x.copy())
        self.n += x.shape[0]
        self._pending.append(x)
        self._flush(final=False)

    def _flush(self, final: bool) -> None:
        rows = sum(p.shape[0] for p in self._pending)
        if rows < self.BLOCK and not (final and rows):
            return
        x = np.concatenate(self._pending)
        whole = x.shape[0] if final else x.shape[0] - x.shape[0] % self.BLOCK
        for i in range(0, whole, self.BLOCK):
            b = x[i : i + self.BLOCK]
            self.sum += b.sum(axis=0)
            self.outer += b.T @ b
        self._pending = [x[whole:]] if whole < x.shape[0] else []

    def mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean and unbiased covariance (``ddof=1``, as numpy.cov, pytorch-fid, torchmetrics)."""
        self._flush(final=True)
        if self.n < 2:
            raise QBenchError(f"FID needs at least 2 images per side, got {self.n}")
        mu = self.sum / self.n
        cov = (self.outer - self.n * np.outer(mu, mu)) / (self.n - 1)
        return mu, cov
