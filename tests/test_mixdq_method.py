"""The ``mixdq`` method end to end on tiny twins and toy-flux (CPU, offline; few layers and prompts
so each run takes seconds): calibrate -> stored allocation -> run, the YAML round trip through
``naive -O layers=FILE``, kernel mode with mixed widths, resumable sensitivity, Q-Sched on top,
one-line errors."""
from __future__ import annotations

import csv
import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from qbench.cli import main

# a few layers of each group keep the tests fast: cross-attention keys (content, BOS-fed: 4) and the
# mid block's time projections (quality: 2)
LCM_LAYERS = "*attn2.to_k,mid_block.resnets.*.time_emb_proj"
FAST = {"include": LCM_LAYERS, "k_sweep": "1", "b_sweep": "4", "w_candidates": "2,4,8", "a_candidates": "8"}
COMMON = ["--prompts", "coco2017:2", "--calib-prompts", "coco2017-calib:2", "--batch-size", "2", "--metrics", "psnr",
          "--latency-repeats", "1", "--latency-warmup", "0", "--no-progress"]


def _opts(**extra):
    out = []
    for k, v in {**FAST, **extra}.items():
        out += ["-O", f"{k}={v}"]
    return out


def _run(capsys, argv):
    code = main(argv + ["--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out), err


def _images(result):
    return [np.asarray(Image.open(os.path.join(result["images_dir"], f))) for f in sorted(os.listdir(result["images_dir"])) if f.endswith(".png")]


def test_calibrate_then_run_tiny_lcm_and_yaml_round_trip(tmp_path, capsys):
    out = str(tmp_path)
    base = ["--model", "tiny-lcm", "--bits", "W4A8", "--out-dir", out, *COMMON]
    # qbench calibrate: sensitivity + allocation, YAML + JSON written
    assert main(["calibrate", "--method", "mixdq", *base[:-1], *_opts()]) == 0
    cal = json.loads(capsys.readouterr().out)
    assert abs(cal["mean_w"] - 4.0) <= 0.02 + 1e-9 and cal["mean_a"] == 8.0
    # 4 content layers x (W2, W4, W8, A8) + 2 quality layers x (W4, W8, A8): rule=mixdq gives a quality layer no W2
    assert cal["counts"]["configs"] == 4 * 4 + 2 * 3 and cal["counts"]["content"] == 4 and cal["counts"]["layers"] == 6
    with open(cal["yaml"]) as f:
        yaml_text = f.read()
    assert "attn2.to_k: " in yaml_text and yaml_text.startswith("# MixDQ allocation")
    # qbench run: the stored allocation (no calibration), with the BOS path on the cross-attention keys
    r, err = _run(capsys, ["run", "--method", "mixdq", *base, *_opts()])
    rep = r["method_report"]
    assert rep["allocation_origin"] == "stored" and "using stored allocation" in err
    assert r["method"]["allocation"]["sha"] and abs(rep["mean_w"] - 4.0) <= 0.02 + 1e-9 and rep["layers_quantized"] == 6
    by_layer = r["effective_bits"]["by_layer"]  # the other Linear layers stay 16-bit (include)
    assert sum(v["w"] < 16 for v in by_layer.values()) == 6
    ts = rep["text_stream"]
    assert ts["rule"] == "bos" and ts["prompt_independent"] and len(ts["wrapped"]) == 4 and ts["bos_misses"] == 0 and ts["bos_hits"] > 0
    # the YAML without the BOS path, in mixdq and in naive: the same bit map and the same pixels
    plain = [a for a in base if a not in ("--calib-prompts", "coco2017-calib:2")]  # nothing calibrates
    m, _ = _run(capsys, ["run", "--method", "mixdq", *plain, "-O", f"allocation={cal['yaml']}", "-O", "bos=false", "-O", f"include={LCM_LAYERS}"])
    n, _ = _run(capsys, ["run", "--method", "naive", *plain, "-O", f"layers={cal['yaml']}", "-O", f"include={LCM_LAYERS}"])
    assert m["method_report"]["allocation_origin"] == "option" and m["method"]["allocation"]["sha"] == r["method"]["allocation"]["sha"]
    assert n["effective_bits"]["by_layer"] == m["effective_bits"]["by_layer"] == r["effective_bits"]["by_layer"]
    assert all(np.array_equal(a, b) for a, b in zip(_images(n), _images(m)))
    assert m["images_dir"] != r["images_dir"]  # describe() carries the BOS setting: another image folder
    # a given allocation is its own configuration: the label names its sha, the sweep options are not in it
    sha8 = m["method"]["allocation"]["sha"][:8]
    assert m["label"] == f"mixdq W4A8 simulate alloc={sha8}" and r["label"] == "mixdq W4A8 simulate"
    assert "k_sweep" not in m["method"]["options"] and r["method"]["options"]["k_sweep"] == 1 and "bos" in m["method"]["options"]
    assert main(["compare", "--out-dir", out, "--model", "tiny-lcm", "--csv", "-"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    confs = sorted(row["configuration"] for row in rows if row["method"] == "mixdq")
    assert confs == ["mixdq W4A8 sim", f"mixdq W4A8 sim alloc={sha8}"], confs


def test_kernel_mode_runs_each_layer_at_its_width(tmp_path, capsys):
    """A hand-written allocation (2/4/8-bit layers) in kernel mode: each layer stores its own packed
    codes, and the reported size is the sum of what the layers store."""
    import torch
    from qbench.methods.mixdq import MixDQ

    from qbench.config import RunConfig
    from qbench.models.loader import load_model
    from qbench.quant.api import quant_layers, size_report
    from qbench.quant.bos import BOSAwareLinear

    alloc = tmp_path / "alloc.yaml"
    alloc.write_text("context_embedder: 8\nx_embedder: 4\nproj_out: 2\n"
                     "transformer_blocks.0.attn.to_q: {w: 4, a: 16}\nsingle_transformer_blocks.0.proj_mlp: 2\n")
    cfg = RunConfig(model="tiny-flux", method="mixdq", bits="W4A8", mode="kernel", out_dir=str(tmp_path),
                    method_options={"allocation": str(alloc), "include": "context_embedder,x_embedder,proj_out,transformer_blocks.0.attn.to_q,single_transformer_blocks.0.proj_mlp",
                                    "text_token_rule": "first"})
    m = MixDQ(cfg)
    assert m.calibration_prompts_n == 0 and m.calibration_cost(0) is None
    model = load_model("tiny-flux", device="cpu")
    m.prepare(model)
    m.calibrate(model, [])
    m.convert(model)
    q = dict(quant_layers(model.denoiser))
    assert {n: (l.spec.w_bits, l.spec.a_bits) for n, l in q.items()} == {
        "context_embedder": (8, 8), "x_embedder": (4, 8), "proj_out": (2, 8), "transformer_blocks.0.attn.to_q": (4, None),
        "single_transformer_blocks.0.proj_mlp": (2, 8)}
    for l in q.values():  # codes: 8 bits one per byte, 4 bits two, 2 bits four
        per = {8: 1, 4: 2, 2: 4}[l.spec.w_bits]
        assert l.qweight.numel() == l.n * l.kp // per
        assert l.packed_nbytes == l.stored_nbytes()
    assert isinstance(q["context_embedder"], BOSAwareLinear) and q["context_embedder"].rule == "first"
    rep = m.report()
    assert rep["kernel_path"] and rep["bits_by_layer_count"] == {"W8A8": 1, "W4A8": 1, "W2A8": 2, "W4A16": 1}
    assert "no prompt-independent BOS" in rep["text_stream"]["note"]
    size = size_report(model.denoiser)
    others = sum(t.numel() * 2 for mod in [model.denoiser] for t in list(mod.parameters()) + list(mod.buffers())
                 if not any(t is u for l in q.values() for u in list(l.parameters()) + list(l.buffers())))
    packed = sum(l.packed_nbytes - l.bias.numel() * l.bias.element_size() + 2 * l.bias.numel()
                 - sum(t.numel() * (t.element_size() - 2) for t in getattr(l, "extra_float_tensors", list)()) for l in q.values())
    assert size["deploy_bytes"] == others + packed
    with torch.inference_mode():
        img = model.generate(["a red cube"], [0])
    assert img[0].size == (64, 64)


def test_toy_flux_end_to_end_reports_the_t5_stream(tmp_path, capsys):
    layers = "context_embedder,*add_k_proj,single_transformer_blocks.0.*"
    r, err = _run(capsys, ["run", "--model", "toy-flux", "--method", "mixdq", "--bits", "W4A8", "--out-dir", str(tmp_path),
                           "--prompts", "toy:2", "--calib-prompts", "toy-calib:2", "--batch-size", "2", "--metrics", "psnr,toy-acc",
                           "--latency-repeats", "1", "--latency-warmup", "0", "--no-progress",
                           *_opts(include=layers, text_token_rule="outlier")])
    rep = r["method_report"]
    ts = rep["text_stream"]
    assert ts["layers"] == ["context_embedder"] and not ts["prompt_independent"] and ts["rule"] == "outlier"
    assert "bidirectional" in ts["note"] and rep["allocation_origin"] == "calibrated"
    assert abs(rep["mean_w"] - 4.0) <= 0.02 and r["metrics"]["psnr"]["value"] > 20
    assert "mixdq: sensitivity of 9 layers (4 content" in err and "denoiser passes" in err
    with open(rep["calibration"]["json"]) as f:
        cal = json.load(f)
    assert set(cal["sensitivity"]) == set(cal["allocation"]) and cal["sensitivity"]["context_embedder"]["group"] == "content"
    assert cal["sensitivity"]["single_transformer_blocks.0.norm.linear"]["group"] == "quality"


def test_sensitivity_resumes_after_a_kill_without_recomputing(tmp_path, monkeypatch):
    from qbench.methods import mixdq_calib
    from qbench.methods.mixdq import MixDQ

    from qbench.calibctx import CalibrationContext
    from qbench.config import RunConfig
    from qbench.models.loader import load_model
    from qbench.prompts import load_prompts

    cfg = RunConfig(model="tiny-lcm", method="mixdq", bits="W4A8", out_dir=str(tmp_path), batch_size=2, calib_prompts="coco2017-calib:2",
                    method_options=dict(FAST))
    model = load_model("tiny-lcm", device="cpu")
    prompts = load_prompts("coco2017-calib:2")
    calls = {"n": 0}

    class Killed(Exception):
        pass

    real = mixdq_calib.whole_image_ssim

    def ctx_with(limit):
        def counted(images, ps, refs=None):
            calls["n"] += 1
            if limit is not None and calls["n"] > limit:
                raise Killed
            return real(images, ps, refs)

        monkeypatch.setattr(mixdq_calib, "whole_image_ssim", counted)  # the SSIM scorer of the content layers
        return CalibrationContext.standalone(model, cfg, prompts, "mixdq")

    m = MixDQ(cfg)
    with pytest.raises(Killed):
        m.calibrate(model, prompts, ctx_with(5))  # killed during the 6th SSIM-scored config
    calls["n"] = 0
    m2 = MixDQ(cfg)
    m2.calibrate(model, prompts, ctx_with(None))
    c = m2.calib_info["counts"]
    n_content = 4 * 4  # attn2.to_k layers x (3 weight widths + 1 activation width)
    assert calls["n"] == n_content - 5  # only the SSIM configs not scored before the kill
    assert c["reused"] >= 5 and c["computed"] == c["configs"] - c["reused"]


def test_qsched_over_mixdq_on_a_tiny_twin(tmp_path, capsys):
    base_opts = json.dumps(FAST)
    r, _ = _run(capsys, ["run", "--model", "tiny-lcm", "--method", "qsched", "--bits", "W4A8", "--out-dir", str(tmp_path), *COMMON,
                         "-O", "base=mixdq", "-O", f"base_options={base_opts}", "-O", "search=grid", "-O", "grid_n=2", "-M", "standin=true"])
    rep = r["method_report"]
    assert r["label"].startswith("qsched/mixdq W4A8") and rep["base"]["allocation_origin"] == "calibrated"
    assert r["method"]["base"]["allocation"]["sha"] and rep["checkpoint_origin"] == "calibrated"
    assert abs(rep["base"]["mean_w"] - 4.0) <= 0.02 + 1e-9


def test_dry_run_prints_the_calibration_cost(tmp_path, capsys):
    assert main(["run", "--model", "tiny-lcm", "--method", "mixdq", "--bits", "W4A8", "--out-dir", str(tmp_path), *COMMON, "--dry-run", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    cal = plan["calibration"]
    # tiny-lcm: 24 content + 27 quality Linear layers + 33 Conv2d (quality: MixDQ quantizes convolutions), 5 widths for a
    # content layer, 4 for a quality one (no W2: rule=mixdq never gives it one), 2 prompts, 4 steps, batch 2; 100 + 1 sweep points
    assert cal["images"] == 2 * (1 + 24 * 5 + 101) and cal["forward_passes"] == ((27 + 33) * 4 + 1) * 4 and "cached scores are reused" in cal["what"]
    assert "24 content layers x 5 widths + 60 quality layers x 4" in cal["what"] and cal["sensitivity_denoiser_rows"] == ((27 + 33) * 4 + 1) * 2


BAD = [
    ([], "needs --bits"),
    (["--bits", "W4A8", "-O", "w_candidates=3,x"], "w_candidates must be a number or a list of numbers of bits"),
    (["--bits", "W4A8", "-O", "w_candidates=2.5"], "w_candidates must be"),
    (["--bits", "W8A8", "-O", "w_candidates=2,4"], "outside the candidate widths"),
    (["--bits", "W4A8", "-O", "k_sweep=-1"], "must be > 0"),
    (["--bits", "W4A8", "-O", "b_sweep=5"], "b_sweep values must lie in [2 (narrowest of w_candidates), W4 (--bits)], got 5: b_sweep lists weight budgets B in bits (b_sweep=2 means B = 2.0, not 2 points)"),
    (["--bits", "W3A8", "-O", "b_sweep=1,2.8"], "b_sweep values must lie in [2 (narrowest of w_candidates), W3 (--bits)], got 1:"),
    (["--bits", "W3A8", "-O", "w_candidates=4,8", "-O", "b_sweep=3"], "W3 lies outside the candidate widths"),
    (["--bits", "W4A8", "-O", "w_candidates=3,4,8", "-O", "b_sweep=2.5,4"], "must lie in [3 (narrowest of w_candidates), W4 (--bits)], got 2.5"),
    (["--bits", "W4A8", "-O", "act_alloc=some"], "act_alloc must be one of"),
    (["--bits", "W4A8", "-O", "bos=maybe"], "bos must be true or false"),
    (["--bits", "W4A8", "-O", "kswep=1"], "did you mean 'k_sweep'"),
    (["--bits", "W4A8", "-O", "allocation=/nonexistent.yaml"], "does not exist"),
    (["--bits", "W4A16", "-O", "a_fp16=2"], "weight-only"),
    (["--bits", "W4A8", "-O", "tolerance=-1"], "tolerance must be >= 0"),
]


@pytest.mark.parametrize("argv,needle", BAD, ids=[b[1][:24] for b in BAD])
def test_bad_options_are_one_line(tmp_path, capsys, argv, needle):
    code = main(["run", "--model", "toy-flux", "--method", "mixdq", "--prompts", "toy:2", "--out-dir", str(tmp_path), "--no-progress", *argv])
    _, err = capsys.readouterr()
    lines = [x for x in err.strip().splitlines() if x.strip()]
    assert code != 0 and len(lines) == 1 and lines[0].startswith("qbench: error:") and needle in lines[0], err
    assert not (tmp_path / "qbench.sqlite").exists()


def _header_yaml(tmp_path, model, bits, name="alloc.yaml"):
    p = tmp_path / name
    p.write_text(f"# MixDQ allocation (qbench mixdq) for {model} --bits {bits}: mean W2.011 A8.000 over 2 Linear layers\n"
                 "# chosen split: B=2.000 k=1.000\ncontext_embedder: 2\nproj_out: 4\n")
    return str(p)


@pytest.mark.parametrize("model,bits,needle", [
    ("toy-flux", "W3A8", "was made for toy-flux --bits W3A8 (its header), this run is toy-flux --bits W4A8: pass --bits W3A8, or calibrate"),
    ("tiny-lcm", "W4A8", "was made for tiny-lcm --bits W4A8 (its header), this run is toy-flux --bits W4A8: pass --model tiny-lcm --bits W4A8"),
])
def test_allocation_made_for_other_bits_or_model_is_refused(tmp_path, capsys, model, bits, needle):
    path = _header_yaml(tmp_path, model, bits)
    code = main(["run", "--model", "toy-flux", "--method", "mixdq", "--bits", "W4A8", "--prompts", "toy:2", "--out-dir", str(tmp_path / "o"),
                 "--no-progress", "-O", f"allocation={path}"])
    _, err = capsys.readouterr()
    lines = [x for x in err.strip().splitlines() if x.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("qbench: error:") and needle in lines[0], err


def test_naive_layers_file_made_for_another_model_is_refused(tmp_path, capsys):
    path = _header_yaml(tmp_path, "tiny-lcm", "W4A8")
    code = main(["run", "--model", "toy-flux", "--method", "naive", "--bits", "W4A8", "--prompts", "toy:2", "--out-dir", str(tmp_path / "o"),
                 "--no-progress", "-O", f"layers={path}"])
    _, err = capsys.readouterr()
    lines = [x for x in err.strip().splitlines() if x.strip()]
    assert code == 2 and len(lines) == 1 and "was made for tiny-lcm (its header), this run is toy-flux" in lines[0], err


def test_allocation_header_is_parsed_and_headerless_files_pass(tmp_path):
    from qbench.methods.mixdq_alloc import check_made_for

    from qbench.quant.spec import BitSpec, made_for

    assert made_for(_header_yaml(tmp_path, "toy-flux", "W3A8")) == ("toy-flux", "W3A8")
    check_made_for(_header_yaml(tmp_path, "toy-flux", "W3A8"), "toy-flux", BitSpec(3, 8))  # same model and bits: accepted
    plain = tmp_path / "public.yaml"  # MixDQ's public YAMLs have no header
    plain.write_text("# weight bit-widths\ncontext_embedder: 2\n")
    assert made_for(str(plain)) is None
    check_made_for(str(plain), "toy-flux", BitSpec(4, 8))


def test_allocation_layer_names_are_checked_before_anything_loads(tmp_path, capsys):
    """A wrong layer name is found by the preflight (denoiser on the meta device), listed with the
    run's other problems, before the model loads or any reference image is generated."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("context_embedder: 4\ntransformer_blocks.0.attn.to_qq: 2\nnope.layer: 8\n")
    code = main(["run", "--model", "toy-flux", "--method", "mixdq", "--bits", "W4A8", "--prompts", "toy:2", "--out-dir", str(tmp_path / "o"),
                 "--no-progress", "--metrics", "psnr", "-M", "foo=1", "-O", f"allocation={bad}"])
    _, err = capsys.readouterr()
    assert code != 0 and "Traceback" not in err and "problems, nothing was loaded or generated" in err, err
    assert "names 2 layer(s) that are not modules of toy-flux's denoiser (FluxTransformer2DModel): nope.layer, transformer_blocks.0.attn.to_qq" in err, err
    assert "did you mean 'transformer_blocks.0.attn.to_q' for 'transformer_blocks.0.attn.to_qq'" in err and "unknown metric option 'foo'" in err
    assert not (tmp_path / "o" / "qbench.sqlite").exists()


def test_cost_estimate_and_progress_line_count_the_same_work(tmp_path, capsys):
    """tiny-lcm with FAST: 4 content layers x 4 widths (W2, W4, W8, A8) + 2 quality layers x 3 (W4,
    W8, A8: rule=mixdq gives a quality layer no W2, so none is measured), 2 prompts in one batch of 4
    steps, 1 + 1 sweep points: 2 reference + 4*4*2 sensitivity + at most 2*2 allocation images = 38;
    2*3 quality configs x 4 steps x 1 batch = 24 denoiser passes + 4 that record the prefix outputs
    = 28, in both lines."""
    from qbench.methods.mixdq_cost import work

    assert work(2, 32, 8, 4, 1, 2, record=True)["forward_passes"] == 36
    assert work(2, 32, 0, 4, 1, 2, record=True)["forward_passes"] == 4  # content only: the first steps still record
    assert work(2, 32, 8, 4, 1, 2) | {"what": ""} == {"images": 38, "reference_images": 2, "sensitivity_images": 32, "allocation_images_max": 4,
                                                      "forward_passes": 32, "sensitivity_denoiser_rows": 16, "what": ""}
    assert main(["calibrate", "--method", "mixdq", "--model", "tiny-lcm", "--bits", "W4A8", "--out-dir", str(tmp_path), *COMMON[:-1], *_opts()]) == 0
    out, err = capsys.readouterr()
    est = [x for x in err.splitlines() if "mixdq: calibrating on" in x]
    todo = [x for x in err.splitlines() if "to compute at most" in x]
    assert len(est) == 1 and len(todo) == 1, err
    for line in est + todo:
        assert "38 images, 28 denoiser passes" in line and "2 full-precision reference + 32 sensitivity images" in line and "at most 4 allocation images" in line, line
        assert "28 denoiser passes = 6 quality-layer configs x 4 steps x 1 batch(es) (output SQNR, no images) + 4 passes recording the FP prefix" in line, line
    counts = json.loads(out)["counts"]  # what was done: the estimate's sensitivity images and passes (references come from the capture pass)
    assert counts["forward_passes"] == 28 and counts["images_generated"] - counts["allocation_images"] == 32, counts
    # every content config's first step (one batch) took its units before the perturbed one from the record
    assert counts["prefix_served_calls"] == 4 * 4, counts


def test_sweep_option_help_says_they_are_values_not_counts():
    from qbench.methods.mixdq import MixDQ

    helps = {o.name: o.help for o in MixDQ.OPTIONS}
    assert "b_sweep=2 means B = 2.0 bits, not 2 points" in helps["b_sweep"] and "[narrowest candidate, W]" in helps["b_sweep"]
    assert "k_sweep=1 means k = 1.0, not 1 point" in helps["k_sweep"]


def test_b_sweep_below_mixdqs_range_is_said(tmp_path, capsys):
    """b_sweep=2 under W4A8 is a budget of 2 bits, not 2 points: MixDQ's rule (quality layers >= 4
    bits) cannot reach it and refuses in one line; the loose search can (every layer at the
    narrowest candidate), and the calibration says the mean will be about that, under a W4 label."""
    argv = ["calibrate", "--method", "mixdq", "--model", "tiny-lcm", "--bits", "W4A8", "--out-dir", str(tmp_path), *COMMON[:-1]]
    assert main(argv + _opts(b_sweep="2")) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "W4 is infeasible on tiny-lcm under MixDQ's allocation rule" in err and "-O rule=loose" in err, err
    assert main(argv + _opts(b_sweep="2", rule="loose")) == 0
    out, err = capsys.readouterr()
    assert "b_sweep budgets 2 lie below MixDQ's range [W4 - 0.3, W4]: the allocation's mean weight bits will be about that, under a W4 label" in err, err
    assert abs(json.loads(out)["mean_w"] - 2.0) <= 0.02 + 1e-9


def test_plan_counts_the_sensitivity_pass_of_a_hub_model(tmp_path):
    """`qbench plan` counts MixDQ's per-layer sensitivity on a real model before any download (its
    layer census from the public config on the meta device): the content-layer images and the
    output-SQNR replays as denoiser forwards, and refuses a budget MixDQ's rule cannot reach."""
    from qbench.costs import image_flops, plan_sweep
    from qbench.errors import QBenchError
    from qbench.models.loader import get_spec
    from qbench.sweep import load_sweep

    p = tmp_path / "s.yaml"
    p.write_text("models: [sdxl-turbo]\nmethods: [{method: mixdq, bits: [W4A8]}]\nrun: {prompts: coco2017:10, metrics: [psnr]}\n")
    cell = next(c for c in plan_sweep(load_sweep(str(p)))["cells"] if c["method"].startswith("mixdq"))
    cost = image_flops(get_spec("sdxl-turbo"))
    assert cell["calibration_images"] > 32 * 5  # 32 FP references + content layers x widths x 32 (+ allocations)
    assert cell["calibration_forwards"] > 0 and cell["calibration_forwards"] % (32 * cost["forwards"]) == 0
    want = (cell["images"] + cell["calibration_images"]) * cost["per_image"] + cell["calibration_forwards"] * cost["denoiser_forward"]
    assert cell["pflops"] == pytest.approx(want / 1e15)
    p.write_text("models: [sdxl-turbo]\nmethods: [{method: mixdq, bits: [W2A8], options: {b_sweep: 2}}]\nrun: {prompts: coco2017:10, metrics: [psnr]}\n")
    with pytest.raises(QBenchError, match="infeasible on sdxl-turbo under MixDQ's allocation rule"):
        plan_sweep(load_sweep(str(p)))
