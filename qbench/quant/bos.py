"""BOS-aware quantization of the layers fed by the text encoder (MixDQ, ECCV 2024, §4.1).

In Stable Diffusion's cross-attention, ``to_k`` / ``to_v`` read the CLIP text embedding, whose
token 0 (the BOS token ``<|startoftext|>``) holds the large outliers; CLIP's text transformer is
causal, so BOS's hidden state does not depend on the prompt. MixDQ therefore quantizes tokens
``1:`` and feeds token 0 through full-precision weights, its key/value computed once per model and
cached (public code: ``bos_pre_computed``, substituted for the output of token 0).

:class:`BOSAwareLinear` is a :class:`~qbench.quant.linear.QuantLinear` (simulate or kernel mode,
any width) whose output rows are then patched by a token rule:

* ``bos`` — the cached full-precision output ``W @ bos_input + b`` (``bos_output`` [N]) replaces
  the output of token 0 wherever that token's input equals ``bos_input`` [K] (max abs difference
  <= ``match_rtol * max|bos_input|``); a row whose token 0 differs (e.g. an all-zero negative
  prompt embedding) keeps its quantized output and is counted in ``bos_misses``. No
  full-precision weight is stored: only the two vectors.
* ``first`` — token 0 of every sequence through the full-precision weight (kept as ``fp_weight``),
  computed per call: for text streams with no prompt-independent token 0 (FLUX's T5 encoder is
  bidirectional, and its tokenizer adds no BOS at all).
* ``outlier`` — per sequence, the token with the largest ``max |x|`` through ``fp_weight``.

Inputs are ``[B, T, K]`` (batch, tokens, features); inputs without a token axis pass through the
quantized path unchanged. ``packed_nbytes`` and ``kernel_nbytes`` include the extra tensors.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from qbench.errors import ConfigError
from qbench.quant.linear import QuantLinear
from qbench.quant.spec import LayerSpec

RULES = ("bos", "first", "outlier")


class BOSAwareLinear(QuantLinear):
    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, spec: LayerSpec, rule: str = "bos",
                 bos_input: torch.Tensor | None = None, match_rtol: float = 1e-3):
        super().__init__(weight, bias, spec)
        if rule not in RULES:
            raise ConfigError(f"unknown token rule {rule!r}; expected one of {', '.join(RULES)}")
        self.rule = rule
        self.match_rtol = float(match_rtol)
        w = weight.detach()
        if rule == "bos":
            if bos_input is None or bos_input.numel() != w.shape[1]:
                raise ConfigError(f"BOS rule needs the BOS input vector of {w.shape[1]} features")
            x0 = bos_input.detach().reshape(-1).to(device=w.device, dtype=w.dtype)
            self.register_buffer("bos_input", x0.clone())
            # the BOS key/value, computed once with the full-precision weight and cached
            self.register_buffer("bos_output", F.linear(x0, w, None if bias is None else bias.detach()).clone())
        else:
            self.register_buffer("fp_weight", w.clone())
        extra = sum(t.numel() * t.element_size() for t in self.extra_float_tensors())
        self.packed_nbytes += extra
        self.kernel_nbytes += extra
        self._hits: torch.Tensor | None = None
        self._misses: torch.Tensor | None = None

    @classmethod
    def from_float(cls, mod: nn.Linear, spec: LayerSpec, rule: str = "bos", bos_input: torch.Tensor | None = None) -> BOSAwareLinear:  # type: ignore[override]
        if not isinstance(mod, nn.Linear):
            raise TypeError(f"BOSAwareLinear.from_float expects nn.Linear, got {type(mod).__name__}")
        return cls(mod.weight, mod.bias, spec, rule, bos_input)

    def extra_float_tensors(self) -> list[torch.Tensor]:
        """The floating-point tensors the token rule adds to the quantized layer."""
        if self.rule == "bos":
            return [self.bos_input, self.bos_output]
        return [self.fp_weight]

    def keep_mask(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T] bool: the tokens of ``x`` [B, T, K] that bypass the quantized path."""
        return token_keep_mask(x, self.rule, self.bos_input if self.rule == "bos" else None, self.match_rtol)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or x.shape[1] == 0:
            return super().forward(x)
        keep = self.keep_mask(x)
        # the kept tokens are zeroed before the quantized GEMM, so that (with per-tensor activation
        # scales) their outliers do not widen the other tokens' range
        y = super().forward(x.masked_fill(keep[..., None], 0))
        if self.rule == "bos":
            y = torch.where(keep[..., None], self.bos_output.to(y.dtype), y)
            self._count(keep[:, 0])
        else:
            bias = None if self.bias is None else self.bias.to(x.dtype)
            y = y.clone()
            y[keep] = F.linear(x[keep], self.fp_weight.to(x.dtype), bias).to(y.dtype)
        return y

    def _count(self, ok: torch.Tensor) -> None:
        if self._hits is None or self._hits.device != ok.device:
            self._hits = torch.zeros((), dtype=torch.long, device=ok.device)
            self._misses = torch.zeros((), dtype=torch.long, device=ok.device)
        self._hits += ok.sum()
        self._misses += (~ok).sum()

    @property
    def bos_hits(self) -> int:
        return 0 if self._hits is None else int(self._hits)

    @property
    def bos_misses(self) -> int:
        return 0 if self._misses is None else int(self._misses)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", token_rule={self.rule}"


def token_keep_mask(x: torch.Tensor, rule: str, bos_input: torch.Tensor | None = None, match_rtol: float = 1e-3) -> torch.Tensor:
    """Which tokens of ``x`` [B, T, K] a token rule sends through full precision -> bool [B, T]:
    ``bos``: token 0 where it equals ``bos_input`` (max abs difference <= ``match_rtol`` x
    ``max|bos_input|``); ``first``: token 0; ``outlier``: per row, the token with the largest
    ``max |x|``."""
    keep = torch.zeros(x.shape[:2], dtype=torch.bool, device=x.device)
    if rule == "bos":
        ref = bos_input.to(device=x.device, dtype=x.dtype)
        keep[:, 0] = (x[:, 0, :] - ref).abs().amax(-1) <= match_rtol * ref.abs().max() + 1e-12
    elif rule == "first":
        keep[:, 0] = True
    elif rule == "outlier":
        keep[torch.arange(x.shape[0], device=x.device), x.abs().amax(-1).argmax(-1)] = True
    else:
        raise ConfigError(f"unknown token rule {rule!r}; expected one of {', '.join(RULES)}")
    return keep


def token0_analysis(inputs: torch.Tensor, rtol: float = 1e-4) -> dict[str, Any]:
    """Is token 0 of ``inputs`` [B, T, K] the same in every row (prompt-independent)?

    -> ``{"prompt_independent": bool, "max_rel_diff": float, "outlier_ratio": float}``: the
    largest difference of a row's token 0 from row 0's, relative to ``max |token 0|``; and
    ``max |token 0| / median over tokens 1: of max |token|`` (how much of an outlier token 0 is)."""
    x0 = inputs[:, 0, :].float()
    scale = float(x0.abs().max()) or 1.0
    rel = float((x0 - x0[:1]).abs().max()) / scale
    rest = inputs[:, 1:, :].float().abs().amax(-1)
    ratio = float(x0.abs().amax(-1).max() / rest.median()) if rest.numel() and float(rest.median()) > 0 else float("nan")
    return {"prompt_independent": rel <= rtol, "max_rel_diff": rel, "outlier_ratio": ratio}


def text_fed_layers(denoiser: nn.Module, call_args: tuple, call_kwargs: dict[str, Any], key: str = "encoder_hidden_states") -> dict[str, torch.Tensor]:
    """Linear layers of ``denoiser`` whose input is the text embedding ``call_kwargs[key]``
    itself (SD/SDXL: cross-attention ``attn2.to_k``/``to_v``; FLUX: ``context_embedder``), found
    by running the denoiser once on a captured call -> ``{name: that input [B, T, K]}``."""
    ehs = call_kwargs.get(key)
    if not isinstance(ehs, torch.Tensor) or ehs.dim() != 3:
        return {}
    found: dict[str, torch.Tensor] = {}
    handles = []
    for name, mod in denoiser.named_modules():
        if isinstance(mod, (nn.Linear, QuantLinear)):
            def hook(m, args, _name=name):
                x = args[0] if args else None
                if isinstance(x, torch.Tensor) and (x is ehs or (x.shape == ehs.shape and torch.equal(x, ehs))):
                    found[_name] = x.detach().clone()
            handles.append(mod.register_forward_pre_hook(hook))
    from qbench.quant.sensitivity import forward_with_hooks

    forward_with_hooks(denoiser, handles, call_args, call_kwargs)
    return found


#: prompts of the text-stream probe (is token 0 the same for different prompts?)
PROBE_TEXTS = ["", "a photo of a cat", "a red circle on a blue background", "two people riding bicycles down a city street at night"]


def _tokenizer_bos(pipe: Any) -> dict[str, Any]:
    out = {}
    for attr in ("tokenizer", "tokenizer_2"):
        tok = getattr(pipe, attr, None)
        if tok is None:
            continue
        bos = getattr(tok, "bos_token_id", None)
        ids = tok("a").input_ids
        out[attr] = {"class": type(tok).__name__, "bos_token_id": bos, "adds_bos": bool(bos is not None and ids and ids[0] == bos)}
    return out


def probe_text_stream(model: Any, bos: bool = True, text_token_rule: str = "none") -> dict[str, Any]:
    """Which layers read the text embedding, is its token 0 prompt-independent, which rule applies.

    One generation of :data:`PROBE_TEXTS` is stopped at the first denoiser call; the denoiser then
    runs once on it (full precision) with hooks. ``bos_input``: token 0's embedding (rule bos)."""
    from qbench.quant.sensitivity import first_call

    args, kwargs = first_call(model, PROBE_TEXTS)
    fed = text_fed_layers(model.denoiser, args, kwargs)
    info: dict[str, Any] = {"layers": sorted(fed), "tokenizers": _tokenizer_bos(model.pipe), "wrap": [], "rule": None}
    if not fed:
        info["note"] = "no Linear layer reads the text embedding directly: nothing BOS-aware"
        return info
    x = next(iter(fed.values()))
    info.update(token0_analysis(x))
    diff = f"max relative difference of token 0 between {x.shape[0]} probe prompts {info['max_rel_diff']:.3g}"
    if not bos:
        info["note"] = f"BOS-aware layers off (-O bos=false); {diff}"
    elif info["prompt_independent"]:
        info.update(rule="bos", wrap=sorted(fed), bos_input=x[0, 0].detach().clone())
        info["note"] = f"token 0 is prompt-independent ({diff}; max|token 0| / median max|token| = {info['outlier_ratio']:.2f}): its k/v computed once in full precision and cached"
    else:
        rule = text_token_rule
        info["note"] = (f"no prompt-independent BOS in this text stream ({diff}): its encoder is bidirectional (T5 on FLUX; FLUX.1's own "
                        f"T5 tokenizer adds no BOS at all), so nothing can be cached; text_token_rule={rule}")
        if rule != "none":
            info.update(rule=rule, wrap=sorted(fed))
    return info
