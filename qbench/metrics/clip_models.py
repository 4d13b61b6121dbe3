"""Loading open_clip models for the CLIP-based metrics (CLIP score, JAQ, CLIP-IQA's open_clip variant).

Options (``RunConfig.metric_options``):

* ``clip_model``: an open_clip model name (``ViT-L-14``; ``ViT-L/14`` is accepted) or the path of
  an open_clip model-config JSON (registered with ``open_clip.add_model_config``; the model name
  becomes the file's stem);
* ``clip_pretrained``: an open_clip pretrained tag (``openai``) or a local weights file
  (``.safetensors`` / ``.bin`` / ``.pt`` in open_clip's state-dict layout), checked with
  :func:`common.load_tensor_file` (``torch.load(weights_only=True)``; pickled code or a
  TorchScript archive is refused) and loaded by open_clip with ``weights_only=True``.

Defaults come from :func:`default_clip_for`. A model is loaded once per process and device and
shared by every metric that asks for it.

OpenAI's ResNet CLIPs in OpenAI's own layout (CLIP-IQA's backbone, :mod:`qbench.metrics.clipiqa`):
:func:`read_backbone` reads such a file without running code from it, :func:`build_resnet_clip`
puts its tensors into open_clip's ``CLIP`` (whose module names are OpenAI's), the architecture
read off the tensors' shapes.
"""
from __future__ import annotations

import difflib
import inspect
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qbench.api import MetricContext
from qbench.errors import ConfigError, MissingWeightsError, QBenchError
from qbench.metrics import common

#: OpenAI CLIP ViT-L/14, the CLIP-score convention of the few-step diffusion literature
DEFAULT_CLIP = ("ViT-L-14", "openai")


def _clip_options() -> tuple:
    from qbench.options import Opt

    return (
        Opt("clip_model", "str", None, "open_clip model name (ViT-L-14) or the path of a model-config JSON", path=True),
        Opt("clip_pretrained", "str", None, "open_clip pretrained tag (openai) or a local weights file", path=True),
    )


CLIP_OPTIONS = _clip_options()


def default_clip_for(ctx: MetricContext) -> tuple[str, str]:
    """Default ``(clip_model, clip_pretrained)`` for a run when the options name none.

    Extend here for model families that come with their own CLIP (the toy world: a branch on
    ``ctx.model_family.startswith("toy")`` returning its config JSON and weights paths).
    With ``standin=true`` a tiny random open_clip model is used (labelled meaningless).
    """
    if common.opt_bool(ctx, "standin"):
        from qbench.metrics import standins

        return standins.open_clip_model(standins.standin_dir(ctx))
    if (ctx.model_family or "").startswith("toy"):  # the toy world's own trained CLIP (qbench/toyworld/clip.py)
        from qbench.toyworld.clip import toy_clip_spec

        return toy_clip_spec()
    return DEFAULT_CLIP


def clip_spec(ctx: MetricContext) -> tuple[str, str]:
    """``(clip_model, clip_pretrained)``: both options, else both defaults (never a mix of the two,
    except ``clip_pretrained`` alone, which keeps the default model)."""
    given_model = common.opt(ctx, "clip_model")
    given_pretrained = common.opt(ctx, "clip_pretrained")
    if given_model is not None and given_pretrained is not None:
        return str(given_model), str(given_pretrained)
    if given_model is not None:
        _model_name(str(given_model))  # an unknown model is named as such first
        raise ConfigError(f"metric option clip_model={given_model!r} needs clip_pretrained (a pretrained tag or a weights file)")
    model, pretrained = default_clip_for(ctx)
    return model, str(given_pretrained or pretrained)


@dataclass
class LoadedClip:
    model: Any
    preprocess: Any
    tokenizer: Any
    name: str
    device: str
    info: dict[str, Any] = field(default_factory=dict)


_CACHE: dict[tuple[str, str, str], LoadedClip] = {}


def _model_name(model: str) -> tuple[str, dict[str, Any]]:
    import open_clip

    if model.endswith(".json"):
        path = os.path.expanduser(model)
        if not os.path.isfile(path):
            raise ConfigError(f"open_clip model config not found: {path} (metric option clip_model)")
        open_clip.add_model_config(path)
        return Path(path).stem, {"config": os.path.abspath(path), "config_sha256": common.file_sha256(path)[:16]}
    name = model.replace("/", "-")
    if open_clip.get_model_config(name) is None:
        close = difflib.get_close_matches(name, open_clip.list_models(), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown open_clip model {model!r}{hint} (or pass the path of a model-config JSON)")
    return name, {}


def resolve_clip(model: str, pretrained: str, origin: str = "metric option clip_pretrained") -> tuple[str, dict[str, Any], str]:
    """``(open_clip model name, provenance, pretrained argument)`` without building the model:
    an unknown model name or tag is a :class:`ConfigError`, weights that are neither a local file
    nor cached (offline) a :class:`MissingWeightsError` naming the option to pass."""
    import open_clip

    name, info = _model_name(model)
    info["model"] = name
    if os.path.isfile(os.path.expanduser(pretrained)):
        path = os.path.expanduser(pretrained)
        if not path.endswith(".safetensors"):  # (safetensors holds no code) refuse pickled code before open_clip reads it
            common.load_tensor_file(path, f"open_clip weights for {name}", "clip_pretrained")
        info["pretrained"] = common.weights_provenance(path, f"local file ({origin})")
        return name, info, path
    cfg = open_clip.get_pretrained_cfg(name, pretrained)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(name)
        raise ConfigError(f"clip_pretrained={pretrained!r} is neither a file nor a pretrained tag of {name} (tags: {', '.join(tags) or 'none'})")
    try:
        path = open_clip.download_pretrained(cfg)
    except Exception as e:  # hub offline / unreachable / not cached: one clear user-facing line
        raise MissingWeightsError(
            f"open_clip weights {name}/{pretrained} are not cached and could not be downloaded "
            f"({'offline' if common.is_offline() else type(e).__name__}); "
            "pass -M clip_pretrained=/path/to/weights (and -M clip_model=NAME or a model-config JSON)"
        ) from e
    info["pretrained"] = common.weights_provenance(path, f"open_clip pretrained tag {pretrained!r}")
    return name, info, pretrained


def load_open_clip(model: str, pretrained: str, device: str = "cpu", origin: str = "metric option clip_pretrained") -> LoadedClip:
    """Build (once) an open_clip model, its eval preprocessing and tokenizer."""
    import open_clip

    device = common.resolve_device(device)
    key = (model, pretrained, device)
    if key in _CACHE:
        return _CACHE[key]
    name, info, arg = resolve_clip(model, pretrained, origin)
    safe = {"weights_only": True} if "weights_only" in inspect.signature(open_clip.create_model_and_transforms).parameters else {}
    clip_model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=arg, device=device, **safe)
    clip_model.eval()
    loaded = LoadedClip(clip_model, preprocess, open_clip.get_tokenizer(name), name, device, info)
    _CACHE[key] = loaded
    return loaded


def preflight_clip(ctx: MetricContext) -> None:
    """The checks of :func:`load_for` without building the model."""
    resolve_clip(*clip_spec(ctx), _origin(ctx))


def _origin(ctx: MetricContext) -> str:
    if common.opt(ctx, "clip_pretrained") is not None:
        return "metric option clip_pretrained"
    if common.opt_bool(ctx, "standin"):
        return "qbench stand-in (metric option standin)"
    return f"the default CLIP of model family {ctx.model_family}"


def load_for(ctx: MetricContext) -> LoadedClip:
    model, pretrained = clip_spec(ctx)
    return load_open_clip(model, pretrained, ctx.device, _origin(ctx))


def clip_details(clip: LoadedClip) -> dict[str, Any]:
    """``details`` entries describing a loaded CLIP (with stand-in labels propagated)."""
    d: dict[str, Any] = {"clip_model": clip.name, "versions": common.versions("torch", "open_clip_torch")}
    if "config" in clip.info:
        d["clip_config"] = clip.info["config"]
        d["clip_config_sha256"] = clip.info["config_sha256"]
    common.merge_provenance(d, "clip_weights", clip.info["pretrained"])
    return d


# -- OpenAI ResNet CLIPs in OpenAI's layout (CLIP-IQA's backbone) ----------------------------------
#: entries of OpenAI's TorchScript archives that are not weights (OpenAI's build_model drops them)
OPENAI_METADATA_KEYS = ("input_resolution", "context_length", "vocab_size")


def openai_archives() -> dict[str, str]:
    """SHA-256 -> name of OpenAI's published CLIP TorchScript archives: the hash is the second to
    last part of each download URL (openai/CLIP ``clip/clip.py``; open_clip's ``openai`` tags list
    the same URLs, read from there)."""
    import open_clip

    out = {}
    for name, tag in open_clip.list_pretrained():
        url = (open_clip.get_pretrained_cfg(name, tag) or {}).get("url", "") if tag == "openai" else ""
        if "openaipublic" in url:
            out[url.rstrip("/").split("/")[-2]] = name.replace("-quickgelu", "")
    return out


def openai_resnet_urls() -> dict[str, str]:
    """OpenAI ResNet CLIP name -> archive URL (open_clip's ``openai`` pretrained configs)."""
    import open_clip

    names = [n for n, tag in open_clip.list_pretrained() if tag == "openai" and n.startswith("RN") and "quickgelu" not in n]
    return {n: open_clip.get_pretrained_cfg(n, "openai")["url"] for n in names}


def read_backbone(path: str) -> tuple[dict[str, Any], str]:
    """(state dict in OpenAI's CLIP layout, how it was read) from a backbone file, running no code
    from it: a state dict through :func:`common.load_tensor_file`; a TorchScript archive only if
    its SHA-256 is one of :func:`openai_archives` (else :class:`QBenchError`)."""
    if common.is_torchscript(path):
        sha = common.file_sha256(path)
        known = openai_archives()
        if sha not in known:
            raise QBenchError(
                f"CLIP-IQA backbone: {path} is a TorchScript archive (a program) and not one of OpenAI's published CLIP archives "
                f"(sha256 {sha[:16]}...); qbench runs no other programs. Pass a state dict instead: "
                "torch.save(torch.jit.load(f).state_dict(), 'backbone.pt') (option clipiqa_backbone)"
            )
        import torch

        return torch.jit.load(path, map_location="cpu").state_dict(), f"OpenAI TorchScript archive {known[sha]} (sha256 verified), tensors only"
    return common.load_tensor_file(path, "CLIP-IQA backbone", "clipiqa_backbone"), "state dict, torch.load(weights_only=True) / safetensors"


def resnet_clip_config(state: dict[str, Any]) -> dict[str, Any]:
    """Pure function: the hyper-parameters of an OpenAI ResNet CLIP read off its tensors' shapes
    (the rules of OpenAI's ``build_model``, openai/CLIP ``clip/model.py``). Raises :class:`ConfigError`
    for a state dict that is not a ResNet CLIP (a ViT, or another network)."""
    if "visual.proj" in state or "visual.attnpool.positional_embedding" not in state:
        raise ConfigError(
            "clipiqa_backbone: not an OpenAI ResNet CLIP state dict (no visual.attnpool.*); the qbench CLIP-IQA uses the "
            "paper's ResNet backbone (RN50); for a ViT backbone use -M clipiqa_impl=pyiqa"
        )
    pos = state["visual.attnpool.positional_embedding"].shape[0]
    grid = round((pos - 1) ** 0.5)
    width = state["ln_final.weight"].shape[0]
    return {
        "embed_dim": state["text_projection"].shape[1],
        "vision_layers": tuple(len({k.split(".")[2] for k in state if k.startswith(f"visual.layer{b}.")}) for b in (1, 2, 3, 4)),
        "vision_width": state["visual.layer1.0.conv1.weight"].shape[0],
        "image_size": grid * 32,
        "context_length": state["positional_embedding"].shape[0],
        "vocab_size": state["token_embedding.weight"].shape[0],
        "text_width": width,
        "text_heads": width // 64,
        "text_layers": len({k.split(".")[2] for k in state if k.startswith("transformer.resblocks.")}),
    }


def build_resnet_clip(state: dict[str, Any]):
    """An open_clip ``CLIP`` (float32, eval, QuickGELU as OpenAI trained it) holding ``state``
    (OpenAI's layout, which open_clip's module names follow; the archives' metadata entries are
    dropped). Every weight must match by name and shape, else :class:`QBenchError` in one line."""
    import torch
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    cfg = resnet_clip_config(state)
    model = CLIP(
        cfg["embed_dim"],
        vision_cfg=CLIPVisionCfg(layers=cfg["vision_layers"], width=cfg["vision_width"], image_size=cfg["image_size"], patch_size=None),
        text_cfg=CLIPTextCfg(context_length=cfg["context_length"], vocab_size=cfg["vocab_size"], width=cfg["text_width"],
                             heads=cfg["text_heads"], layers=cfg["text_layers"]),
        quick_gelu=True,
    )
    # (open_clip's causal mask is a non-persistent buffer that a traced open_clip model stores too)
    weights = {k: v.float() if torch.is_floating_point(v) else v for k, v in state.items() if k not in (*OPENAI_METADATA_KEYS, "attn_mask")}
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        raise QBenchError(f"clipiqa_backbone: the weights do not fit an OpenAI ResNet CLIP ({str(e).splitlines()[0][:200]})") from None
    return model.float().eval(), cfg
