"""``smoothquant``: an example plug-in in one file — SmoothQuant-style per-channel smoothing over
``naive`` round-to-nearest quantization.

Source: Xiao et al. 2023, "SmoothQuant: Accurate and Efficient Post-Training Quantization for Large
Language Models" (ICML 2023, arXiv 2211.10438), public code mit-han-lab/smoothquant. For a Linear
layer ``y = x W^T`` with activation outliers in a few input channels, a per-channel factor

    s_j = max|X_j|^alpha / max_i |W_ij|^(1 - alpha)          (alpha: migration strength, 0.5)

gives ``y = (x / s) (W * s)^T``: the activation ``x / s`` has flatter channels, the weight takes
the difference. ``max|X_j|`` is the largest magnitude of input channel ``j`` over the calibration
prompts' denoiser calls. As in the public code, both maxima are clamped from below at 1e-5.

How it plugs in (nothing else in qbench names it):

* it subclasses :class:`qbench.methods.naive.Naive` and declares one option of its own,
  ``alpha``; naive's options (``--bits``, ``-O group_size=...``) still build the quantizer config,
  and ``alpha`` never reaches it (options compose: :class:`qbench.api.Method`);
* ``prepare`` adds forward pre-hooks that record ``max|X_j|`` on the float Linear layers naive
  will quantize; ``calibrate`` runs the calibration prompts and removes the hooks;
* ``convert`` quantizes through naive with the input pre-scale slot,
  ``pre_scale = 1 / s`` (:func:`qbench.quant.api.quantize_`), so the smoothing is stored in the
  layers and ``qbench export`` writes and reloads it.

A shipped method would be this file as ``methods/smoothquant.py`` plus one line in
``qbench/catalog.py``; this example is registered by the test that uses it
(``tests/test_plugin_contract.py``):

    METHODS.register("smoothquant", "example_smoothquant:SmoothQuant", "SmoothQuant-style smoothing over naive")

Only dynamic activation quantization (no ``-O a_static``) and Linear layers of the denoiser.
"""
from __future__ import annotations

from typing import Any

import torch
from qbench.methods.naive import Naive
from torch import nn

from qbench.errors import ConfigError
from qbench.options import Opt

EPS = 1e-5  # the public code's clamp of both maxima and of the factors


def smoothing_factors(act_absmax: torch.Tensor, weight: torch.Tensor, alpha: float) -> torch.Tensor:
    """SmoothQuant's per-input-channel factors ``s`` (float32 ``[K]``) from the activations'
    per-channel maximum magnitude ``act_absmax`` (``[K]``) and a Linear weight ``[N, K]``:
    ``s_j = max|X_j|^alpha / max_i|W_ij|^(1-alpha)`` (Xiao et al. 2023, eq. 4), each maximum and
    the result clamped at 1e-5."""
    if act_absmax.dim() != 1 or weight.dim() != 2 or weight.shape[1] != act_absmax.numel():
        raise ValueError(f"act_absmax [K] and weight [N, K] expected, got {list(act_absmax.shape)} and {list(weight.shape)}")
    a = act_absmax.float().clamp_min(EPS)
    w = weight.detach().float().abs().amax(dim=0).clamp_min(EPS)
    return (a.pow(alpha) / w.pow(1.0 - alpha)).clamp_min(EPS)


class SmoothQuant(Naive):
    name = "smoothquant"
    description = "SmoothQuant-style per-channel smoothing (Xiao et al. 2023) over naive round-to-nearest (example plug-in)"
    OPTIONS = (Opt("alpha", "float", 0.5, "migration strength: s_j = max|X_j|^alpha / max|W_j|^(1-alpha), in [0, 1]", minimum=0.0),)
    CALIBRATION_PROMPTS = 8

    def __init__(self, cfg: Any):
        super().__init__(cfg)
        self.alpha = float(self.own_options().get("alpha", 0.5))
        if self.alpha > 1:
            raise ConfigError(f"method {self.name!r} option alpha must lie in [0, 1], got {self.alpha:g}")
        if self.qconfig.a_static:
            raise ConfigError(f"method {self.name!r} smooths dynamic activations only: drop -O a_static")
        if self.qconfig.bits.a is None:
            raise ConfigError(f"method {self.name!r} smooths activations before quantizing them: {self.qconfig.bits} leaves activations in float")
        self._absmax: dict[str, torch.Tensor] = {}
        self._layers: dict[str, nn.Linear] = {}
        self._handles: list[Any] = []
        self._scales: dict[str, torch.Tensor] = {}

    @property
    def calibration_prompts_n(self) -> int:
        return self.CALIBRATION_PROMPTS

    def _targets(self, denoiser: nn.Module) -> dict[str, nn.Linear]:
        from qbench.quant.api import candidate_layers

        named = dict(denoiser.named_modules())
        return {n: named[n] for n in candidate_layers(named, self.qconfig)
                if isinstance(named[n], nn.Linear) and self.qconfig.spec_for(n) is not None}

    def _observer(self, name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            x = args[0].detach()
            m = x.reshape(-1, x.shape[-1]).abs().amax(dim=0).float().cpu()
            old = self._absmax.get(name)
            self._absmax[name] = m if old is None else torch.maximum(old, m)
        return hook

    def prepare(self, model: Any) -> None:
        super().prepare(model)
        self._layers = self._targets(model.denoiser)
        self._handles = [mod.register_forward_pre_hook(self._observer(n)) for n, mod in self._layers.items()]

    def calibrate(self, model: Any, prompts: list[Any], ctx: Any = None) -> None:
        try:
            model.generate([p.text for p in prompts], [self.cfg.seed + p.index for p in prompts],
                           steps=self.cfg.steps, guidance=self.cfg.guidance, resolution=self.cfg.resolution)
        finally:
            for h in self._handles:
                h.remove()
            self._handles = []
        unseen = sorted(set(self._layers) - set(self._absmax))
        if unseen:
            raise ConfigError(f"{self.name}: {len(unseen)} layer(s) saw no calibration data, e.g. {unseen[0]!r}")
        self._scales = {n: smoothing_factors(self._absmax[n], mod.weight, self.alpha) for n, mod in self._layers.items()}

    def pre_scales(self, component: str) -> dict[str, torch.Tensor] | None:
        """The layer computes ``Q_a(x * pre_scale) Q_w(W / pre_scale)^T``: ``pre_scale = 1 / s``."""
        if component != "denoiser":
            return None
        if not self._scales:
            raise ConfigError(f"{self.name}: convert before calibrate (the smoothing factors come from calibration prompts)")
        return {n: 1.0 / s for n, s in self._scales.items()}

    def report(self) -> dict[str, Any]:
        out = super().report()
        if self._scales:
            s = torch.cat([v for v in self._scales.values()])
            out["smoothing"] = {"alpha": self.alpha, "layers": len(self._scales), "factor_min": float(s.min()), "factor_max": float(s.max()),
                                "source": "SmoothQuant (Xiao et al. 2023, arXiv 2211.10438)"}
        return out
