"""`qbench size`: the real denoisers built on the meta device, sized per method x bit width.

The per-layer law (bytes linear in output rows) is checked against a materialised quantized
layer; the real architectures' parameter counts against their published totals; the CLI prints
one line per cell and refuses bad input in one line."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from qbench.cli import main
from qbench.errors import QBenchError
from qbench.quant.api import quantize_, size_report
from qbench.quant.spec import QuantConfig
from qbench.sizes import build_meta, quant_config_of, size_cell


@pytest.mark.parametrize("model,params", [
    ("pcm", 859_520_964),           # SD1.5 UNet
    ("lcm", 859_520_964 + 256 * 320),  # + LCM's guidance embedding projection (no bias)
    ("sdxl-turbo", 2_567_463_684),  # SDXL UNet
])
def test_real_architectures_have_their_published_parameter_counts(model, params):
    den = build_meta(model)
    assert all(p.device.type == "meta" for p in den.parameters())
    assert sum(p.numel() for p in den.parameters()) == params


def test_flux_schnell_transformer_is_12b_without_guidance_embedding():
    den = build_meta("flux-schnell")
    n = sum(p.numel() for p in den.parameters())
    assert 11.8e9 < n < 12.0e9 and not any("guidance" in k for k, _ in den.named_parameters())
    assert len(den.transformer_blocks) == 19 and len(den.single_transformer_blocks) == 38


class _Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 24, 3, padding=1)
        self.a = nn.Linear(96, 40)
        self.b = nn.Linear(40, 72, bias=False)
        self.norm = nn.LayerNorm(72)


@pytest.mark.parametrize("bits", ["W8A8", "W4A8", "W4A16"])
@pytest.mark.parametrize("types", [("linear",), ("linear", "conv2d")])
def test_meta_sizes_equal_a_quantized_module(bits, types):
    """size_cell on the meta device = size_report's deploy bytes of the same module quantized for real."""
    torch.manual_seed(0)
    real = _Small()
    with torch.device("meta"):
        meta = _Small()
    cfg = QuantConfig(bits=bits, mode="kernel", group_size=32, layer_types=types)
    cell = size_cell(meta, cfg)
    quantize_(real, cfg)
    rep = size_report(real)
    assert cell["deploy_bytes"] == rep["deploy_bytes"] and cell["fp16_bytes"] == rep["bytes_16bit"]
    assert cell["layers"] == {"linear": 2, "conv2d": 1}
    assert sum(cell["quantized"].values()) == (3 if "conv2d" in types else 2)


def test_method_configs_and_refusals():
    qc, note = quant_config_of("naive", "sdxl-turbo", "W4A8")
    assert qc is not None and qc.mode == "kernel" and note == ""
    qc, note = quant_config_of("torchao", "sdxl-turbo", "W4A8")
    assert qc is None and "another library" in note


def test_cli_prints_a_line_per_cell_and_writes_json(tmp_path, capsys):
    out = tmp_path / "sizes.json"
    assert main(["size", "--model", "pcm", "--method", "naive", "--bits", "W8A8,W4A8", "--json", str(out)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and lines[0].startswith("denoiser bytes") and lines[1].startswith("pcm") and "W4A8" in lines[3]
    rows = json.loads(out.read_text())
    fp, w8, w4 = rows
    assert fp["deploy_bytes"] == fp["fp16_bytes"] == 2 * 859_520_964
    assert w4["deploy_bytes"] < w8["deploy_bytes"] < fp["deploy_bytes"]
    assert w8["quantized"] and not w8["skipped"]


@pytest.mark.parametrize("argv,needle", [
    (["--model", "tiny-lcm"], "no real architecture"),
    (["--method", "fp"], "does not quantize"),
    (["--method", "nope"], "unknown method"),
    (["--bits", "W9A8"], "weight bits"),
])
def test_cli_refuses_bad_input_in_one_line(capsys, argv, needle):
    assert main(["size", *argv]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0]
    with pytest.raises(QBenchError):
        from qbench.sizes import main as size_main

        size_main(argv)
