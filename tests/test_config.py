import pytest

from qbench.config import RunConfig, stable_hash
from qbench.errors import ConfigError


def test_round_trip_json():
    cfg = RunConfig(model="tiny-flux", method="naive", bits="w4a8", mode="kernel", metrics=["psnr", "ssim"], method_options={"group_size": 64})
    assert cfg.bits == "W4A8"
    back = RunConfig.from_json(cfg.to_json())
    assert back == cfg and back.to_json() == cfg.to_json()


def test_metrics_string_is_split():
    assert RunConfig(metrics="psnr, ssim").metrics == ["psnr", "ssim"]


@pytest.mark.parametrize("kw", [dict(mode="fake"), dict(batch_size=0), dict(steps=0), dict(resolution=30), dict(latency_warmup=-1)])
def test_bad_values(kw):
    with pytest.raises(ConfigError):
        RunConfig(**kw)


def test_unknown_field_and_bad_json():
    with pytest.raises(ConfigError, match="unknown RunConfig field"):
        RunConfig.from_dict({"modle": "x"})
    with pytest.raises(ConfigError, match="malformed"):
        RunConfig.from_json("{not json")


def test_stable_hash_order_independent():
    assert stable_hash({"a": 1, "b": 2}) == stable_hash({"b": 2, "a": 1}) != stable_hash({"a": 2, "b": 1})
