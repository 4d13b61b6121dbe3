"""``fd-toyclip``: Frechet distance between toy-CLIP image features of the generated images and
of rendered ground-truth images of the same prompts (toy world only; lower is better).

Not FID: the features are the toy CLIP's 128-d image embeddings (pre-normalisation), and the
reference is ``REF_PER_PROMPT`` renders of each prompt's scene with jitter seeded by the prompt's
index (``numpy.random.default_rng([REF_SEED, index, k])``), so the reference depends only on the
prompt set. Statistics are float64 running sums; the distance is
:func:`qbench.metrics.fid.frechet_distance`. With few images the covariance is rank-deficient and
the value is biased upwards: compare runs with the same prompt count only (``n`` is recorded).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from qbench.api import Metric, MetricContext, MetricValue
from qbench.errors import QBenchError

REF_PER_PROMPT = 4
REF_SEED = 1234


def reference_images(prompts) -> list:
    from qbench.toyworld.render import render, scene_from_dict

    out = []
    for p in prompts:
        scene = (p.meta or {}).get("scene")
        if scene is None:
            raise QBenchError(f"fd-toyclip needs toy-world prompts (prompt {p.id!r} has no scene); use --prompts toy:N")
        base = scene_from_dict(scene)
        for k in range(REF_PER_PROMPT):
            out.append(render(base.with_jitter(np.random.default_rng([REF_SEED, p.index, k]))))
    return out


class ToyClipFeatures:
    """Toy-CLIP image embeddings (N, 128) of PIL images, through open_clip's eval preprocessing."""

    def __init__(self, device: str = "cpu", clip_dir: str | None = None):
        from qbench.metrics.clip_models import clip_details, load_open_clip
        from qbench.toyworld.clip import CLIP_DIR, toy_clip_spec

        self.clip = load_open_clip(*toy_clip_spec(clip_dir or CLIP_DIR), device=device,
                                   origin="metric option toy_clip_dir" if clip_dir else "the toy world's shipped CLIP")
        self.details = clip_details(self.clip)

    def __call__(self, images) -> np.ndarray:
        import torch

        feats = []
        with torch.inference_mode():
            for i in range(0, len(images), 64):
                pil = [common_pil(im) for im in images[i : i + 64]]
                x = torch.stack([self.clip.preprocess(p) for p in pil]).to(self.clip.device)
                feats.append(self.clip.model.encode_image(x).float().cpu().numpy())
        return np.concatenate(feats).astype(np.float64)


def common_pil(im):
    from PIL import Image

    from qbench.metrics import common

    return Image.fromarray(common.to_uint8_array(im)).convert("RGB")


def _toyclip_options() -> tuple:
    from qbench.options import Opt

    return (Opt("toy_clip_dir", "str", None, "folder of another toy CLIP (default: the shipped one)", path=True),)


class FDToyClip(Metric):
    name = "fd-toyclip"
    description = "toy world: Frechet distance of toy-CLIP image features, generated vs rendered ground truth of the same prompts"
    higher_is_better = False
    OPTIONS = _toyclip_options()

    @classmethod
    def preflight(cls, ctx: MetricContext, prompts) -> None:
        bad = [p.id for p in prompts if not (p.meta or {}).get("scene")]
        if bad:
            raise QBenchError(f"fd-toyclip needs toy-world prompts with scenes ({len(bad)} of {len(prompts)} have none, e.g. {bad[0]!r}); use --prompts toy:N")
        if len(prompts) < 2:
            raise QBenchError(f"fd-toyclip needs at least 2 prompts (a covariance), got {len(prompts)}")

    def __init__(self, ctx: MetricContext):
        super().__init__(ctx)
        from qbench.metrics.fid import FeatureStats

        self.features = ToyClipFeatures(ctx.device, (ctx.options or {}).get("toy_clip_dir"))
        dim = int(self.features.clip.model.visual.output_dim)
        self._gen, self._ref = FeatureStats(dim), FeatureStats(dim)

    def reset(self) -> None:
        self._gen.reset()
        self._ref.reset()

    def begin_shard(self) -> None:
        self._gen.record()
        self._ref.record()

    def shard_state(self) -> dict[str, Any]:
        return {"gen": self._gen.log, "ref": self._ref.log}

    def merge_shards(self, states: list[dict[str, Any]]) -> None:
        self._gen.replay([st["gen"] for st in states])
        self._ref.replay([st["ref"] for st in states])

    def update(self, images, prompts, references=None) -> None:
        if len(images) != len(prompts):
            raise QBenchError(f"fd-toyclip: {len(images)} images for {len(prompts)} prompts")
        if not images:
            return
        self._gen.update(self.features(list(images)))
        self._ref.update(self.features(reference_images(prompts)))

    def compute(self) -> MetricValue:
        from qbench.metrics.fid import ROUNDOFF_NOTE, frechet_distance

        if self._gen.n < 2:
            raise QBenchError("fd-toyclip needs at least 2 images")
        mu1, s1 = self._gen.mean_cov()
        mu2, s2 = self._ref.mean_cov()
        value = frechet_distance(mu1, s1, mu2, s2)
        details: dict[str, Any] = {
            "world": "toy world (synthetic 32x32 scenes; numbers do not transfer to real images)",
            "features": "toy-CLIP image embedding (128-d, before normalisation)",
            "reference": f"{REF_PER_PROMPT} renders per prompt, jitter seeded by (REF_SEED={REF_SEED}, prompt index, k)",
            "n_reference": self._ref.n,
            "distance": ROUNDOFF_NOTE,
        }
        details.update(self.features.details)
        dim = int(mu1.shape[0])
        if self._gen.n < dim:
            details["note"] = (f"n={self._gen.n} < {dim} feature dimensions: rank-deficient covariance, biased upward and noisy; "
                               "compare only at equal n, and prefer a few hundred images")
        return MetricValue(value, None, self._gen.n, False, details)
