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
"""
from __future__ import annotations

import difflib
import inspect
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qbench.api import MetricContext
from qbench.errors import ConfigError, MissingWeightsError
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
