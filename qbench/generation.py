"""Generation with the image cache: batches, cache keys, comparability settings.

A run's prompts are cut into consecutive batches of ``batch_size`` (:func:`batches`); a batch
with any image missing from the cache is generated whole, so every image comes from the same
batch (and seed) as in an uninterrupted one-process run, whatever was cached before and however
many ranks share the work (:mod:`qbench.dist`). See :mod:`qbench.imagecache` for what keys an image.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from qbench.api import Prompt
from qbench.config import RunConfig
from qbench.imagecache import ImageCache
from qbench.store import iter_chunks


def seed_for(cfg: RunConfig, prompt: Prompt) -> int:
    return cfg.seed + prompt.index


def sampling_settings(model, cfg: RunConfig) -> dict[str, Any]:
    """The resolved generation settings of a run (model defaults filled in)."""
    spec = model.spec
    return {
        "steps": cfg.steps or spec.steps,
        "guidance": spec.guidance if cfg.guidance is None else cfg.guidance,
        "resolution": cfg.resolution or spec.resolution,
        "dtype": str(model.dtype).replace("torch.", ""),
        "device_type": model.device.split(":")[0],
        "batch_size": cfg.batch_size,
    }


def model_inputs(model) -> dict[str, Any]:
    """What identifies a model (a :class:`~qbench.models.base.LoadedModel` or a located
    :class:`~qbench.models.loader.ModelRef`): its spec, where its weights came from and their
    content fingerprint (hub snapshots: the revision in ``source``)."""
    import dataclasses

    spec = model.spec
    return {
        "model": spec.name,
        "spec": {k: v for k, v in dataclasses.asdict(spec).items() if k != "description"},
        "weights": model.source,
        "weights_fingerprint": model.fingerprint,
    }


def model_code(model) -> list[str]:
    """The modules whose code loads and runs ``model``: generation, the loader, the module that
    declares its spec (and builds a tiny twin's weights)."""
    from qbench.catalog import MODELS

    mods = ["qbench.generation", "qbench.models.loader", "qbench.models.base"]
    target = MODELS.entry(model.spec.name).target if model.spec.name in MODELS else None
    if isinstance(target, str):
        mods.append(target.partition(":")[0])
    builder = model.spec.tiny_builder  # "module:function" that builds a tiny twin's weights
    if isinstance(builder, str):
        mods.append(builder.partition(":")[0])
    elif callable(builder):
        mods.append(builder.__module__)
    return mods


def image_identity(model, method, cfg: RunConfig):
    """The :class:`~qbench.identity.Identity` of a run's image folder: everything but the prompts
    that changes pixels (the model, the method's full description and code, the sampling
    settings, the generation code and libraries). Prompt text, seed and batch are in each file's
    name (:mod:`qbench.imagecache`)."""
    from qbench.identity import GENERATION_LIBRARIES, make

    return make(
        "images",
        {**model_inputs(model), "method": method.describe(), **sampling_settings(model, cfg)},
        code={"generation": model_code(model), "method": method.code_modules()},
        libraries=GENERATION_LIBRARIES + tuple(method.LIBRARIES),
    )


def image_key(model, method, cfg: RunConfig) -> tuple[str, dict[str, Any]]:
    """``(folder key, identity record)`` of a run's images (:func:`image_identity`)."""
    ident = image_identity(model, method, cfg)
    return ident.key, ident.record()


def comparability(model, cfg: RunConfig, prompts: list[Prompt]) -> dict[str, Any]:
    """What two runs must share for their numbers to be compared (and paired prompt by prompt):
    model and weights, the prompts (spec, count, and a hash of their ids and texts), the seed and
    the resolved sampling settings. Stored with every run as ``result["sampling"]``."""
    from qbench.imagecache import sha

    return {
        "model": model.spec.name,
        "weights": model.source,
        "prompts": cfg.prompts,
        "n_prompts": len(prompts),
        "prompts_sha": sha([[p.id, p.text] for p in prompts]),
        "seed": cfg.seed,
        **sampling_settings(model, cfg),
    }


class CachedImages(Sequence):
    """The run's images, read from the image cache when indexed (a 30,000-image run never holds
    them all in memory)."""

    def __init__(self, cache: ImageCache, entries: list[tuple[Prompt, int, str]]):
        self.cache, self.entries = cache, entries

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        p, seed, sig = self.entries[i]
        return self.cache.load(p, seed, sig)


def generate_cached(model, cache: ImageCache, prompts: list[Prompt], cfg: RunConfig, progress, description: str, dist=None) -> tuple[CachedImages, int]:
    """Images for all prompts -> (images, n generated).

    A batch (:func:`batches`) with any image missing from the cache is generated whole (images
    already cached are kept), so every image comes from the same batch as in an uninterrupted run.
    With several ranks, each generates its contiguous block of batches, then all wait for all."""
    plan = batches(prompts, cfg)
    mine = dist.shard(plan) if dist is not None and dist.enabled else plan
    todo = [(c, sig) for c, sig in mine if not all(cache.has(p, seed_for(cfg, p), sig) for p in c)]
    n_todo = sum(len(c) for c, _ in todo)
    n_mine = sum(len(c) for c, _ in mine)
    task = progress.add_task(description, total=n_mine, completed=n_mine - n_todo)
    for chunk, sig in todo:
        images = model.generate(
            [p.text for p in chunk],
            [seed_for(cfg, p) for p in chunk],
            steps=cfg.steps,
            guidance=cfg.guidance,
            resolution=cfg.resolution,
        )
        for p, im in zip(chunk, images):
            if not cache.has(p, seed_for(cfg, p), sig):
                cache.save(im, p, seed_for(cfg, p), sig)
        progress.advance(task, len(chunk))
    if dist is not None and dist.enabled:
        n_todo = sum(dist.gather(n_todo))
        dist.barrier()
    return CachedImages(cache, [(p, seed_for(cfg, p), sig) for chunk, sig in plan for p in chunk]), n_todo


def batches(prompts: list[Prompt], cfg: RunConfig) -> list[tuple[list[Prompt], str]]:
    """The run's generation batches: consecutive chunks of ``batch_size`` prompts, each with its
    signature (``qbench.imagecache.batch_signature``)."""
    from qbench.imagecache import batch_signature

    return [(c, batch_signature([(p.id, p.text, seed_for(cfg, p)) for p in c])) for c in iter_chunks(prompts, cfg.batch_size)]


def fp_method(cfg: RunConfig):
    """The full-precision method of the run's model (the reference images of fidelity metrics)."""
    from qbench.catalog import METHODS

    return METHODS.get("fp")(cfg.replace(method="fp", bits=None, mode=None, method_options={}))
