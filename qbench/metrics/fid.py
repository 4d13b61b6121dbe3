"""Fréchet Inception Distance: ``fid`` (vs real images / stored statistics) and ``fid-fp``.

Network and protocols: :mod:`qbench.metrics.inception` (Inception-v3 pool3, 2048-d, as ported
by torch-fidelity; ``clean`` / ``legacy_tensorflow`` / ``legacy_pytorch`` resizing, recorded with
every number). Weights (:func:`resolve_inception_weights`): metric option ``inception_weights``
(CLI ``--inception-weights PATH``), else a random stand-in with ``standin=true``, else
torch-fidelity's release file from torch's hub cache (downloaded when online), else
:class:`MissingWeightsError`. Either file is read with ``torch.load(weights_only=True)`` (or
safetensors), never unpickled (``inception.build_inception``).

Statistics are running float64 sums (``sum x`` and ``sum x x^T``: O(d^2) memory whatever N),
and the distance is computed in float64 by :func:`qbench.metrics.frechet.frechet_terms` (round-off
eigenvalues dropped, |FID| within float64 round-off of 0 reported as 0.0, clearly negative raises).
"""
from __future__ import annotations

import json
import os
from typing import Any, ClassVar

import numpy as np

from qbench.api import Metric, MetricContext, MetricValue
from qbench.errors import ConfigError, QBenchError
from qbench.metrics import common
from qbench.metrics.frechet import ROUNDOFF_NOTE, FeatureStats, frechet_distance, frechet_terms, trace_sqrt_product  # noqa: F401 (re-exported)
from qbench.metrics.inception import (  # noqa: F401 (re-exported)
    DEFAULT_PROTOCOL,
    FEATURE_DIM,
    FID_PRESETS,
    INCEPTION_SIZE,
    PROTOCOLS,
    InceptionFeatures,
    build_inception,
    check_protocol,
    inception_input,
    resolve_protocol,
)

INCEPTION_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
REFERENCE_PREPROCESS = "center crop to a square, PIL bicubic resize to the generated resolution, RGB uint8"


# -- statistics ----------------------------------------------------------------------------------
def resolve_inception_weights(ctx: MetricContext) -> tuple[str, dict[str, Any]]:
    """(local path, provenance) of the Inception weights for this run."""
    path = common.opt(ctx, "inception_weights")
    if path is not None:
        path = common.local_file(path, "Inception-v3 (FID)", "inception_weights")
        return path, common.weights_provenance(path, "metric option inception_weights")
    if common.opt_bool(ctx, "standin"):
        from qbench.metrics import standins

        path = standins.inception_weights(standins.standin_dir(ctx))
        return path, common.weights_provenance(path, "qbench stand-in (metric option standin)")
    path = common.fetch_weights(INCEPTION_URL, "Inception-v3 (FID, torch-fidelity)", "inception_weights", flag="--inception-weights")
    return path, common.weights_provenance(path, INCEPTION_URL)


# -- reference statistics -----------------------------------------------------------------------
def load_stats_npz(path: str) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """``mu`` / ``sigma`` from an ``.npz`` (pytorch-fid, clean-fid or qbench format)."""
    with np.load(path, allow_pickle=False) as f:
        if "mu" not in f or "sigma" not in f:
            raise ConfigError(f"{path}: FID statistics need arrays 'mu' and 'sigma', found {sorted(f.files)}")
        mu, sigma = f["mu"].astype(np.float64), f["sigma"].astype(np.float64)
        meta = json.loads(str(f["qbench_meta"])) if "qbench_meta" in f else {}
    if mu.shape != (FEATURE_DIM,) or sigma.shape != (FEATURE_DIM, FEATURE_DIM):
        raise ConfigError(f"{path}: expected mu ({FEATURE_DIM},) and sigma ({FEATURE_DIM}, {FEATURE_DIM}), got {mu.shape} and {sigma.shape}")
    return mu, sigma, meta


def save_stats_npz(path: str, mu: np.ndarray, sigma: np.ndarray, meta: dict[str, Any]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp.npz"
    np.savez(tmp, mu=mu, sigma=sigma, qbench_meta=np.array(json.dumps(meta, sort_keys=True)))
    os.replace(tmp, path)


def reference_files(folder: str):
    """The content of an FID reference folder: its image files (top level, :data:`IMAGE_EXTS`,
    sorted) with their sha256, and what was skipped and why (subfolders, other files), as a
    :class:`qbench.identity.TreeDigest`. Raises ConfigError when it holds no image."""
    from qbench.identity import tree_digest

    tree = tree_digest(folder, suffixes=IMAGE_EXTS, recursive=False)
    if not tree.files:
        raise ConfigError(f"no images ({', '.join(IMAGE_EXTS)}) in FID reference folder {folder}"
                          + (f"; skipped {len(tree.skipped)} other entries, e.g. {next(iter(tree.skipped))}" if tree.skipped else ""))
    return tree


def center_crop_resize(image, size: int):
    from PIL import Image

    image = image.convert("RGB")
    w, h = image.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    image = image.crop((left, top, left + s, top + s))
    return image if s == size else image.resize((size, size), resample=Image.BICUBIC)


def folder_stats(folder: str, extractor: InceptionFeatures, resolution: int, n: int | None, cache_dir: str, prompt_set: str | None, weights_id: str) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Statistics of the first ``n`` images (sorted names) of ``folder``, cached on disk.

    The cache file is named by the key of an ``fid-reference-stats``
    :class:`~qbench.identity.Identity`: the sha256 of every image used (so an image replaced by
    another of the same size is a new key), n, resolution, protocol, the Inception weights' hash,
    the preprocessing, the code of this module and its imports, and the versions of the libraries
    that decode, resize and embed the images. ``meta["skipped"]`` lists what the folder holds
    besides the images used (subfolders, other file types), so nothing is dropped silently.
    """
    from PIL import Image

    from qbench.identity import METRIC_LIBRARIES, make

    tree = reference_files(folder)
    entries = tree.files
    if n is not None:
        if n > len(entries):
            raise ConfigError(f"fid_ref_n={n} but {folder} holds only {len(entries)} images")
        entries = entries[:n]
    ident = make("fid-reference-stats", {
        "prompt_set": prompt_set, "n": len(entries), "resolution": resolution, "protocol": extractor.protocol,
        "images": [list(e) for e in entries], "inception": weights_id, "preprocess": REFERENCE_PREPROCESS,
    }, code={"fid": [__name__]}, libraries=METRIC_LIBRARIES)
    safe_set = (prompt_set or "none").replace("/", "_").replace(":", "-")
    path = os.path.join(cache_dir, "fid_stats", f"{safe_set}-n{len(entries)}-r{resolution}-{extractor.protocol}-{ident.key}.npz")
    meta = {"prompt_set": prompt_set, "n": len(entries), "resolution": resolution, "protocol": extractor.protocol,
            "folder": os.path.realpath(folder), "inception": weights_id, "identity": ident.key,
            "skipped": dict(list(tree.skipped.items())[:20]), "n_skipped": len(tree.skipped)}
    if tree.skipped:
        import logging

        logging.getLogger("qbench").warning(f"fid reference {folder}: {len(tree.skipped)} entries skipped (not top-level {', '.join(IMAGE_EXTS)} "
                                            f"files), e.g. {next(iter(tree.skipped))}; {len(entries)} images used")
    if os.path.isfile(path):
        mu, sigma, stored = load_stats_npz(path)
        if stored.get("identity") == ident.key:
            return mu, sigma, {**meta, "cache": f"hit: {path}"}
    stats = FeatureStats()
    for i in range(0, len(entries), extractor.batch_size):
        batch = []
        for rel, _ in entries[i : i + extractor.batch_size]:
            with Image.open(os.path.join(folder, rel)) as im:
                batch.append(center_crop_resize(im, resolution))
        stats.update(extractor(batch))
    mu, sigma = stats.mean_cov()
    save_stats_npz(path, mu, sigma, {k: v for k, v in meta.items() if k not in ("skipped",)})
    return mu, sigma, {**meta, "cache": f"written: {path}"}


# -- the metrics --------------------------------------------------------------------------------
class _FIDBase(Metric):
    higher_is_better: ClassVar[bool] = False

    def __init__(self, ctx: MetricContext):
        super().__init__(ctx)
        self.preset = _preset(ctx)
        self.protocol = _protocol(ctx)
        self.weights_path, self.weights_info = resolve_inception_weights(ctx)
        self.extractor = InceptionFeatures(self.weights_path, self.protocol, ctx.device, common.opt_int(ctx, "metric_batch_size", 16))
        self.gen = FeatureStats()
        self._size: tuple[int, int] | None = None

    def _track_size(self, images) -> None:
        if self._size is None and images:
            w_h = common.to_uint8_array(images[0]).shape[1::-1]
            self._size = (int(w_h[0]), int(w_h[1]))

    def _details(self, reference: dict[str, Any], terms: dict[str, Any]) -> dict[str, Any]:
        d: dict[str, Any] = {
            "network": "Inception-v3 pool3 (2048-d), TF 2015-12-05 graph as ported by torch-fidelity",
            "protocol": self.protocol,
            "protocol_description": PROTOCOLS[self.protocol],
            "preset": None if self.preset is None else {"name": self.preset, **FID_PRESETS[self.preset]},
            "resolution": list(self._size) if self._size else None,
            "reference": reference,
            "statistics": "float64 running sums; covariance ddof=1",
            "distance": ROUNDOFF_NOTE,
            "distance_terms": {k: terms[k] for k in ("raw", "mean_term", "trace1", "trace2", "trace_sqrt", "tolerance", "dropped_eigenvalues", "min_eigenvalue_rel")},
            "versions": common.versions("torch", "torch-fidelity", "numpy"),
        }
        common.merge_provenance(d, "inception_weights", self.weights_info)
        if self.gen.n < FEATURE_DIM:
            d["note"] = f"n={self.gen.n} < {FEATURE_DIM}: covariance is rank-deficient; FID is biased upward and only comparable at equal n"
        return d

    def reset(self) -> None:
        self.gen.reset()
        self._size = None

    # sharded runs (qbench.dist): every rank records its features, the main rank replays them
    def begin_shard(self) -> None:
        for s in self._stats():
            s.record()

    def shard_state(self) -> dict[str, Any]:
        return {"size": self._size, "logs": [s.log for s in self._stats()]}

    def merge_shards(self, states: list[dict[str, Any]]) -> None:
        for i, s in enumerate(self._stats()):
            s.replay([st["logs"][i] for st in states])
        self._size = next((st["size"] for st in states if st["size"]), None)

    def _stats(self) -> list[FeatureStats]:
        return [self.gen]


def _fid_options(with_reference: bool) -> tuple:
    from qbench.options import Opt

    out = (
        Opt("fid_protocol", "str", None, "how images reach the Inception network", choices=tuple(PROTOCOLS)),
        Opt("fid_preset", "str", None, "a published FID's protocol by name (sets fid_protocol)", choices=tuple(FID_PRESETS)),
        Opt("inception_weights", "str", None, "local Inception-v3 FID weights (torch-fidelity's .pth), loaded with weights_only=True", path=True),
    )
    if with_reference:
        out += (
            Opt("fid_reference", "str", None, "real images: a folder of images or an .npz with mu/sigma", path=True),
            Opt("fid_ref_n", "int", None, "use the first N reference images of the folder", minimum=2),
        )
    return out


def preflight_fid(ctx: MetricContext, with_reference: bool) -> None:
    """The checks of the FID metrics without building the network."""
    _protocol(ctx)
    path, _ = resolve_inception_weights(ctx)
    if common.opt(ctx, "inception_weights") is not None:  # a user's file: check it is the right network now
        from qbench.metrics.inception import build_inception

        build_inception(path)
    if with_reference:
        _reference_path(ctx)


def _preset(ctx: MetricContext) -> str | None:
    v = common.opt(ctx, "fid_preset")
    return None if v is None else str(v)


def _protocol(ctx: MetricContext) -> str:
    v = common.opt(ctx, "fid_protocol")
    return resolve_protocol(None if v is None else str(v), _preset(ctx))


def _reference_path(ctx: MetricContext) -> str:
    ref = common.opt(ctx, "fid_reference")
    if ref is None:
        raise ConfigError(
            "metric 'fid' needs a reference: metric option fid_reference=PATH (a folder of real images or an .npz with mu/sigma); "
            "'fid-fp' compares against the full-precision model instead"
        )
    path = os.path.expanduser(str(ref))
    if not (os.path.isdir(path) or (os.path.isfile(path) and path.endswith(".npz"))):
        raise ConfigError(f"fid_reference must be a folder of images or an .npz file: {path}")
    return path


class FID(_FIDBase):
    """FID of the generated images against real images (a folder) or stored statistics (.npz)."""

    name: ClassVar[str] = "fid"
    description: ClassVar[str] = "FID vs real images (metric option fid_reference: folder or .npz), Inception-v3 pool3"
    OPTIONS = _fid_options(True)

    @classmethod
    def preflight(cls, ctx: MetricContext, prompts) -> None:
        preflight_fid(ctx, True)

    def __init__(self, ctx: MetricContext):
        super().__init__(ctx)
        self.reference = _reference_path(ctx)
        self.ref_n = common.opt_int(ctx, "fid_ref_n", None)
        self._ref: tuple[np.ndarray, np.ndarray, dict[str, Any]] | None = None

    def update(self, images, prompts, references=None) -> None:
        if images:
            self._track_size(images)
            self.gen.update(self.extractor(list(images)))

    def reference_stats(self) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        if self._ref is None:
            if os.path.isdir(self.reference):
                res = self.ctx.resolution or (self._size[0] if self._size else None)
                if res is None:
                    raise QBenchError("fid: the resolution to resize reference images to is unknown (no images yet and no ctx.resolution)")
                mu, sigma, meta = folder_stats(self.reference, self.extractor, int(res), self.ref_n, self.ctx.cache_dir, self.ctx.prompt_set, self.weights_info["sha256"])
                meta.update(kind="folder", path=self.reference, preprocess=REFERENCE_PREPROCESS)
            else:
                mu, sigma, meta = load_stats_npz(self.reference)
                meta = {"kind": "npz", "path": self.reference, "protocol": meta.get("protocol", "unknown (external .npz: must match this run's protocol)"), **meta}
            self._ref = (mu, sigma, meta)
        return self._ref

    def compute(self) -> MetricValue:
        mu_g, sig_g = self.gen.mean_cov()
        mu_r, sig_r, meta = self.reference_stats()
        terms = frechet_terms(mu_g, sig_g, mu_r, sig_r)
        return MetricValue(terms["value"], None, self.gen.n, False, self._details(meta, terms))


class FIDvsFP(_FIDBase):
    """FID of the generated images against the full-precision model's images of the same prompts+seeds."""

    name: ClassVar[str] = "fid-fp"
    description: ClassVar[str] = "FID vs the full-precision model's images of the same prompts and seeds"
    needs_fp_reference: ClassVar[bool] = True
    OPTIONS = _fid_options(False)

    @classmethod
    def preflight(cls, ctx: MetricContext, prompts) -> None:
        preflight_fid(ctx, False)

    def __init__(self, ctx: MetricContext):
        super().__init__(ctx)
        self.ref = FeatureStats()

    def update(self, images, prompts, references=None) -> None:
        common.check_pairs(images, references, self.name)
        if images:
            self._track_size(images)
            self.gen.update(self.extractor(list(images)))
            self.ref.update(self.extractor(list(references)))

    def compute(self) -> MetricValue:
        mu_g, sig_g = self.gen.mean_cov()
        mu_r, sig_r = self.ref.mean_cov()
        terms = frechet_terms(mu_g, sig_g, mu_r, sig_r)
        ref = {"kind": "full-precision model images, same prompts and seeds", "n": self.ref.n}
        return MetricValue(terms["value"], None, self.gen.n, False, self._details(ref, terms))

    def reset(self) -> None:
        super().reset()
        self.ref.reset()

    def _stats(self) -> list[FeatureStats]:
        return [self.gen, self.ref]
