"""The toy world's tokenizer: CLIP's byte-level BPE algorithm with a small learned vocabulary.

CLIP's full 49,408-token vocabulary would make the embedding table (copied into every pipeline's
text encoder) the largest tensor of the toy world, so the toy models use the *same algorithm* with
merges learned on the caption grammar: 256 byte symbols, their ``</w>`` variants, the merges, then
``<|startoftext|>`` and ``<|endoftext|>`` (the largest id, as open_clip's argmax pooling needs).
Any text still tokenizes (unknown words fall back to smaller pieces). The files written here load
as a Hugging Face ``CLIPTokenizer`` and, through open_clip's ``local-dir:`` schema, as open_clip's
``HFTokenizer`` — the same ids in both.
"""
from __future__ import annotations

from collections import Counter

from qbench.models.tokenizer import BOS, EOS, bytes_to_unicode, write_clip_tokenizer
from qbench.toyworld.render import vocabulary

CONTEXT_LENGTH = 32


def learn_merges(words: list[str]) -> list[tuple[str, str]]:
    """Classic BPE training (most frequent adjacent pair first, ties broken alphabetically) until
    every word is one symbol. Deterministic."""
    corpus = {w: tuple(w[:-1]) + (w[-1] + "</w>",) for w in words}
    merges: list[tuple[str, str]] = []
    while True:
        pairs: Counter = Counter()
        for sym in corpus.values():
            for a, b in zip(sym, sym[1:]):
                pairs[(a, b)] += 1
        if not pairs:
            return merges
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        for w, sym in corpus.items():
            out, i = [], 0
            while i < len(sym):
                if i + 1 < len(sym) and (sym[i], sym[i + 1]) == best:
                    out.append(sym[i] + sym[i + 1]); i += 2
                else:
                    out.append(sym[i]); i += 1
            corpus[w] = tuple(out)


def vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    merges = learn_merges(vocabulary())
    base = list(bytes_to_unicode().values())
    tokens = base + [t + "</w>" for t in base] + ["".join(m) for m in merges] + [BOS, EOS]
    vocab: dict[str, int] = {}
    for t in tokens:  # a merge result can equal an existing token only if the grammar had dupes
        vocab.setdefault(t, len(vocab))
    return vocab, [" ".join(m) for m in merges]


def vocab_size() -> int:
    return len(vocab_and_merges()[0])


def write_tokenizer(directory: str, model_max_length: int = CONTEXT_LENGTH) -> None:
    """Write vocab.json, merges.txt and the configs of a ``CLIPTokenizer`` to ``directory``."""
    vocab, merges = vocab_and_merges()
    write_clip_tokenizer(directory, vocab, merges, model_max_length)


def load_tokenizer(directory: str):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(directory, local_files_only=True)
