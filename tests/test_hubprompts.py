"""Hub prompt sets (qbench.hubprompts): ``hf:`` specs on a local dataset folder, the named sets read
from a Hugging Face hub cache laid out in the test (the real snapshot_download code path, offline),
Q-Sched's MJHQ sampling, the one-line offline refusal and the resolved commit in the run identity.
Nothing here reaches the network."""
from __future__ import annotations

import hashlib
import json
import os
import random

import pytest

from qbench.errors import ConfigError, MissingWeightsError, QBenchError
from qbench.hubprompts import HUB_SETS, _load_named, parse_hf_spec, qsched_sample
from qbench.prompts import load_prompts

SHA_A = "a" * 40
SHA_B = "b" * 40


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty hub cache of this test: ``put(repo, files, sha, ref)`` lays a snapshot out as
    ``hf download`` would (``datasets--owner--name/snapshots/<sha>/...`` and ``refs/<ref>``)."""
    import huggingface_hub.constants as c

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache))
    _load_named.cache_clear()

    def put(repo: str, files: dict[str, bytes | str], sha: str = SHA_A, ref: str | None = "main"):
        root = cache / ("datasets--" + repo.replace("/", "--"))
        for rel, data in files.items():  # blobs/<hash> and a relative symlink in snapshots/, as the real cache
            data = data if isinstance(data, bytes) else data.encode()
            blob = root / "blobs" / hashlib.sha256(data).hexdigest()
            blob.parent.mkdir(parents=True, exist_ok=True)
            blob.write_bytes(data)
            f = root / "snapshots" / sha / rel
            f.parent.mkdir(parents=True, exist_ok=True)
            if f.is_symlink():
                f.unlink()
            f.symlink_to(os.path.relpath(blob, f.parent))
        if ref:
            (root / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
            (root / "refs" / ref).write_text(sha)
        _load_named.cache_clear()

    yield put
    _load_named.cache_clear()


def _parquet_folder(path, splits: dict[str, dict[str, list]]):
    import datasets

    for split, cols in splits.items():
        os.makedirs(path / "data", exist_ok=True)
        datasets.Dataset.from_dict(cols).to_parquet(str(path / "data" / f"{split}-00000-of-00001.parquet"))
    return path


def test_spec_grammar():
    assert parse_hf_spec("nateraw/parti-prompts") == ("nateraw/parti-prompts", None, None)
    assert parse_hf_spec("nateraw/parti-prompts:train@944b156") == ("nateraw/parti-prompts", "train", "944b156")
    assert parse_hf_spec("a/b@refs/convert/parquet") == ("a/b", None, "refs/convert/parquet")
    assert parse_hf_spec("/data/my set:test") == ("/data/my set", "test", None)
    for bad in ["", "a/b@", "a/b:@main", ":train"]:
        with pytest.raises(ConfigError, match="expected hf:<dataset>"):
            parse_hf_spec(bad)


def test_local_folder_splits_ids_and_limit(tmp_path):
    d = _parquet_folder(tmp_path / "myset", {"train": {"Prompt": ["a red cube", "", "two  blue spheres", "x"], "Category": ["c0", "c1", "c2", "c3"]},
                                            "test": {"Prompt": ["t0", "t1"], "Category": ["x", "y"]}})
    p = load_prompts(f"hf:{d}:2")  # two splits: train is the default
    assert [(x.id, x.text, x.index) for x in p] == [("hf:myset/train/0", "a red cube", 0), ("hf:myset/train/2", "two blue spheres", 2)]
    assert p[1].meta["Category"] == "c2" and p[1].meta["source"] == {"path": str(d), "split": "train"}
    assert [x.text for x in load_prompts(f"hf:{d}:test")] == ["t0", "t1"]
    with pytest.raises(ConfigError, match="no split 'valid' \\(splits: "):
        load_prompts(f"hf:{d}:valid")
    with pytest.raises(ConfigError, match="has 3 prompts; 4 requested"):
        load_prompts(f"hf:{d}:4")
    with pytest.raises(ConfigError, match="a local folder has no revisions"):
        load_prompts(f"hf:{d}@main")
    bad = _parquet_folder(tmp_path / "nocol", {"train": {"words": ["a"]}})
    with pytest.raises(QBenchError, match="no prompt column.*found: words"):
        load_prompts(f"hf:{bad}")


def test_named_table_set_from_the_hub_cache(hub):
    s = HUB_SETS["parti-prompts"]
    tsv = "Prompt\tCategory\tChallenge\tNote\nbond\tAbstract\tBasic\t\nA red apple.\tFood\tColors\tn\n"
    hub(s.repo, {"PartiPrompts.tsv": tsv, "README.md": "---\nlicense: apache-2.0\n---\n"}, sha=s.revision, ref=None)
    p = load_prompts("parti-prompts")
    assert [x.id for x in p] == ["hf:nateraw/parti-prompts@944b156abfda/train/0", "hf:nateraw/parti-prompts@944b156abfda/train/1"]
    assert p[1].text == "A red apple." and p[1].meta["Category"] == "Food" and p[1].meta["Challenge"] == "Colors"
    assert p[0].meta["source"]["commit"] == s.revision and p[0].meta["source"]["split"] == "train"


def test_drawbench_parquet_conversion_layout(hub, tmp_path):
    """DrawBench is read from the Hub's parquet conversion: ``default/test/0000.parquet``."""
    d = _parquet_folder(tmp_path / "db", {"test": {"prompts": ["A red colored car.", "A black colored banana."], "category": ["Colors", "Colors"]}})
    hub("shunk031/DrawBench", {"default/test/0000.parquet": (d / "data" / "test-00000-of-00001.parquet").read_bytes()}, sha=SHA_B,
        ref="refs/convert/parquet")
    p = load_prompts("drawbench:2")
    assert [(x.id, x.text) for x in p] == [(f"hf:shunk031/DrawBench@{SHA_B[:12]}/test/0", "A red colored car."),
                                           (f"hf:shunk031/DrawBench@{SHA_B[:12]}/test/1", "A black colored banana.")]
    assert p[0].meta["source"]["revision"] == "refs/convert/parquet" and p[0].meta["source"]["commit"] == SHA_B


def _mjhq(n: int) -> dict:
    return {f"{random.Random(i).getrandbits(64):016x}": {"category": ["people", "animals"][i % 2], "prompt": f"prompt {i}"} for i in range(n)}


def test_mjhq_order_qsched_sample_and_resolved_commit(hub):
    meta = _mjhq(5003)
    hub("playgroundai/MJHQ-30K", {"meta_data.json": json.dumps(meta)}, sha=SHA_A)  # refs/main -> SHA_A
    full = load_prompts("mjhq-30k")
    assert [x.text for x in full[:3]] == ["prompt 0", "prompt 1", "prompt 2"] and full[1].meta["category"] == "animals"
    assert full[0].id == f"hf:playgroundai/MJHQ-30K@{SHA_A[:12]}/{next(iter(meta))}"
    assert full[0].meta["source"]["revision"] == "main" and full[0].meta["source"]["commit"] == SHA_A
    # Q-Sched src/MJHQ.py: names = list(meta.keys()); random.Random(0).shuffle(names); names[:5000]; sorted
    names = list(meta.keys())
    random.Random(0).shuffle(names)
    expected = sorted(names[:5000])
    five = load_prompts("mjhq-5k")
    assert [x.id.rsplit("/", 1)[1] for x in five] == expected and [x.index for x in five[:3]] == [0, 1, 2]
    assert five[0].text == meta[expected[0]]["prompt"] and qsched_sample(list(meta), 5000) == expected
    assert [x.id for x in load_prompts("mjhq-5k:7")] == [x.id for x in five[:7]]


def test_sdci_file_order_is_qsched_calibration_order(hub):
    s = HUB_SETS["sdci"]
    hub(s.repo, {"sDCI.yaml": "img_b: second caption\nimg_a: first  caption\nimg_c: third\n"}, sha=s.revision, ref=None)
    p = load_prompts("sdci:2")  # Q-Sched: list(dci_prompts.values())[:calib_size]
    assert [(x.id, x.text) for x in p] == [("hf:mit-han-lab/svdquant-datasets@35636da44cdc/img_b", "second caption"),
                                           ("hf:mit-han-lab/svdquant-datasets@35636da44cdc/img_a", "first caption")]


def test_offline_and_not_cached_is_one_line_naming_the_download(hub, capsys):
    with pytest.raises(MissingWeightsError) as e:
        load_prompts("mjhq-30k:4")
    msg = str(e.value)
    assert "\n" not in msg and "playgroundai/MJHQ-30K@main" in msg
    assert msg.endswith("hf download playgroundai/MJHQ-30K meta_data.json --repo-type dataset --revision main")
    with pytest.raises(MissingWeightsError, match="--revision refs/convert/parquet --include '\\*.parquet'"):
        load_prompts("drawbench")
    from qbench.cli import main

    assert main(["run", "--model", "toy-flux", "--prompts", "hf:acme/prompts:train@v1:4", "--dry-run"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "acme/prompts@v1 is not in the Hugging Face cache" in err[0] and "hf download acme/prompts --repo-type dataset --revision v1" in err[0]


def test_resolved_commit_enters_the_run_identity(hub, tmp_path):
    from qbench.config import RunConfig
    from qbench.phases import run_identity
    from qbench.preflight import plan_run

    d = tmp_path / "src"
    _parquet_folder(d, {"train": {"prompt": ["a small red circle", "a big blue square"]}})
    files = {"data/train-00000-of-00001.parquet": (d / "data" / "train-00000-of-00001.parquet").read_bytes()}
    cfg = RunConfig(model="toy-flux", method="fp", prompts="hf:acme/prompts@main:2", metrics=[], out_dir=str(tmp_path / "out"))
    hub("acme/prompts", files, sha=SHA_A)
    a = run_identity(plan_run(cfg))
    hub("acme/prompts", files, sha=SHA_B)  # main moves to a new commit with the same rows
    b = run_identity(plan_run(cfg))
    assert a.key != b.key
    assert a.inputs["prompt_sources"] == [{"repo": "acme/prompts", "revision": "main", "commit": SHA_A, "split": "train", "order": "row order"}]
    assert b.inputs["prompts"][0][0] == f"hf:acme/prompts@{SHA_B[:12]}/train/0"
    plain = run_identity(plan_run(cfg.replace(prompts="toy:2")))
    assert "prompt_sources" not in plain.inputs  # other sets keep their keys


def test_catalog_entries_name_the_pinned_revisions(capsys):
    from qbench.catalog import PROMPTS
    from qbench.cli import main

    assert main(["list", "prompts", "--json"]) == 0
    assert set(HUB_SETS) <= {e["name"] for e in json.loads(capsys.readouterr().out)["prompts"]}

    for name, s in HUB_SETS.items():
        e = PROMPTS.entry(name)
        assert s.repo in e.description and s.revision[:12] in e.description, name
