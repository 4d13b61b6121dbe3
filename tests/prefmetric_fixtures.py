"""Fixtures shared by the preference-metric and JAQ-variant tests (imported by those modules)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from qbench.api import Prompt


@pytest.fixture(scope="module", autouse=True)
def standin_folder(tmp_path_factory):
    """Every stand-in (built by the tests and by -M standin=true) in one folder of this session."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("QBENCH_STANDIN_DIR", str(tmp_path_factory.getbasetemp() / "standins"))
        yield


@pytest.fixture(scope="module")
def images():
    """Four small random pictures (smooth: 8x8 noise upsampled), of a size no metric uses natively."""
    rng = np.random.default_rng(0)
    return [Image.fromarray((rng.random((8, 8, 3)) * 255).astype(np.uint8)).resize((48, 40), Image.BICUBIC) for _ in range(4)]


def prompts(texts, start=0):
    return [Prompt(f"p{i}", t, i) for i, t in enumerate(texts, start)]
