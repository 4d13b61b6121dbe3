"""HPSv2.1, PickScore, ImageReward: the real architectures with tiny random stand-in weights through
the real loading paths; weight-name maps against the published checkpoints' key lists; formulas."""
from __future__ import annotations

import re

import numpy as np
import prefmetric_fixtures as fx
import pytest
import torch

from qbench.api import MetricContext
from qbench.catalog import METRICS
from qbench.errors import MissingWeightsError, QBenchError
from qbench.metrics import standins

prompts = fx.prompts
images, standin_folder = fx.images, fx.standin_folder  # fixtures of this module

TEXTS = ["a red cube on a table", "two cats", "a blue circle", "a photo of a dog"]


def layer_pattern(keys):
    """Key names with layer indices replaced by N (stand-ins have fewer layers than the real nets)."""
    return {re.sub(r"\.\d+\.", ".N.", k) for k in keys}


def run_metric(name, options, images, texts=TEXTS):
    m = METRICS.get(name)(MetricContext(options=options))
    m.update(images[:2], prompts(texts[:2]))
    m.update(images[2:], prompts(texts[2:], 2))
    return m.compute()


# -- HPSv2.1 --------------------------------------------------------------------------------------------
def test_hps_metric_equals_the_reference_computation(images):
    import open_clip
    from torchvision import transforms as T

    cfg, weights = standins.hps_model()
    v = run_metric("hpsv2", {"hps_model": cfg, "hps_weights": weights}, images)
    assert v.details["meaningful"] is False and v.n == 4

    # the reference (hpsv2/img_score.py): strict load of checkpoint["state_dict"], HPSv2's val
    # transform (ToTensor, Resize, CenterCrop, Normalize), then image_features @ text_features.T
    open_clip.add_model_config(cfg)
    model = open_clip.create_model(cfg.rsplit("/", 1)[1][:-5]).eval()
    model.load_state_dict({k: v.float() for k, v in torch.load(weights, weights_only=True)["state_dict"].items()})
    tf = T.Compose([T.ToTensor(), T.Resize(224, interpolation=T.InterpolationMode.BICUBIC, antialias=True), T.CenterCrop(224),
                    T.Normalize((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))])
    with torch.no_grad():
        f_img = model.encode_image(torch.stack([tf(im) for im in images]), normalize=True)
        f_txt = model.encode_text(open_clip.get_tokenizer("ViT-H-14")(TEXTS), normalize=True)
    ref = 100 * torch.diagonal(f_img @ f_txt.T).numpy()
    np.testing.assert_allclose([v.per_image[f"p{i}"] for i in range(4)], ref, rtol=1e-5, atol=1e-4)
    assert v.value == pytest.approx(ref.mean(), abs=1e-4)


def test_hps_checkpoint_names_are_open_clip_vit_h_14():
    """HPSv2's img_score.py strict-loads checkpoint['state_dict'] into open_clip's ViT-H-14, so the
    published checkpoint's key list is that model's: the stand-in carries the same names."""
    import open_clip

    _, weights = standins.hps_model()
    with torch.device("meta"):
        real = open_clip.model.CLIP(**open_clip.get_model_config("ViT-H-14")).state_dict()
    state = torch.load(weights, weights_only=True)
    assert set(state) == {"state_dict"}
    assert layer_pattern(state["state_dict"]) == layer_pattern(real)
    assert real["visual.conv1.weight"].shape == (1280, 3, 14, 14) and real["text_projection"].shape == (1024, 1024)
    assert sum(k.startswith("visual.transformer.resblocks.") and k.endswith(".ln_1.weight") for k in real) == 32


def test_hps_offline_refusal_names_the_file_and_option(monkeypatch):
    from qbench.metrics.hpsv2 import HPSv2

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MissingWeightsError, match=r"HPS_v2\.1_compressed\.pt.*-M hps_weights=PATH") as e:
        HPSv2.preflight(MetricContext(options={}), [])
    assert "\n" not in str(e.value)


def test_hps_weights_of_another_architecture_are_one_line(tmp_path):
    from qbench.metrics.hpsv2 import HPSScorer

    cfg, _ = standins.hps_model()
    torch.save({"state_dict": {"visual.conv1.weight": torch.zeros(1)}}, tmp_path / "bad.pt")
    with pytest.raises(QBenchError, match="do not fit the architecture") as e:
        HPSScorer(MetricContext(options={"hps_model": cfg, "hps_weights": str(tmp_path / "bad.pt")}))
    assert "\n" not in str(e.value)


# -- PickScore -------------------------------------------------------------------------------------------
def test_pickscore_metric_equals_the_model_card_computation(images):
    from transformers import AutoModel, AutoProcessor

    model_dir, proc_dir = standins.pickscore_model()
    v = run_metric("pickscore", {"standin": True}, images)
    assert v.details["meaningful"] is False
    # the model card: logit_scale.exp() * (text_embs @ image_embs.T), each prompt with its image
    model, proc = AutoModel.from_pretrained(model_dir).eval(), AutoProcessor.from_pretrained(proc_dir)
    ref = []
    with torch.no_grad():
        for im, t in zip(images, TEXTS):
            i = model.get_image_features(**proc(images=[im], return_tensors="pt"))
            i = i if isinstance(i, torch.Tensor) else i.pooler_output
            x = model.get_text_features(**proc(text=[t], padding=True, truncation=True, max_length=77, return_tensors="pt"))
            x = x if isinstance(x, torch.Tensor) else x.pooler_output
            i, x = i / i.norm(dim=-1, keepdim=True), x / x.norm(dim=-1, keepdim=True)
            ref.append((model.logit_scale.exp() * (x @ i.T))[0, 0].item())
    np.testing.assert_allclose([v.per_image[f"p{i}"] for i in range(4)], ref, rtol=1e-5, atol=1e-4)


def test_pickscore_names_are_transformers_clip_vit_h_14():
    """PickScore_v1 is a transformers CLIPModel of CLIP-ViT-H-14's config (laion
    CLIP-ViT-H-14-laion2B-s32B-b79K config.json: vision 1280 wide x 32 layers, patch 14; text 1024 x
    24; projection 1024): its checkpoint names are that model's, which the stand-in shares."""
    from safetensors import safe_open
    from transformers import CLIPConfig, CLIPModel

    model_dir, _ = standins.pickscore_model()
    cfg = CLIPConfig(text_config={"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16},
                     vision_config={"hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32, "num_attention_heads": 16,
                                    "patch_size": 14, "image_size": 224}, projection_dim=1024)
    with torch.device("meta"):
        real = CLIPModel(cfg).state_dict()
    with safe_open(f"{model_dir}/model.safetensors", "pt") as f:
        assert layer_pattern(f.keys()) == layer_pattern(real)
    assert real["visual_projection.weight"].shape == (1024, 1280)


def test_pickscore_tokenizer_rebuilt_from_open_clip_matches_open_clip():
    import open_clip
    from transformers import AutoProcessor

    _, proc_dir = standins.pickscore_model()
    hf = AutoProcessor.from_pretrained(proc_dir).tokenizer
    oc = open_clip.get_tokenizer("ViT-H-14")
    for t in TEXTS + ["An Eniac computer, balanced on rocks!"]:
        ids = hf(t)["input_ids"]
        assert ids == oc([t])[0][: len(ids)].tolist()


def test_pickscore_offline_refusal(monkeypatch):
    from qbench.metrics.pickscore import PickScore

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(QBenchError, match=r"huggingface.co/yuvalkirstain/PickScore_v1 .*-M pickscore_model=FOLDER") as e:
        PickScore.preflight(MetricContext(options={}), [])
    assert "huggingface.co/laion/CLIP-ViT-H-14-laion2B-s32B-b79K" in str(e.value)  # both problems in one report
    with pytest.raises(QBenchError, match="folder not found: /nonexistent/pick"):
        PickScore.preflight(MetricContext(options={"pickscore_model": "/nonexistent/pick"}), [])


# -- ImageReward -----------------------------------------------------------------------------------------
def published_imagereward_keys(vision_layers=24, text_layers=12):
    """ImageReward.pt's names, written down from the public model code: ImageReward.py (``blip`` =
    BLIP_Pretrain, ``mlp.layers`` = nn.Sequential of 5 Linear + 3 Dropout), BLIP vit.py
    (VisionTransformer: patch_embed.proj, cls_token, pos_embed, blocks.i.{norm1, attn.qkv,
    attn.proj, norm2, mlp.fc1, mlp.fc2}, norm) and med.py (BertModel without pooler: embeddings
    with a position_ids buffer, layers with attention, crossattention, intermediate, output),
    plus BLIP_Pretrain's vision_proj / text_proj."""
    wb = ("weight", "bias")
    keys = ["blip.visual_encoder.cls_token", "blip.visual_encoder.pos_embed"]
    keys += [f"blip.visual_encoder.patch_embed.proj.{p}" for p in wb] + [f"blip.visual_encoder.norm.{p}" for p in wb]
    for i in range(vision_layers):
        keys += [f"blip.visual_encoder.blocks.{i}.{m}.{p}" for m in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2") for p in wb]
    t = "blip.text_encoder."
    keys += [t + "embeddings.word_embeddings.weight", t + "embeddings.position_embeddings.weight", t + "embeddings.position_ids"]
    keys += [t + f"embeddings.LayerNorm.{p}" for p in wb]
    for i in range(text_layers):
        for att in ("attention", "crossattention"):
            keys += [t + f"encoder.layer.{i}.{att}.self.{m}.{p}" for m in ("query", "key", "value") for p in wb]
            keys += [t + f"encoder.layer.{i}.{att}.output.{m}.{p}" for m in ("dense", "LayerNorm") for p in wb]
        keys += [t + f"encoder.layer.{i}.{m}.{p}" for m in ("intermediate.dense", "output.dense", "output.LayerNorm") for p in wb]
    keys += [f"blip.{m}.{p}" for m in ("vision_proj", "text_proj") for p in wb]
    keys += [f"mlp.layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in wb]
    return keys


def test_imagereward_name_map_covers_the_published_checkpoint():
    from qbench.metrics.blip import ImageRewardConfig, ImageRewardNet, map_checkpoint

    published = published_imagereward_keys()
    with torch.device("meta"):
        net = ImageRewardNet(ImageRewardConfig())
    model_keys = net.state_dict()
    mapped, unused, unknown = map_checkpoint(dict.fromkeys(published, None))
    assert unknown == []
    assert sorted(unused) == sorted(["blip.text_encoder.embeddings.position_ids", "blip.vision_proj.weight", "blip.vision_proj.bias",
                                     "blip.text_proj.weight", "blip.text_proj.bias"])
    assert set(mapped) == set(model_keys)  # every parameter comes from the checkpoint, none is left over
    shapes = {"vision.embeddings.position_embedding": (1, 197, 1024), "vision.encoder.layers.23.self_attn.qkv.weight": (3072, 1024),
              "text.encoder.layer.11.crossattention.self.key.weight": (768, 1024), "text.embeddings.word_embeddings.weight": (30524, 768),
              "mlp.0.weight": (1024, 768), "mlp.7.weight": (1, 16)}
    for k, shape in shapes.items():
        assert tuple(model_keys[k].shape) == shape, k


def test_imagereward_standin_checkpoint_has_the_published_names():
    from qbench.metrics.imagereward import read_config

    weights, _, cfg_path = standins.imagereward_model()
    cfg = read_config(cfg_path)
    state = torch.load(weights, weights_only=True)
    assert set(state) == set(published_imagereward_keys(cfg.vision_layers, cfg.text_layers))


def test_imagereward_metric_is_the_normalised_mlp_output(images):
    from qbench.metrics.blip import REWARD_MEAN, REWARD_STD, normalise_reward
    from qbench.metrics.imagereward import ImageRewardScorer, ir_preprocess

    v = run_metric("imagereward", {"standin": True}, images)
    assert v.details["meaningful"] is False and len(v.details["unused_checkpoint_names"]) == 5
    assert np.ptp(list(v.per_image.values())) > 1e-3 and v.stderr > 0  # the stand-in's rewards differ between images
    scorer = ImageRewardScorer(MetricContext(options={"standin": True}))
    net, tok = scorer.ir.net, scorer.ir.tokenizer
    t = tok(TEXTS, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
    assert t["input_ids"].shape == (4, 35) and (t["input_ids"][:, 0] == tok.cls_token_id).all()
    with torch.no_grad():
        raw = net.raw_reward(ir_preprocess(images, 224), t["input_ids"], t["attention_mask"]).numpy()
    np.testing.assert_allclose([v.per_image[f"p{i}"] for i in range(4)], (raw - REWARD_MEAN) / REWARD_STD, rtol=1e-5, atol=1e-5)
    assert normalise_reward(REWARD_MEAN + REWARD_STD) == pytest.approx(1.0)
    # the text encoder reads the image through cross-attention: another image, another [CLS] state
    with torch.no_grad():
        cls = [net.text(input_ids=t["input_ids"], attention_mask=t["attention_mask"], encoder_attention_mask=torch.ones(4, 197, dtype=torch.long),
                        encoder_hidden_states=net.vision(pixel_values=ir_preprocess(ims, 224)).last_hidden_state).last_hidden_state[:, 0]
               for ims in (images, images[::-1])]
    assert (cls[0] - cls[1]).abs().max() > 1e-3


def test_imagereward_refusals(monkeypatch, tmp_path):
    from qbench.metrics.imagereward import ImageReward, ImageRewardScorer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MissingWeightsError, match=r"THUDM/ImageReward/resolve/main/ImageReward\.pt.*-M imagereward_weights=PATH"):
        ImageReward.preflight(MetricContext(options={}), [])
    weights, tok, cfg = standins.imagereward_model()
    state = torch.load(weights, weights_only=True)
    state["blip.itm_head.weight"] = torch.zeros(2, 2)
    torch.save(state, tmp_path / "extra.pt")
    with pytest.raises(QBenchError, match="names of no known part"):
        ImageRewardScorer(MetricContext(options={"imagereward_weights": str(tmp_path / "extra.pt"), "imagereward_tokenizer": tok,
                                                 "imagereward_config": cfg}))


def test_preference_metrics_are_registered():
    names = set(METRICS.names())
    assert {"hpsv2", "pickscore", "imagereward", "jaq-hps"} <= names
