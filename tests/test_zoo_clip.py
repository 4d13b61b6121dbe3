"""The toy CLIP's text tower converts exactly into a transformers CLIPTextModel."""
from __future__ import annotations

import torch


def test_text_tower_conversion_matches_open_clip(tmp_path):
    import open_clip

    from qbench.toyworld.render import all_scenes, caption
    from qbench.zoo.convert import text_tower_to_hf
    from qbench.zoo.tokenizer import load_tokenizer
    from qbench.zoo.train_clip import write_model_dir

    torch.manual_seed(0)
    write_model_dir(str(tmp_path))
    model = open_clip.create_model(f"local-dir:{tmp_path}", load_weights=False).eval()
    with torch.no_grad():  # non-trivial LayerNorm parameters too
        for n, p in model.named_parameters():
            if "ln" in n:
                p.add_(0.1 * torch.randn_like(p))
    tok = load_tokenizer(str(tmp_path))
    hf = text_tower_to_hf(model, len(tok), tok.bos_token_id, tok.eos_token_id)
    texts = [caption(s, i) for i, s in enumerate(all_scenes()[:6])] + ["Bad photo."]
    ids = tok(texts, padding="max_length", max_length=32, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        ref = model.encode_text(ids)
        out = hf(ids).pooler_output @ model.text_projection
    assert torch.allclose(ref, out, atol=1e-5), (ref - out).abs().max()
