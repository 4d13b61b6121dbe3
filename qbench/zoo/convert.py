"""Convert the toy CLIP's open_clip text tower into a ``transformers.CLIPTextModel``.

The two implementations compute the same function (pre-LN transformer, erf GELU, causal mask,
final LayerNorm, pooling at the first end-of-text token = open_clip's argmax pooling because
``<|endoftext|>`` is the largest id); ``tests/test_zoo_clip.py`` checks the outputs match.
"""
from __future__ import annotations

import os


def load_toy_clip(clip_dir: str, device: str = "cpu"):
    """(model, preprocess, tokenizer) of an open_clip ``local-dir:`` folder, in eval mode."""
    import open_clip

    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{os.path.abspath(clip_dir)}", device=device)
    tok = open_clip.get_tokenizer(f"local-dir:{os.path.abspath(clip_dir)}")
    return model.eval(), preprocess, tok


def text_tower_to_hf(clip_model, vocab_size: int, bos_id: int, eos_id: int):
    """A ``CLIPTextModel`` with the weights of ``clip_model``'s text tower (open_clip CLIP)."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    sd = {k: v for k, v in clip_model.state_dict().items() if not k.startswith("visual.")}
    width = sd["token_embedding.weight"].shape[1]
    ctx = sd["positional_embedding"].shape[0]
    layers = len({k.split(".")[2] for k in sd if k.startswith("transformer.resblocks.")})
    mlp = sd["transformer.resblocks.0.mlp.c_fc.weight"].shape[0]
    heads = clip_model.transformer.resblocks[0].attn.num_heads
    cfg = CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=width, intermediate_size=mlp, num_hidden_layers=layers,
        num_attention_heads=heads, max_position_embeddings=ctx, hidden_act="gelu", layer_norm_eps=1e-5,
        bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=eos_id, projection_dim=sd["text_projection"].shape[1],
    )
    hf = CLIPTextModel(cfg)
    new = {
        "text_model.embeddings.token_embedding.weight": sd["token_embedding.weight"],
        "text_model.embeddings.position_embedding.weight": sd["positional_embedding"],
        "text_model.final_layer_norm.weight": sd["ln_final.weight"],
        "text_model.final_layer_norm.bias": sd["ln_final.bias"],
    }
    for i in range(layers):
        p, q = f"transformer.resblocks.{i}.", f"text_model.encoder.layers.{i}."
        w, b = sd[p + "attn.in_proj_weight"], sd[p + "attn.in_proj_bias"]
        for j, n in enumerate(("q_proj", "k_proj", "v_proj")):
            new[q + f"self_attn.{n}.weight"] = w[j * width : (j + 1) * width]
            new[q + f"self_attn.{n}.bias"] = b[j * width : (j + 1) * width]
        new[q + "self_attn.out_proj.weight"] = sd[p + "attn.out_proj.weight"]
        new[q + "self_attn.out_proj.bias"] = sd[p + "attn.out_proj.bias"]
        for a, c in (("ln_1", "layer_norm1"), ("ln_2", "layer_norm2")):
            new[q + c + ".weight"] = sd[p + a + ".weight"]
            new[q + c + ".bias"] = sd[p + a + ".bias"]
        new[q + "mlp.fc1.weight"] = sd[p + "mlp.c_fc.weight"]
        new[q + "mlp.fc1.bias"] = sd[p + "mlp.c_fc.bias"]
        new[q + "mlp.fc2.weight"] = sd[p + "mlp.c_proj.weight"]
        new[q + "mlp.fc2.bias"] = sd[p + "mlp.c_proj.bias"]
    own = set(hf.state_dict())
    if not any(k.startswith("text_model.") for k in own):  # transformers 5 flattened the prefix
        new = {k.removeprefix("text_model."): v for k, v in new.items()}
    missing, unexpected = hf.load_state_dict({k: v.float() for k, v in new.items()}, strict=False)
    missing = [m for m in missing if "position_ids" not in m]
    if missing or unexpected:
        raise RuntimeError(f"text tower conversion: missing {missing}, unexpected {unexpected}")
    return hf.eval().to(torch.float32)
