"""Bit specs, QuantConfig validation, per-spec defaults, override parsing."""
from __future__ import annotations

import json

import pytest

from qbench.errors import ConfigError
from qbench.quant.spec import BitSpec, Override, QuantConfig, load_overrides


@pytest.mark.parametrize(
    "text,w,a",
    [("W4A8", 4, 8), ("w8a8", 8, 8), ("W4A16", 4, None), ("W4A4", 4, 4), ("W8A16", 8, None), ("W2A8", 2, 8), (" W3A8 ", 3, 8)],
)
def test_bitspec_parse(text, w, a):
    b = BitSpec.parse(text)
    assert (b.w, b.a) == (w, a)
    assert str(b) == text.strip().upper()


@pytest.mark.parametrize("bad", ["W4", "A8", "W4A", "W16A16", "W1A8", "W4A9", "W9A8", "4A8", "W4A8x", "", "W4.5A8"])
def test_bitspec_bad(bad):
    with pytest.raises(ConfigError) as e:
        BitSpec.parse(bad)
    assert "\n" not in str(e.value) and str(e.value)


def test_defaults_follow_torchao_conventions():
    s = QuantConfig(bits="W4A8").spec_for("x")
    assert (s.w_granularity, s.group_size, s.w_symmetric, s.a_granularity, s.a_symmetric) == ("group", 32, True, "token", False)
    assert s.group_scales == "float"  # simulate: the papers' float group scales
    assert QuantConfig(bits="W4A8", mode="kernel").spec_for("x").group_scales == "int8"
    s = QuantConfig(bits="W8A8").spec_for("x")
    assert (s.w_granularity, s.group_size, s.a_symmetric) == ("channel", None, True)
    s = QuantConfig(bits="W4A4").spec_for("x")
    assert (s.w_granularity, s.a_bits, s.a_symmetric) == ("channel", 4, True)
    s = QuantConfig(bits="W4A16").spec_for("x")
    assert (s.w_granularity, s.a_bits) == ("group", None)
    assert QuantConfig(bits="W8A16").spec_for("x").w_granularity == "channel"


@pytest.mark.parametrize(
    "kw,msg",
    [
        (dict(bits="W4A8", mode="fast"), "mode"),
        (dict(bits="W4A8", group_size=33), "group_size"),
        (dict(bits="W4A8", group_size=0), "group_size"),
        (dict(bits="W4A8", w_granularity="row"), "granularity"),
        (dict(bits="W4A8", layer_types=("linear", "attention")), "layer type"),
        (dict(bits="W4A8", components=("unet",)), "component"),
        (dict(bits="W4A8", a_static=True), "a_granularity='tensor'"),
        (dict(bits="W4A8", mode="kernel", group_scales="float"), "group_scales='int8'"),
        (dict(bits="W4A8", mode="kernel", w_symmetric=False), "symmetric"),
        (dict(bits="W8A8", w_granularity="group", group_scales="int8"), "at most 4 bits"),
        (dict(bits="W4A8", w_clip="percentile"), "clipping"),
    ],
)
def test_config_errors_are_one_clear_line(kw, msg):
    with pytest.raises(ConfigError) as e:
        QuantConfig(**kw)
    assert msg in str(e.value) and "\n" not in str(e.value)


def test_kernel_weight_only_allows_float_group_scales():
    s = QuantConfig(bits="W4A16", mode="kernel", group_scales="float", w_symmetric=False).spec_for("x")
    assert s.group_scales == "float" and not s.w_symmetric


def test_override_forms():
    assert Override.parse("a", "fp16").fp and Override.parse("a", None).fp and Override.parse("a", "skip").fp
    o = Override.parse("a", 8)
    assert (o.w, o.a_set) == (8, False)
    o = Override.parse("a", "W8A8")
    assert (o.w, o.a, o.a_set) == (8, 8, True)
    o = Override.parse("a", {"w": 8, "a": 16})
    assert (o.w, o.a, o.a_set) == (8, None, True)
    o = Override.parse("a", {"w": 4, "group_size": 64})
    assert dict(o.options) == {"group_size": 64}
    for bad in ({"w": 8, "bits": 4}, {"w": 12}, {"w": "x"}, True, 1.5, "W4"):
        with pytest.raises(ConfigError):
            Override.parse("a", bad)


def test_include_exclude_and_override_resolution():
    cfg = QuantConfig(
        bits="W4A8",
        include=("blocks.*",),
        exclude=("*.proj_out",),
        overrides={"blocks.0.ff": "fp16", "blocks.1.ff": {"w": 8, "a": 8}, "head": 8, "blocks.*.attn": "W4A16"},
    )
    assert cfg.spec_for("blocks.0.ff") is None
    assert cfg.spec_for("blocks.1.ff").bits == "W8A8" and cfg.spec_for("blocks.1.ff").w_granularity == "channel"
    assert cfg.spec_for("head").bits == "W8A8"  # override beats include; a keeps the global 8
    assert cfg.spec_for("blocks.2.attn").bits == "W4A16"
    assert cfg.spec_for("blocks.2.proj_out") is None
    assert cfg.spec_for("blocks.2.fc").bits == "W4A8"
    assert cfg.spec_for("stem") is None


def test_load_overrides_files(tmp_path):
    y = tmp_path / "layers.yaml"
    y.write_text("down.0.fc: 8\nup.1.fc: fp16\nmid.fc: {w: 4, a: 16}\n")
    j = tmp_path / "layers.json"
    j.write_text(json.dumps({"down.0.fc": 8}))
    assert load_overrides(str(y)) == {"down.0.fc": 8, "up.1.fc": "fp16", "mid.fc": {"w": 4, "a": 16}}
    assert load_overrides(str(j)) == {"down.0.fc": 8}
    cfg = QuantConfig(bits="W4A8", overrides=str(y))
    assert cfg.spec_for("up.1.fc") is None and cfg.spec_for("mid.fc").bits == "W4A16"
    with pytest.raises(ConfigError, match="not found"):
        load_overrides(str(tmp_path / "nope.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="cannot parse"):
        load_overrides(str(bad))
    lst = tmp_path / "list.yaml"
    lst.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="map"):
        load_overrides(str(lst))
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\x00\x01\xff")
    with pytest.raises(ConfigError, match=r"bin\.yaml is not UTF-8 text \(invalid byte at offset 2\)"):
        load_overrides(str(binary))


def test_to_dict_is_json_able():
    cfg = QuantConfig(bits="W4A8", overrides={"a": 8, "b": "fp16"})
    d = cfg.to_dict()
    json.dumps(d)
    assert d["bits"] == "W4A8" and d["overrides"] == {"a": {"w": 8}, "b": "fp16"}
