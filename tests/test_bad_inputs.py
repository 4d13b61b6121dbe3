"""Bad input: one clear line, a non-zero exit, nothing loaded, nothing stored (issue 11 §6/§7).

Every case runs the real CLI entry point in-process. Cases marked ``preflight`` must be refused
before any model loads: the results database is not even created.
"""
import json
import os

import pytest

from qbench.cli import main

TOY = ["--prompts", "toy:2", "--metrics", "", "--latency-repeats", "1", "--latency-warmup", "0", "--no-progress"]


def _weights(name):
    import qbench

    return os.path.join(os.path.dirname(qbench.__file__), "zoo", "weights", name)


def _files(tmp_path):
    """Inputs written once per test: (name -> path)."""
    d = {}

    def w(name, data, mode="w"):
        p = tmp_path / name
        if mode == "wb":
            p.write_bytes(data)
        else:
            p.write_text(data)
        d[name] = str(p)

    w("batch_str.json", json.dumps({"batch_size": "4"}))
    w("steps_x.json", json.dumps({"steps": "x"}))
    w("list.json", json.dumps([1, 2]))
    w("prompts_obj.json", json.dumps({"prompts": {"a": 1}}))
    w("string.json", json.dumps("model=toy-flux"))
    w("binary_cfg.json", b"\xff\xfe\x00bad", "wb")
    w("empty.txt", "")
    w("binary.txt", b"\x00\x01\x02abc", "wb")
    w("latin1.txt", "caf\xe9 au lait\n".encode("latin-1"), "wb")
    w("listcap.json", json.dumps([{"caption": ["a", "b"]}]))
    w("badlayers.yaml", "transformer_blocks.0.attn.to_q: {w: 4, group_size: 7}\n")
    w("bin.yaml", b"\x00\x01\xff", "wb")
    w("nolayer.yaml", "transformer_blocks.99.attn.to_q: 4\n")
    w("notadb.sqlite", "this is a text file, not a database\n")
    (tmp_path / "promptdir").mkdir()
    d["promptdir"] = str(tmp_path / "promptdir") + "/"
    return d


CASES = [
    # (id, argv (with {name} placeholders for _files), expected text in the one error line)
    ("config batch_size str", ["--config", "{batch_str.json}"], "batch_size must be an integer"),
    ("config steps x", ["--config", "{steps_x.json}"], "steps must be an integer"),
    ("config list", ["--config", "{list.json}"], "JSON object"),
    ("config prompts obj", ["--config", "{prompts_obj.json}"], "prompts must be a string"),
    ("config string", ["--config", "{string.json}"], "JSON object"),
    ("config binary", ["--config", "{binary_cfg.json}"], "not UTF-8"),
    ("device tpu", ["--device", "tpu"], "unknown device 'tpu'"),
    ("device gpu", ["--device", "gpu"], "unknown device 'gpu'"),
    ("device cuda no gpu", ["--device", "cuda"], "CUDA is not available"),
    ("dtype float8", ["--dtype", "float8_e4m3fn"], "unsupported dtype"),
    ("dtype int8", ["--dtype", "int8"], "unsupported dtype"),
    ("seed huge", ["--seed", str(2**70)], "seed must be < 2**62"),
    ("seed negative", ["--seed", "-1"], "seed must be >= 0"),
    ("wrong model path", ["--model", "toy-lcm", "--model-path", "@toy-flux"], "holds a FluxPipeline"),
    ("steps beyond scheduler", ["--model", "toy-lcm", "--steps", "60"], "runs at most 50 steps"),
    ("fp with bits", ["--method", "fp", "--bits", "W4A8"], "does not quantize"),
    ("fp with mode", ["--method", "fp", "--mode", "kernel"], "does not quantize"),
    ("fp with option", ["--method", "fp", "-O", "group_size=7"], "takes no options"),
    ("naive odd group", ["--method", "naive", "--bits", "W4A8", "-O", "group_size=7"], "group_size must be an even integer"),
    ("naive unknown option", ["--method", "naive", "--bits", "W4A8", "-O", "groupsize=64"], "did you mean 'group_size'"),
    ("naive bad layers file", ["--method", "naive", "--bits", "W4A8", "-O", "layers={badlayers.yaml}"], "group_size"),
    ("naive layers file not UTF-8", ["--method", "naive", "--bits", "W4A8", "-O", "layers={bin.yaml}"], "bin.yaml is not UTF-8"),
    ("qsched over a mixdq allocation of missing layers", ["--method", "qsched", "--bits", "W4A8", "-O", "base=mixdq",
                                                           "-O", "base_options={\"allocation\": \"{nolayer.yaml}\"}"], "transformer_blocks.99"),
    ("mixdq allocation file not UTF-8", ["--method", "mixdq", "--bits", "W4A8", "-O", "allocation={bin.yaml}"], "bin.yaml is not UTF-8"),
    ("unknown metric option", ["--metrics", "psnr", "-M", "foo=1"], "unknown metric option 'foo'"),
    ("inapplicable metric option", ["--metrics", "psnr", "-M", "fid_protocol=clean"], "applies to fid, fid-fp"),
    ("bad metric option value", ["--metrics", "clip", "-M", "standin=maybe"], "standin must be true or false"),
    ("unknown clip model", ["--metrics", "clip", "-M", "clip_model=ViT-Q-99"], "unknown open_clip model"),
    ("guidance ignored", ["--guidance", "3.5"], "ignores guidance"),
    ("guidance negative", ["--model", "toy-lcm", "--guidance", "-1"], "guidance must be a finite number >= 0"),
    ("guidance nan", ["--model", "toy-lcm", "--guidance", "nan"], "guidance must be a finite number >= 0"),
    ("prompts dir", ["--prompts", "{promptdir}"], "is a folder"),
    ("prompts empty", ["--prompts", "{empty.txt}"], "is empty"),
    ("prompts binary", ["--prompts", "{binary.txt}"], "binary"),
    ("prompts latin1", ["--prompts", "{latin1.txt}"], "not UTF-8"),
    ("prompts list caption", ["--prompts", "{listcap.json}"], "must be a string"),
    ("toy-acc on coco", ["--model", "toy-lcm", "--prompts", "coco2017:2", "--metrics", "toy-acc"], "toy-acc needs toy-world prompts"),
    ("fd-toyclip one image", ["--prompts", "toy:1", "--metrics", "fd-toyclip"], "at least 2 prompts"),
    ("calib typo", ["--method", "naive", "--bits", "W8A8", "-O", "a_static=true", "-O", "a_granularity=tensor", "--calib-prompts", "toy-calb:8"], "did you mean 'toy-calib'"),
    ("calib overlap", ["--method", "naive", "--bits", "W8A8", "-O", "a_static=true", "-O", "a_granularity=tensor", "--calib-prompts", "toy:8"], "also evaluation prompts"),
    ("calib for fp", ["--calib-prompts", "toy-calib:4"], "does not calibrate"),
    ("db not a database", ["--db", "{notadb.sqlite}"], "not a qbench results database"),
    ("unknown bits", ["--method", "naive", "--bits", "W9A8"], "weight bits"),
    ("group_size on per-channel weights", ["--method", "naive", "--bits", "W8A8", "-O", "group_size=64"], "applies to per-group weights"),
    ("a_calib without a_static", ["--method", "naive", "--bits", "W4A8", "-O", "a_calib=percentile"], "static activations only"),
    ("include matches nothing", ["--method", "naive", "--bits", "W4A8", "-O", "include=nomatch*"], "no denoiser layer would be quantized"),
    ("override of a missing layer", ["--method", "naive", "--bits", "W4A8", "-O", "layers={\"nope.layer\": 8}"], "not a module of the model"),
    ("inception weights not a state dict", ["--metrics", "fid-fp", "--inception-weights", "{notadb.sqlite}"], "refused by torch.load(weights_only=True)"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_before_anything_loads(tmp_path, capsys, case):
    _, argv, needle = case
    files = _files(tmp_path)
    out_dir = tmp_path / "out"
    def fill(a):
        a = a.replace("@toy-flux", _weights("toy-flux"))
        for name, path in files.items():
            a = a.replace("{" + name + "}", path)
        return a

    argv = [fill(a) for a in argv]
    model = [] if "--model" in argv else ["--model", "toy-flux"]  # a repeated --model would be a sweep
    full = ["run", *model, *TOY, "--out-dir", str(out_dir), *argv]
    before = {k: open(v, "rb").read() for k, v in files.items() if os.path.isfile(v)}
    try:
        code = main(full)
    except SystemExit as e:  # argparse
        code = e.code
    _, err = capsys.readouterr()
    lines = [x for x in err.strip().splitlines() if x.strip()]
    assert code != 0, err
    assert len(lines) == 1 and lines[0].startswith("qbench: error:"), err
    assert needle in lines[0], lines[0]
    assert "Traceback" not in err
    assert not (out_dir / "qbench.sqlite").exists(), "refused before anything was stored"
    assert {k: open(v, "rb").read() for k, v in files.items() if os.path.isfile(v)} == before, "inputs untouched"


def test_several_problems_are_reported_together(tmp_path, capsys):
    """Offline without weights: every missing file in one go, before anything loads."""
    code = main(["run", "--model", "flux-schnell", "--method", "qsched", "--out-dir", str(tmp_path), "--metrics", "clip,clipiqa,fid-fp",
                 "--prompts", "coco2017:2", "--no-progress"])
    _, err = capsys.readouterr()
    assert code != 0 and "Traceback" not in err
    assert "problems, nothing was loaded or generated" in err
    for needle in ("black-forest-labs/FLUX.1-schnell", "clip_pretrained", "clipiqa_backbone", "inception"):
        assert needle in err, err
    assert not (tmp_path / "qbench.sqlite").exists()


def test_include_matching_nothing_is_refused_before_generation(tmp_path, capsys):
    code = main(["run", "--model", "toy-flux", *TOY, "--out-dir", str(tmp_path), "--method", "naive", "--bits", "W4A8", "-O", "include=nomatch*"])
    _, err = capsys.readouterr()
    assert code != 0 and "no denoiser layer would be quantized" in err and "Traceback" not in err
    assert not (tmp_path / "qbench.sqlite").exists(), "refused by the preflight: nothing stored"
    assert not list((tmp_path / "images").rglob("*.png")) if (tmp_path / "images").exists() else True


def test_every_config_problem_is_listed_at_once(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    code = main(["run", "--model", "nosuch", "--method", "nive", "--steps", "0", "--prompts", str(empty), "--out-dir", str(tmp_path), "--dry-run"])
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err and "4 problems" in err
    for needle in ("steps must be >= 1", "unknown model 'nosuch'", "did you mean 'naive'", "is empty"):
        assert needle in err, err
    code = main(["run", "--model", "toy-flux", "--method", "naive", "--bits", "W4A8", "-O", "foo=1", "--device", "cuda", "--dtype", "float8",
                 "--out-dir", str(tmp_path), "--dry-run"])
    err = capsys.readouterr().err
    # the dtype is decided by the arguments alone: refused before torch loads (qbench.cli_checks);
    # the option and the device need the method's declarations and torch: the preflight lists both
    assert code == 2 and err.count("\n") == 1 and "unsupported dtype" in err, err
    code = main(["run", "--model", "toy-flux", "--method", "naive", "--bits", "W4A8", "-O", "foo=1", "--device", "cuda",
                 "--out-dir", str(tmp_path), "--dry-run"])
    err = capsys.readouterr().err
    assert code != 0 and "2 problems" in err and "option 'foo'" in err and "CUDA is not available" in err


def test_calibrate_lists_every_missing_file_at_once(tmp_path, capsys):
    code = main(["calibrate", "--method", "qsched", "--model", "flux-schnell", "--out-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code != 0 and "3 problems" in err and "FLUX.1-schnell" in err and "clip_pretrained" in err and "clipiqa_backbone" in err
    assert main(["calibrate"]) != 0 and "needs --method" in capsys.readouterr().err


def test_a_byte_order_mark_is_not_part_of_the_first_prompt(tmp_path):
    from qbench.prompts import load_prompts

    (tmp_path / "b.txt").write_bytes("\ufeffa red circle\r\nblue square\r\n".encode("utf-8"))
    (tmp_path / "b.csv").write_bytes("\ufeffcaption\nhello\n".encode("utf-8"))
    assert [p.text for p in load_prompts(str(tmp_path / "b.txt"))] == ["a red circle", "blue square"]
    assert [p.text for p in load_prompts(str(tmp_path / "b.csv"))] == ["hello"]


def test_empty_rows_keep_the_seeds_of_later_rows(tmp_path):
    from qbench.prompts import load_prompts

    f = tmp_path / "p.csv"
    f.write_text("caption\nfirst\n\"\"\nthird\n")
    p = load_prompts(str(f))
    assert [(x.text, x.index) for x in p] == [("first", 0), ("third", 2)]
    j = tmp_path / "p.jsonl"
    j.write_text('{"caption": "a"}\n{"caption": ""}\n{"caption": null}\n{"caption": "d"}\n')
    assert [x.index for x in load_prompts(str(j))] == [0, 3]


def test_dry_run_stores_nothing_and_counts_cached(tmp_path, capsys):
    argv = ["run", "--model", "toy-flux", *TOY, "--out-dir", str(tmp_path), "--method", "naive", "--bits", "W8A8", "--metrics", "psnr"]
    assert main(argv + ["--dry-run", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["cached"] == {"images": 0, "fp_references": 0} and plan["n_prompts"] == 2
    assert not (tmp_path / "qbench.sqlite").exists() and not (tmp_path / "images").exists()
    assert main(argv) == 0
    capsys.readouterr()
    assert main(argv + ["--dry-run", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["cached"] == {"images": 2, "fp_references": 2}
