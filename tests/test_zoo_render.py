"""The toy world's renderer, caption grammar, splits, prompt sets and tokenizer."""
from __future__ import annotations

import numpy as np
import pytest

from qbench.toyworld.render import (ATTRIBUTES, DEGRADATIONS, N_WORDINGS, VALUES, Scene, all_scenes, caption, degrade,
                               random_scene, render, vocabulary)
from qbench.toyworld.splits import prompt_list, scenes, split_of


def test_render_is_deterministic_and_exact_size():
    s = random_scene(np.random.default_rng(0))
    a, b = np.asarray(render(s)), np.asarray(render(s))
    assert a.shape == (32, 32, 3) and a.dtype == np.uint8
    assert (a == b).all()
    assert not (a == np.asarray(render(s.changed("shape", np.random.default_rng(1))))).all()


def test_every_attribute_changes_the_image():
    base = Scene("white", "red", "small", "circle", "center")
    img = np.asarray(render(base), np.int32)
    for a in ATTRIBUTES:
        for v in VALUES[a]:
            if v != getattr(base, a):
                other = Scene(**{**{k: getattr(base, k) for k in ATTRIBUTES}, a: v})
                assert np.abs(np.asarray(render(other), np.int32) - img).sum() > 0, (a, v)


def test_captions_name_every_attribute():
    for s in all_scenes()[::7]:
        for w in range(N_WORDINGS):
            c = caption(s, w)
            assert s.colour in c and s.shape in c and s.background in c
    assert len({caption(all_scenes()[0], w) for w in range(N_WORDINGS)}) == N_WORDINGS
    with pytest.raises(ValueError):
        Scene("white", "pink", "small", "circle", "center")


def test_splits_partition_the_scenes():
    tr, ca, te = (set(s.key for s in scenes(x)) for x in ("train", "calib", "test"))
    assert len(tr) + len(ca) + len(te) == len(all_scenes()) == 324
    assert not (tr & ca) and not (tr & te) and not (ca & te)
    assert 0.12 < len(te) / 324 < 0.3 and len(ca) >= 25
    assert all(split_of(s) == "test" for s, _, _ in prompt_list("test"))
    # the first len(test scenes) prompts cover every test scene once
    first = [s.key for s, _, _ in prompt_list("test")[: len(te)]]
    assert set(first) == te


def test_prompt_sets_register_and_carry_scenes():
    from qbench.prompts import load_prompts

    ps = load_prompts("toy:10")
    assert len(ps) == 10 and len({p.id for p in ps}) == 10
    for p in ps:
        s = Scene.from_dict(p.meta["scene"])
        assert caption(s, p.meta["wording"]) == p.text and p.meta["split"] == "test"
    train_texts = {p.text for p in load_prompts("toy-train")}
    assert not train_texts & {p.text for p in load_prompts("toy")}
    assert not train_texts & {p.text for p in load_prompts("toy-calib")}


def test_degradations_change_images():
    img = render(Scene("gray", "blue", "large", "square", "left"))
    for kind in DEGRADATIONS:
        d = degrade(img, kind, np.random.default_rng(0), 1.0)
        assert d.size == img.size and np.abs(np.asarray(d, np.int32) - np.asarray(img, np.int32)).mean() > 3, kind


def test_tokenizer_hf_and_open_clip_agree(tmp_path):
    import open_clip

    from qbench.zoo.tokenizer import EOS, load_tokenizer, write_tokenizer

    write_tokenizer(str(tmp_path))
    hf = load_tokenizer(str(tmp_path))
    assert hf.convert_tokens_to_ids(EOS) == len(hf) - 1  # argmax pooling needs EOT = largest id
    for w in vocabulary():
        assert len(hf.tokenize(w)) == 1, w  # every grammar word is one token
    oc = open_clip.tokenizer.HFTokenizer(str(tmp_path), context_length=32)
    texts = [caption(s, 3) for s in all_scenes()[:20]] + ["Good photo.", "an unknown zebra!"]
    a = oc(texts)
    b = hf(texts, padding="max_length", max_length=32, truncation=True, return_tensors="pt").input_ids
    assert (a == b).all()


def test_training_batches_are_functions_of_seed_and_step():
    from qbench.zoo.train_clip import make_batch
    from qbench.zoo.train_denoiser import batch
    from qbench.zoo.train_vae import train_batch

    assert (train_batch(0, 3, 4) == train_batch(0, 3, 4)).all() and not (train_batch(0, 3, 4) == train_batch(0, 4, 4)).all()
    a, b = make_batch(0, 7, 6), make_batch(0, 7, 6)
    assert a[1] == b[1] and a[2] == b[2] and (a[4] == b[4]).all()
    x1, c1, _ = batch("unet", 0, 5, 6)
    x2, c2, _ = batch("unet", 0, 5, 6)
    assert (x1 == x2).all() and c1 == c2
    # training only ever sees TRAIN-split scenes
    from qbench.toyworld.splits import scenes

    train = {s.key for s in scenes("train")}
    assert all(k in train for k in a[3][:6])


def test_pair_scenes_render_caption_and_split():
    from qbench.prompts import load_prompts
    from qbench.toyworld.render import (N_PAIR_WORDINGS, PAIR_ATTRIBUTES, PairScene, all_pair_scenes, scene_from_dict)

    pairs = all_pair_scenes()
    assert len(pairs) == 3 * 18 * 18 and len({p.key for p in pairs}) == len(pairs)
    p = PairScene("white", "red", "circle", "blue", "square")
    img = np.asarray(render(p), np.int32)
    left, right = (np.asarray(render(o), np.int32) for o in p.objects())
    assert (img[:, :16] == left[:, :16]).all() and (img[:, 16:] == right[:, 16:]).all()  # each object on its side
    for a in PAIR_ATTRIBUTES:  # every attribute changes the image
        assert np.abs(np.asarray(render(p.changed(a, np.random.default_rng(0))), np.int32) - img).sum() > 0, a
    words = set(vocabulary())
    for s in pairs[::11]:
        for w in range(N_PAIR_WORDINGS):
            c = caption(s, w)
            assert set(c.replace(",", " ").split()) <= words, c  # no word the toy tokenizer lacks
            assert c.index(s.left_colour + " " + s.left_shape) >= 0 and s.right_colour + " " + s.right_shape in c
    assert "an orange" in caption(PairScene("gray", "orange", "circle", "red", "square"), 0)
    tr, ca, te = (set(s.key for s in scenes(x, "pair")) for x in ("train", "calib", "test"))
    assert len(tr) + len(ca) + len(te) == len(pairs) and not (tr & te) and not (ca & te) and not (tr & ca)
    ps = load_prompts("toy-pair:12")
    for q in ps:
        s = scene_from_dict(q.meta["scene"])
        assert isinstance(s, PairScene) and caption(s, q.meta["wording"]) == q.text and s.key in te
    assert not {q.text for q in load_prompts("toy-pair-train")} & {q.text for q in load_prompts("toy-pair")}
    # single-object scenes still come back as Scene
    assert isinstance(scene_from_dict(load_prompts("toy:1")[0].meta["scene"]), Scene)


def test_pair_batches_keep_the_single_object_stream():
    from qbench.zoo.train_denoiser import batch

    x0, c0, _ = batch("flux", 0, 5, 16)
    x1, c1, _ = batch("flux", 0, 5, 16, pairs=0.0)
    assert c0 == c1 and (x0 == x1).all()  # pairs=0 draws what the original runs drew
    xm, cm, _ = batch("flux", 0, 5, 16, pairs=0.5)
    n_pairs = sum("on the right" in c and "on the left" in c or "at the right" in c and "at the left" in c
                  or "to the right" in c and "to the left" in c for c in cm)
    assert 0 < n_pairs < 16 and xm.shape == x0.shape
    from qbench.errors import ConfigError
    from qbench.zoo.train_denoiser import train

    with pytest.raises(ConfigError, match="pairs"):
        train("flux", pairs=1.5)
