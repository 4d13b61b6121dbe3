"""Prompts longer than a text encoder's token limit are counted per run, not cut silently."""
from __future__ import annotations

import pytest

from qbench.models.truncation import hf_token_counts, prompt_truncation

SHORT = "a red cube on a table"
LONG = "a photo of " + ", ".join(f"a {c} cube next to a {c} sphere" for c in ["red", "green", "blue", "yellow", "white", "black"] * 3)


@pytest.mark.parametrize("name, expected", [
    ("tiny-lcm", {"tokenizer": 77}),
    ("tiny-sdxl-turbo", {"tokenizer": 77, "tokenizer_2": 77}),
    ("tiny-flux", {"tokenizer": 77, "tokenizer_2": 32}),  # tokenizer_2 feeds Flux's T5: max_sequence_length=32
])
def test_long_prompt_is_counted_per_tokenizer(tiny_model, name, expected):
    m = tiny_model(name)
    rep = prompt_truncation(m.pipe, [SHORT, LONG, SHORT], m.spec.call_kwargs)
    assert {k: v["limit"] for k, v in rep.items()} == expected
    for attr, r in rep.items():
        n_long = hf_token_counts(getattr(m.pipe, attr), [LONG])[0]
        assert n_long > 100  # far past every limit
        assert r == {"limit": expected[attr], "limit_from": r["limit_from"], "n_prompts": 3, "n_truncated": 1, "max_tokens": n_long}
    assert prompt_truncation(m.pipe, [SHORT], m.spec.call_kwargs)["tokenizer"]["n_truncated"] == 0
    if name == "tiny-flux":
        assert rep["tokenizer_2"]["limit_from"] == "max_sequence_length (model spec call_kwargs)"
        assert prompt_truncation(m.pipe, [LONG])["tokenizer_2"]["limit"] == 512  # FluxPipeline's default


def test_the_limits_are_the_ones_the_pipeline_applies(tiny_model):
    """Flux's encode_prompt: T5 embeddings have exactly the reported number of positions, and
    words appended past either limit change neither the T5 nor the pooled CLIP embedding."""
    import torch

    m = tiny_model("tiny-flux")
    rep = prompt_truncation(m.pipe, [LONG], m.spec.call_kwargs)
    kw = dict(device="cpu", max_sequence_length=m.spec.call_kwargs["max_sequence_length"])
    with torch.inference_mode():
        t5, pooled, _ = m.pipe.encode_prompt(LONG, LONG, **kw)
        t5_more, pooled_more, _ = m.pipe.encode_prompt(LONG + " and a tree", LONG + " and a tree", **kw)
        t5_short, pooled_short, _ = m.pipe.encode_prompt(SHORT, SHORT, **kw)
        _, pooled_short_more, _ = m.pipe.encode_prompt(SHORT + " and a tree", SHORT, **kw)
    assert t5.shape[1] == rep["tokenizer_2"]["limit"]
    assert torch.equal(t5, t5_more) and torch.equal(pooled, pooled_more)  # the tail was cut
    assert not torch.equal(pooled_short, pooled_short_more) and not torch.equal(t5, t5_short)  # not a constant encoder


def test_run_records_truncation_and_the_clip_metric_counts_its_own(make_cfg, tmp_path):
    from qbench import harness

    prompts = tmp_path / "prompts.txt"
    prompts.write_text(f"{SHORT}\n{LONG}\n")
    cfg = make_cfg(model="tiny-lcm", prompts=str(prompts), metrics=["clip"], metric_options={"standin": True})
    res = harness.run(cfg, show_progress=False)
    assert res.prompt_truncation["tokenizer"]["n_truncated"] == 1 and res.prompt_truncation["tokenizer"]["limit"] == 77
    clip = res.metrics["clip"]["details"]["prompt_truncation"]
    assert clip["limit"] == 77 and clip["n_prompts"] == 2 and clip["n_truncated"] == 1 and clip["max_tokens"] > 100
    assert res.to_dict()["prompt_truncation"] == res.prompt_truncation  # stored with the run
