"""What the preference metrics (HPSv2.1, PickScore, ImageReward) share: hub files, strict
state-dict loading, the paired cosine, and the metric class around a reusable scorer.

Weights: one rule, as for every learned metric (:mod:`qbench.metrics.common`): a user's path wins; else the
hub's cached copy is used, downloaded when the hub is allowed; offline (``HF_HUB_OFFLINE=1`` /
``QBENCH_OFFLINE=1``) or on a failed download a :class:`~qbench.errors.MissingWeightsError` says
in one line what to download and which ``-M`` option takes it. Never a silent fallback.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from qbench.errors import MissingWeightsError, QBenchError
from qbench.metrics import common
from qbench.metrics.base import PerImageMetric


def _why(e: Exception) -> str:
    return "downloads are disabled (offline)" if common.is_offline() else f"the download failed ({type(e).__name__})"


def hub_file(repo_id: str, filename: str, what: str, option: str, revision: str | None = None) -> str:
    """Local path of ``repo_id/filename`` (hub cache), downloading it when allowed.

    Raises :class:`MissingWeightsError` naming the URL and ``-M option=PATH``.
    """
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(repo_id, filename, revision=revision, local_files_only=common.is_offline())
    except Exception as e:  # noqa: BLE001 - offline, not cached, unreachable: one line for the user
        url = f"https://huggingface.co/{repo_id}/resolve/{revision or 'main'}/{filename}"
        raise MissingWeightsError(f"{what} weights are not cached and {_why(e)}; download {url} and pass -M {option}=PATH") from None


def hub_folder(repo_id: str, patterns: Sequence[str], what: str, option: str, revision: str | None = None) -> str:
    """Local folder holding the files of ``repo_id`` that match ``patterns`` (hub cache).

    Raises :class:`MissingWeightsError` naming the repository and ``-M option=FOLDER``.
    """
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo_id, revision=revision, allow_patterns=list(patterns), local_files_only=common.is_offline())
    except Exception as e:  # noqa: BLE001 - see hub_file
        raise MissingWeightsError(
            f"{what} files are not cached and {_why(e)}; download https://huggingface.co/{repo_id} "
            f"({', '.join(patterns)}) into a folder and pass -M {option}=FOLDER"
        ) from None


def load_state_strict(model: Any, state: dict, what: str, option: str) -> None:
    """``model.load_state_dict(state)`` where a name mismatch is one :class:`QBenchError` line
    (counts and the first three missing / unexpected names), never a traceback."""
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # a tensor of another shape
        shapes = [ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln]
        raise QBenchError(f"{what}: the weights do not fit the architecture ({len(shapes)} shape mismatches, e.g. {shapes[:1]}) (option {option})") from None
    if missing or unexpected:
        raise QBenchError(
            f"{what}: the weights do not fit the architecture ({len(missing)} missing, e.g. {missing[:3]}; "
            f"{len(unexpected)} unexpected, e.g. {unexpected[:3]}) (option {option})"
        )


def paired_cosine(image_emb, text_emb) -> np.ndarray:
    """Pure: row-wise cosine of paired embeddings ``(N, d)`` and ``(N, d)`` -> ``(N,)`` float64."""
    a = np.asarray(image_emb, dtype=np.float64)
    b = np.asarray(text_emb, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"paired embeddings must have one shape (N, d), got {a.shape} and {b.shape}")
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


class ScorerMetric(PerImageMetric):
    """A per-image metric of (image, its prompt) computed by a reusable scorer: ``SCORER(ctx)``
    with ``score(images, texts) -> (N,)`` and ``describe() -> dict``; ``RANGE`` goes to details."""

    SCORER: ClassVar[type]
    RANGE: ClassVar[str] = ""

    def __init__(self, ctx):
        super().__init__(ctx)
        self.scorer = self.SCORER(ctx)

    def score_batch(self, images, prompts, references=None) -> np.ndarray:
        return self.scorer.score(images, [p.text for p in prompts])

    def describe(self) -> dict[str, Any]:
        return {**self.scorer.describe(), "range": self.RANGE}
