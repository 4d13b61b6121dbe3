"""User-supplied weight files are never unpickled: a crafted pickle is refused before it runs."""
from __future__ import annotations

import os
import pickle

import pytest
import torch

from qbench.api import MetricContext
from qbench.cli import main
from qbench.errors import QBenchError
from qbench.metrics import clip_models, common, standins


class Payload:
    """Unpickling this calls ``open(marker, "w")``: the file appearing means code ran."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def evil_files(folder) -> dict[str, tuple[str, str]]:
    """{kind: (file, marker)}: a torch.save zip and a plain pickle, each with a payload next to real tensors."""
    out = {}
    for kind in ("torch_save", "plain_pickle"):
        marker = os.path.join(folder, f"pwned-{kind}")
        path = os.path.join(folder, f"evil-{kind}.pth")
        obj = {"features.0.weight": torch.zeros(2), "x": Payload(marker)}
        if kind == "torch_save":
            torch.save(obj, path)
        else:
            with open(path, "wb") as f:
                pickle.dump(obj, f)
        out[kind] = (path, marker)
    return out


def test_the_payload_is_live_when_unpickled(tmp_path):
    """Control: the crafted files do run code under a full unpickle (what torch-fidelity did)."""
    for path, marker in evil_files(tmp_path).values():
        try:
            torch.load(path, weights_only=False)
        except Exception:  # noqa: BLE001 - a plain pickle is not torch's format; the payload ran first
            pass
        assert os.path.exists(marker)



def _option_args(option: str, path: str) -> list[str]:
    if option == "inception_weights":
        return ["--metrics", "fid-fp", "--inception-weights", path]
    if option == "clip_pretrained":
        cfg, _ = standins.open_clip_model()
        return ["--metrics", "clip", "-M", f"clip_model={cfg}", "-M", f"clip_pretrained={path}"]
    metric = {"clipiqa_backbone": "clipiqa", "lpips_weights": "lpips"}[option]
    return ["--metrics", metric, "-M", f"{option}={path}"]


@pytest.mark.parametrize("option", ["inception_weights", "clipiqa_backbone", "clip_pretrained", "lpips_weights"])
def test_crafted_pickle_is_refused_in_one_line_and_never_runs(option, tmp_path, capsys):
    files = evil_files(tmp_path)
    for kind, (path, marker) in files.items():
        argv = ["run", "--model", "tiny-lcm", "--prompts", "coco2017:2", "--out-dir", str(tmp_path / "out"), *_option_args(option, path)]
        code = main(argv)
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if line.startswith("qbench: error:")]
        assert code != 0, kind
        assert len(errors) == 1 and "Traceback" not in err, err  # (the rest is diffusers' loading progress bar)
        assert "weights_only=True" in errors[0] and path in errors[0], errors[0]
        assert not os.path.exists(marker), f"{option}: the payload in the {kind} file ran"


def test_torchscript_is_refused_unless_openai_publishes_its_hash(tmp_path, monkeypatch):
    """TorchScript archives are programs: never for Inception/LPIPS/open_clip weights, and for the
    CLIP-IQA backbone only OpenAI's own archives (SHA-256 in their URLs) are opened."""
    ts = standins.clipiqa_backbone(torchscript=True)
    sd = standins.clipiqa_backbone()
    with pytest.raises(QBenchError, match="TorchScript archive"):
        common.load_tensor_file(ts, "Inception-v3 (FID)", "inception_weights")
    with pytest.raises(QBenchError, match="not one of OpenAI's published"):
        clip_models.read_backbone(ts)
    assert len(clip_models.openai_archives()) >= 9  # RN50 ... ViT-L/14@336px, as open_clip lists OpenAI's URLs
    sha = common.file_sha256(ts)
    monkeypatch.setattr(clip_models, "openai_archives", lambda: {sha: "RN50 (pretend)"})
    from_ts, how = clip_models.read_backbone(ts)
    from_sd, how_sd = clip_models.read_backbone(sd)
    assert "sha256 verified" in how and "weights_only=True" in how_sd
    assert set(from_ts) - set(from_sd) == {"attn_mask"}  # open_clip's causal mask, a buffer TorchScript keeps
    assert all(torch.equal(from_ts[k], from_sd[k]) for k in from_sd)
    clip_models.build_resnet_clip(from_ts)  # loads strictly, the mask left out


def test_state_dict_checks(tmp_path):
    with pytest.raises(QBenchError, match="does not hold a state dict"):
        torch.save([torch.zeros(1)], tmp_path / "list.pt")
        common.load_tensor_file(str(tmp_path / "list.pt"), "X", "x_weights")
    torch.save({"state_dict": {"a": torch.ones(2)}}, tmp_path / "wrapped.pt")
    assert torch.equal(common.load_tensor_file(str(tmp_path / "wrapped.pt"), "X", "x")["a"], torch.ones(2))
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(QBenchError, match="safetensors"):
        common.load_tensor_file(str(tmp_path / "bad.safetensors"), "X", "x")
    m = MetricContext(options={"lpips_weights": str(tmp_path / "wrapped.pt")})
    from qbench.catalog import METRICS
    from qbench.errors import ConfigError

    with pytest.raises(ConfigError, match="features"):
        METRICS.get("lpips")(m)
