"""How many prompts a pipeline's text encoders (and the CLIP metrics) cut short.

Diffusers' pipelines tokenize with ``truncation=True`` and only log a warning when a prompt is too
long (qbench mutes diffusers' logging), so a long prompt silently conditions the model on its
first tokens only. :func:`prompt_truncation` counts, per tokenizer of a loaded pipeline, how many
prompts exceed the token limit the pipeline applies; the harness stores it with every run
(``RunResult.prompt_truncation``).

Limits, as diffusers applies them (token counts include the special tokens BOS/EOS):

* a CLIP tokenizer (SD/LCM/PCM ``tokenizer``, SDXL ``tokenizer`` and ``tokenizer_2``, Flux
  ``tokenizer``): ``tokenizer.model_max_length`` (77);
* the tokenizer of a T5 text encoder (Flux ``tokenizer_2``, SD3 ``tokenizer_3``; the encoder's
  ``config.model_type`` is ``t5``/``umt5``/``mt5``) when the pipeline call takes
  ``max_sequence_length``: the value the run passes (the model spec's ``call_kwargs``), else the
  pipeline's default (512 for Flux).
"""
from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

TOKENIZER_ATTRS = ("tokenizer", "tokenizer_2", "tokenizer_3")
T5_TYPES = ("t5", "umt5", "mt5")


def summarize(counts: Sequence[int], limit: int) -> dict[str, Any]:
    """``{"limit", "n_prompts", "n_truncated", "max_tokens"}`` for per-prompt token ``counts``."""
    counts = [int(c) for c in counts]
    return {"limit": int(limit), "n_prompts": len(counts), "n_truncated": sum(c > limit for c in counts),
            "max_tokens": max(counts, default=0)}


def hf_token_counts(tokenizer, texts: Sequence[str]) -> list[int]:
    """Tokens per text (special tokens included, no truncation) of a transformers tokenizer."""
    if not texts:
        return []
    ids = tokenizer(list(texts), add_special_tokens=True, truncation=False, padding=False, verbose=False)["input_ids"]
    return [len(x) for x in ids]


def sequence_limits(pipe: Any, call_kwargs: Mapping[str, Any] | None = None) -> dict[str, tuple[int, str]]:
    """``tokenizer attribute -> (token limit, where the limit comes from)`` for a diffusers pipeline."""
    call_kwargs = dict(call_kwargs or {})
    params = inspect.signature(pipe.__call__).parameters
    out: dict[str, tuple[int, str]] = {}
    for attr in TOKENIZER_ATTRS:
        tok = getattr(pipe, attr, None)
        if tok is None:
            continue
        encoder = getattr(pipe, attr.replace("tokenizer", "text_encoder"), None)
        model_type = getattr(getattr(encoder, "config", None), "model_type", None)
        if model_type in T5_TYPES and "max_sequence_length" in params:
            if "max_sequence_length" in call_kwargs:
                out[attr] = (int(call_kwargs["max_sequence_length"]), "max_sequence_length (model spec call_kwargs)")
            else:
                out[attr] = (int(params["max_sequence_length"].default), "max_sequence_length (pipeline default)")
        else:
            out[attr] = (int(tok.model_max_length), f"{attr}.model_max_length")
    return out


def prompt_truncation(pipe: Any, texts: Sequence[str], call_kwargs: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """Per tokenizer of ``pipe``: how many of ``texts`` it cuts short.

    -> ``{attr: {"limit", "limit_from", "n_prompts", "n_truncated", "max_tokens"}}`` with ``attr``
    in ``TOKENIZER_ATTRS`` (those the pipeline has), ``max_tokens`` the longest prompt's token
    count (special tokens included) before truncation. ``call_kwargs``: the extra keyword
    arguments the pipeline is called with (``ModelSpec.call_kwargs``). No model is run.
    """
    out = {}
    for attr, (limit, source) in sequence_limits(pipe, call_kwargs).items():
        counts = hf_token_counts(getattr(pipe, attr), texts)
        out[attr] = {**summarize(counts, limit), "limit_from": source}
    return out
