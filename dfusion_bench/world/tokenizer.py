"""An offline CLIP tokenizer for the shapes world: one BPE token per vocabulary word, built deterministically.

It is a genuine :class:`transformers.CLIPTokenizer` (lower-casing, ``</w>`` word ends, start/end tokens) over a
vocabulary written out here rather than learned: single letters (with and without the word-end mark), then, for
each world word from the longest to the shortest, the chain of merges that joins its letters left to right. The
result is the same vocabulary, ids and merges in every process — pretraining and its resume depend on that — and
each world word encodes to exactly one token (checked); any other word falls back to smaller pieces.
"""

from __future__ import annotations

import string

from transformers import CLIPTokenizer

from dfusion_bench.world.grammar import vocabulary

#: Longest world prompt ("a big red circle on the left of a small blue square") is 12 words + start + end.
MAX_LENGTH = 16
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def build_tokenizer(words: list[str] | None = None, max_length: int = MAX_LENGTH) -> CLIPTokenizer:
    """A CLIP tokenizer whose vocabulary holds each of ``words`` (default: the world's) as one token."""
    words = sorted(set(vocabulary() if words is None else words), key=lambda w: (-len(w), w))
    vocab: dict[str, int] = {}
    merges: list[tuple[str, str]] = []
    for letter in string.ascii_lowercase:
        vocab.setdefault(letter, len(vocab))
    for letter in string.ascii_lowercase:
        vocab.setdefault(letter + "</w>", len(vocab))
    for word in words:
        symbols = [*word[:-1], word[-1] + "</w>"]
        joined = symbols[0]
        for symbol in symbols[1:]:
            if (joined, symbol) not in merges:
                merges.append((joined, symbol))
            joined += symbol
            vocab.setdefault(joined, len(vocab))
    vocab[BOS], vocab[EOS] = len(vocab), len(vocab) + 1
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)
    split = [w for w in words if len(tokenizer.tokenize(w)) != 1]
    if split:
        raise RuntimeError(f"world words split into several tokens: {split}")
    return tokenizer
