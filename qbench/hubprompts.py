"""Prompt sets from the Hugging Face Hub: ``--prompts hf:<dataset>[:<split>][@<revision>][:N]`` and
the named benchmark sets MJHQ-30K, DrawBench, PartiPrompts and sDCI (``qbench list prompts``).

How a set is fetched, read and recorded:

* **fetch** — :func:`huggingface_hub.snapshot_download` (``repo_type="dataset"``) of the set's
  data files at the pinned revision into the Hugging Face hub cache (``HF_HUB_CACHE``): fetched
  once, then read from the cache. The snapshot folder is named by the commit the revision
  resolved to, so a branch such as ``main`` is always recorded with the exact commit that ran.
  ``datasets.load_dataset(repo, revision=...)`` would fetch the same files but does not say which
  commit it resolved, and keeps its own cache that ``hf download`` does not fill.
* **offline** (``HF_HUB_OFFLINE=1`` or ``HF_DATASETS_OFFLINE=1``) and not cached -> one
  :class:`~qbench.errors.MissingWeightsError` line naming the set, repository, revision and the
  ``hf download`` command that fills the cache.
* **read** — tabular sets (PartiPrompts, DrawBench, any ``hf:`` spec) through
  ``datasets.load_dataset(<snapshot folder>, split=...)``, which applies the Hub's own data-file
  and split resolution (README ``configs``, ``data/train-*.parquet``, ``.tsv`` ...) to the local
  snapshot. MJHQ-30K's ``meta_data.json`` (a mapping image name -> {prompt, category}) and sDCI's
  ``sDCI.yaml`` (name -> prompt) are not tables and are read with ``json`` / ``yaml``.
* **ids** — ``hf:<repo>@<commit[:12]>/<split>/<row>`` (tabular) or ``hf:<repo>@<commit[:12]>/<name>``
  (MJHQ, sDCI: the image name the benchmark uses); ``index`` is the position in the set as
  ordered below (the seed of a prompt is ``run seed + index``), as for every other set.
* **identity** — each prompt's ``meta["source"]`` (repository, requested revision, resolved
  commit, files, split, sampling rule) enters the run identity and is stored with the run
  (:func:`qbench.phases.run_identity`); a new commit of a set gives new ids and a new key.

Sampling, as the papers that use each set did:

* ``mjhq-30k`` — all 30,000 prompts in ``meta_data.json`` order. ``mjhq-5k`` — Q-Sched's (and
  nunchaku's) 5,000: ``names = list(meta)``; ``random.Random(0).shuffle(names)``; the first 5,000,
  **sorted** by name (Q-Sched ``src/MJHQ.py``, ``max_dataset_size=5000``).
* ``sdci`` — the sDCI prompts in file order; ``sdci:N`` is Q-Sched's calibration set
  (``list(dci_prompts.values())[:calib_size]``, ``src/qsched_optimize.py``), pinned to the commit
  Q-Sched's README links.
* ``parti-prompts``, ``drawbench`` — every prompt in dataset row order (torchao's and cache-dit's
  benchmarks run the full set or its first N).
"""
from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from functools import lru_cache

from qbench.api import Prompt
from qbench.errors import ConfigError, MissingWeightsError, QBenchError

#: columns that hold the prompt text, tried in order (case-insensitive) when a set names none
TEXT_COLUMNS = ("prompt", "prompts", "caption", "text")
#: data files fetched for an ``hf:`` spec (never images or archives)
DATA_PATTERNS = ("*.parquet", "*.csv", "*.tsv", "*.json", "*.jsonl", "*.txt", "README.md")
MAX_ROWS = 200_000


@dataclass(frozen=True)
class HubSet:
    """A named prompt set on the Hub. ``revision`` is a commit sha where one was seen on the Hub
    (``verified``), else a branch whose resolved commit is recorded at load time."""

    name: str
    repo: str
    revision: str
    files: tuple[str, ...]
    reader: str  # "table" (datasets), "name-json" (MJHQ meta_data.json), "name-yaml" (sDCI.yaml)
    split: str | None = None
    column: str | None = None
    sample: int | None = None  # Q-Sched's random.Random(0) sample of this many names, sorted
    verified: bool = False
    description: str = ""


HUB_SETS: dict[str, HubSet] = {s.name: s for s in (
    # revision main: no commit of playgroundai/MJHQ-30K was verified offline (TO BE VERIFIED); the
    # resolved commit is recorded with every run
    HubSet("mjhq-30k", "playgroundai/MJHQ-30K", "main", ("meta_data.json",), "name-json",
           description="MJHQ-30K (Playground v2.5): 30,000 Midjourney prompts in 10 categories, meta_data.json order"),
    HubSet("mjhq-5k", "playgroundai/MJHQ-30K", "main", ("meta_data.json",), "name-json", sample=5000,
           description="MJHQ-30K sampled as Q-Sched/nunchaku: random.Random(0).shuffle of the names, first 5,000, sorted"),
    HubSet("sdci", "mit-han-lab/svdquant-datasets", "35636da44cdc7cef8916b122a12e4aa9e2df80c1", ("sDCI.yaml",), "name-yaml",
           verified=True, description="sDCI (SVDQuant's summarized DCI captions) in file order; the first N are Q-Sched's calibration prompts"),
    HubSet("parti-prompts", "nateraw/parti-prompts", "944b156abfdad7627c3221b5ec4f6a6fb060a197", ("PartiPrompts.tsv", "README.md"), "table",
           split="train", column="Prompt", verified=True, description="PartiPrompts (P2, Parti): 1,632 prompts with Category and Challenge, file order"),
    # shunk031/DrawBench is a loading script; its Hub parquet conversion is read instead (branch
    # refs/convert/parquet, commit recorded at load time)
    HubSet("drawbench", "shunk031/DrawBench", "refs/convert/parquet", ("*.parquet",), "table", split="test", column="prompts",
           description="DrawBench (Imagen): 200 prompts in 11 categories, row order (parquet conversion of shunk031/DrawBench)"),
)}


def offline() -> bool:
    """Whether downloads are off (``HF_HUB_OFFLINE`` or ``HF_DATASETS_OFFLINE`` set to 1/true/yes/on)."""
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def download_command(repo: str, revision: str, files: tuple[str, ...]) -> str:
    """The ``hf download`` command (huggingface_hub's CLI) that puts ``files`` into the hub cache."""
    globbed = any("*" in f for f in files)
    exact = [] if globbed else list(files)
    pats = list(files) if globbed else []
    return " ".join(["hf download", repo, *exact, "--repo-type dataset", f"--revision {revision}"] + [f"--include '{p}'" for p in pats])


def fetch(repo: str, revision: str, files: tuple[str, ...], what: str) -> tuple[str, str]:
    """``(snapshot folder, resolved commit sha)`` of ``files`` of the dataset repo at ``revision``
    (fetched into the hub cache unless offline). Raises :class:`MissingWeightsError` (offline and
    not cached), :class:`QBenchError` (unknown repo or revision, network failure, no data file)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    cmd = download_command(repo, revision, files)
    try:
        folder = snapshot_download(repo, repo_type="dataset", revision=revision, allow_patterns=list(files), local_files_only=offline())
    except (RevisionNotFoundError, RepositoryNotFoundError) as e:
        kind = "revision" if isinstance(e, RevisionNotFoundError) else "dataset repository"
        raise QBenchError(f"{what}: no {kind} {repo}@{revision} on the Hugging Face Hub (private, gated or misspelled?)") from None
    except (LocalEntryNotFoundError, OfflineModeIsEnabled):
        raise MissingWeightsError(f"{what}: {repo}@{revision} is not in the Hugging Face cache and downloads are off "
                                  f"(HF_HUB_OFFLINE/HF_DATASETS_OFFLINE); download it with: {cmd}") from None
    except (HfHubHTTPError, OSError) as e:
        raise QBenchError(f"{what}: cannot fetch {repo}@{revision}: {str(e).splitlines()[0][:200] if str(e) else type(e).__name__}") from None
    present = [os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs]
    missing = [p for p in files if "*" not in p and p != "README.md" and p not in present]  # globs are alternatives
    if missing or not any(x != "README.md" for x in present):
        if offline():
            raise MissingWeightsError(f"{what}: {repo}@{revision} is cached without {', '.join(missing) or 'any data file'}; download it with: {cmd}")
        raise QBenchError(f"{what}: {repo}@{revision} has no data file matching {', '.join(files)}")
    return folder, os.path.basename(os.path.normpath(folder))


def read_table(folder: str, split: str | None, column: str | None, what: str) -> tuple[str, list[tuple[int, str, dict]]]:
    """``(split, [(row, text, other columns)])`` of a tabular dataset folder through
    ``datasets.load_dataset(folder)``; the only split, or ``train``, when ``split`` is None.
    Empty rows are skipped (their row numbers, and so the other rows' seeds, stay)."""
    import logging
    import tempfile

    import datasets

    datasets.disable_progress_bars()
    log = logging.getLogger("datasets")
    level = log.level
    log.setLevel(logging.CRITICAL)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            dd = datasets.load_dataset(folder, cache_dir=tmp)
        except Exception as e:  # noqa: BLE001 (datasets raises many types for unreadable folders; one line)
            cause = e.__cause__ or e
            raise QBenchError(f"{what}: cannot be read by datasets: {str(cause).splitlines()[0][:200] if str(cause) else type(cause).__name__}") from None
        finally:
            log.setLevel(level)
        splits = list(dd)
        if split is None:
            split = splits[0] if len(splits) == 1 else "train" if "train" in splits else None
            if split is None:
                raise ConfigError(f"{what}: several splits ({', '.join(splits)}); name one (hf:<dataset>:<split>)")
        if split not in dd:
            raise ConfigError(f"{what}: no split {split!r} (splits: {', '.join(splits)})")
        ds = dd[split]
        cols = ds.column_names
        col = column if column in cols else next((c for t in TEXT_COLUMNS for c in cols if c.lower() == t), None)
        if col is None:
            raise QBenchError(f"{what}: no prompt column {column or ''} (expected one of {', '.join(TEXT_COLUMNS)}; found: {', '.join(cols)[:200]})")
        if len(ds) > MAX_ROWS:
            raise QBenchError(f"{what}: {len(ds)} rows, more than the {MAX_ROWS} accepted")
        keep = [c for c in cols if c != col and getattr(ds.features[c], "dtype", None) in ("string", "large_string", "int64", "int32", "bool")]
        rows = []
        for i, r in enumerate(ds.select_columns([col, *keep]).to_list()):
            text = " ".join(str(r[col] or "").split())
            if text:
                rows.append((i, text, {k: r[k] for k in keep}))
    return split, rows


def qsched_sample(names: list[str], n: int) -> list[str]:
    """Q-Sched's subset (``src/MJHQ.py``): ``random.Random(0).shuffle(names)``, the first ``n``, sorted."""
    names = list(names)
    random.Random(0).shuffle(names)
    return sorted(names[:n])


def _named_rows(path: str, reader: str, what: str) -> list[tuple[str, str, dict]]:
    """``[(name, text, meta)]`` of MJHQ's meta_data.json or sDCI's yaml, in file order."""
    try:
        with open(path, encoding="utf-8") as f:
            if reader == "name-json":
                data = json.load(f)
            else:
                import yaml

                data = yaml.safe_load(f)
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise QBenchError(f"{what}: cannot read {os.path.basename(path)}: {str(e).splitlines()[0][:200]}") from None
    except Exception as e:  # noqa: BLE001 (yaml.YAMLError and its subclasses)
        raise QBenchError(f"{what}: cannot parse {os.path.basename(path)}: {str(e).splitlines()[0][:200]}") from None
    if not isinstance(data, dict):
        raise QBenchError(f"{what}: {os.path.basename(path)} is not a mapping of name -> prompt")
    out = []
    for name, v in data.items():
        text, meta = (v.get("prompt"), {"category": v.get("category")}) if isinstance(v, dict) else (v, {})
        if not isinstance(text, str):
            raise QBenchError(f"{what}: entry {str(name)[:40]!r} has no prompt text")
        out.append((str(name), " ".join(text.split()), meta))
    return out


def _source(repo: str, revision: str, sha: str | None, **more) -> dict:
    return {"repo": repo, "revision": revision, **({"commit": sha} if sha else {}), **more}


@lru_cache(maxsize=16)
def _load_named(name: str, offline_now: bool) -> tuple[Prompt, ...]:
    s = HUB_SETS[name]
    what = f"prompt set {name}"
    folder, sha = fetch(s.repo, s.revision, s.files, what)
    base = f"hf:{s.repo}@{sha[:12]}"
    if s.reader == "table":
        split, rows = read_table(folder, s.split, s.column, what)
        src = _source(s.repo, s.revision, sha, files=list(s.files), split=split, order="row order")
        return tuple(Prompt(id=f"{base}/{split}/{i}", text=t, index=i, meta={**m, "source": src}) for i, t, m in rows)
    named = _named_rows(os.path.join(folder, s.files[0]), s.reader, what)
    order = "file order"
    if s.sample:
        if len(named) < s.sample:
            raise QBenchError(f"{what}: {len(named)} prompts, fewer than the {s.sample} sampled")
        by_name = {n: (t, m) for n, t, m in named}
        named = [(n, *by_name[n]) for n in qsched_sample([n for n, _, _ in named], s.sample)]
        order = f"random.Random(0).shuffle of the names, first {s.sample}, sorted (Q-Sched)"
    src = _source(s.repo, s.revision, sha, files=list(s.files), order=order)
    return tuple(Prompt(id=f"{base}/{n}", text=t, index=i, meta={**m, "source": src}) for i, (n, t, m) in enumerate(named) if t)


def load_named(name: str) -> tuple[Prompt, ...]:
    """Every prompt of the named Hub set ``name`` (:data:`HUB_SETS`), in its documented order."""
    return _load_named(name, offline())


def parse_hf_spec(body: str) -> tuple[str, str | None, str | None]:
    """``<dataset>[:<split>][@<revision>]`` (the ``hf:`` spec less ``hf:`` and ``:N``) ->
    ``(dataset, split, revision)``. ``dataset`` is a Hub repo id or a local folder."""
    rest, at, revision = body.rpartition("@")
    if not at:
        rest, revision = body, None
    dataset, colon, split = rest.rpartition(":")
    if not colon:
        dataset, split = rest, None
    if not dataset or (revision is not None and not revision) or (split is not None and not split):
        raise ConfigError(f"prompt spec 'hf:{body}': expected hf:<dataset>[:<split>][@<revision>][:N]")
    return dataset, split, revision


def load_hf(body: str) -> list[Prompt]:
    """Prompts of an ``hf:`` spec body (see :func:`parse_hf_spec`): a local dataset folder (read as
    is; ids ``hf:<folder name>/<split>/<row>``) or a Hub dataset repo at ``revision`` (default
    ``main``; the resolved commit is recorded)."""
    dataset, split, revision = parse_hf_spec(body)
    what = f"prompt set hf:{dataset}"
    local = dataset.startswith(("/", ".", "~")) or os.path.isdir(dataset)
    if local:
        folder = os.path.abspath(os.path.expanduser(dataset))
        if revision is not None:
            raise ConfigError(f"{what}: @{revision}: a local folder has no revisions")
        if not os.path.isdir(folder):
            raise QBenchError(f"{what}: no such folder")
        split, rows = read_table(folder, split, None, what)
        src = {"path": folder, "split": split}
        base = f"hf:{os.path.basename(folder)}"
    else:
        revision = revision or "main"
        folder, sha = fetch(dataset, revision, DATA_PATTERNS, what)
        split, rows = read_table(folder, split, None, what)
        src = _source(dataset, revision, sha, split=split, order="row order")
        base = f"hf:{dataset}@{sha[:12]}"
    return [Prompt(id=f"{base}/{split}/{i}", text=t, index=i, meta={**m, "source": src}) for i, t, m in rows]


def prompt_sources(prompts) -> list[dict]:
    """The distinct ``meta["source"]`` records of ``prompts`` (Hub sets only; empty otherwise)."""
    out: list[dict] = []
    for p in prompts:
        s = p.meta.get("source") if isinstance(p.meta, dict) else None
        if s and s not in out:
            out.append(s)
    return out


# registry targets (qbench.catalog.PROMPTS)
def mjhq_30k() -> tuple[Prompt, ...]:
    return load_named("mjhq-30k")


def mjhq_5k() -> tuple[Prompt, ...]:
    return load_named("mjhq-5k")


def sdci() -> tuple[Prompt, ...]:
    return load_named("sdci")


def parti_prompts() -> tuple[Prompt, ...]:
    return load_named("parti-prompts")


def drawbench() -> tuple[Prompt, ...]:
    return load_named("drawbench")
