"""Every calibrating method's default calibration size goes through one rule
(``Method.default_calibration_n``): the method's published size, capped by the model's
``calib_size``: 2 on the random-weight tiny twins (a smoke test of the code path: MixDQ's 32-prompt
default took about an hour there on a 2-core CPU), none on the toy world's trained models or the
real ones. ``--calib-prompts`` always wins."""
from __future__ import annotations

import pytest

from qbench.config import RunConfig
from qbench.models.loader import get_spec


@pytest.mark.parametrize("method, bits, options, published", [
    ("mixdq", "W4A8", {}, 32),
    ("qsched", "W4A8", {}, 25),
    ("naive", "W8A8", {"a_static": True, "a_granularity": "tensor"}, 8),
])
@pytest.mark.parametrize("model", ["tiny-sdxl-turbo", "tiny-flux", "toy-flux", "flux-schnell"])
def test_default_calibration_size_per_model(method, bits, options, published, model):
    from qbench.catalog import METHODS

    spec = get_spec(model)
    cfg = RunConfig(model=model, method=method, bits=bits, method_options=dict(options), out_dir="/nonexistent-qbench-out")
    m = METHODS.get(method)(cfg)
    want = 2 if model.startswith("tiny-") else published
    assert m.calibration_prompts_n == want, (model, method)
    assert (spec.calib_size is None) == (not model.startswith("tiny-"))
    if method == "mixdq":  # counts --calib-prompts itself (the others: the harness takes all of it)
        assert METHODS.get(method)(cfg.replace(calib_prompts="coco2017-calib:5")).calibration_prompts_n == 5
