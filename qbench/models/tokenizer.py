"""A Hugging Face CLIPTokenizer built offline from the BPE vocabulary in the open_clip wheel.

The real models' tokenizers come from the hub with their weights; the tiny twins (and the toy
world) need one offline. ``open_clip/bpe_simple_vocab_16e6.txt.gz`` is the same BPE that OpenAI
CLIP uses, so the vocabulary written here gives the same ids as open_clip's ``SimpleTokenizer``
(checked in tests) and as ``openai/clip-vit-large-patch14``'s tokenizer.
"""
from __future__ import annotations

import gzip
import json
import os
from functools import lru_cache

N_MERGES = 49152 - 256 - 2  # the merges open_clip's SimpleTokenizer uses (48,894)
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable-unicode table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def bpe_path() -> str:
    import open_clip

    return os.path.join(os.path.dirname(open_clip.__file__), "bpe_simple_vocab_16e6.txt.gz")


@lru_cache(maxsize=1)
def _vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    with gzip.open(bpe_path(), "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = lines[1 : N_MERGES + 1]
    tokens = list(bytes_to_unicode().values())
    tokens = tokens + [t + "</w>" for t in tokens]
    tokens += ["".join(m.split()) for m in merges]
    tokens += [BOS, EOS]
    return {t: i for i, t in enumerate(tokens)}, merges


def write_clip_tokenizer(directory: str, vocab: dict[str, int], merges: list[str], model_max_length: int = 77) -> None:
    """Write ``vocab.json``, ``merges.txt`` and the configs of a ``CLIPTokenizer`` to ``directory``."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(directory, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": model_max_length,
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": EOS,
        "pad_token": EOS,
        "do_lower_case": True,
        "errors": "replace",
    }
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=1)
    with open(os.path.join(directory, "special_tokens_map.json"), "w") as f:
        json.dump({k: config[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token")}, f, indent=1)


def clip_tokenizer_files(directory: str) -> None:
    """The full OpenAI CLIP vocabulary (from the open_clip wheel) as a CLIPTokenizer folder."""
    vocab, merges = _vocab_and_merges()
    write_clip_tokenizer(directory, vocab, merges)


def clip_tokenizer(directory: str):
    """Write the files (if missing) and load them as a ``transformers.CLIPTokenizer``."""
    from transformers import CLIPTokenizer

    if not os.path.exists(os.path.join(directory, "vocab.json")):
        clip_tokenizer_files(directory)
    return CLIPTokenizer.from_pretrained(directory, local_files_only=True)


VOCAB_SIZE = N_MERGES + 512 + 2  # 49,408
