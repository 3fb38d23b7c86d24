"""An offline CLIP tokenizer for the shapes world: one BPE token per vocabulary word.

It is a genuine :class:`transformers.CLIPTokenizer` (lower-casing, ``</w>`` word ends, start/end tokens), whose BPE
merges are learned from the world's vocabulary with the ``tokenizers`` trainer, so every world word encodes to a
single token and any other word falls back to sub-word pieces.
"""

from __future__ import annotations

import json

from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import CLIPTokenizer

from dfusion_bench.world.grammar import vocabulary

#: Longest world prompt ("a big red circle on the left of a small blue square") is 12 words + start + end.
MAX_LENGTH = 16
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def build_tokenizer(words: list[str] | None = None, max_length: int = MAX_LENGTH) -> CLIPTokenizer:
    """A CLIP tokenizer whose vocabulary holds each of ``words`` (default: the world's) as one token."""
    words = vocabulary() if words is None else words
    bpe = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=100_000, min_frequency=1, end_of_word_suffix="</w>", show_progress=False)
    bpe.train_from_iterator([" ".join(words)] * 4, trainer)
    model = json.loads(bpe.to_str())["model"]
    vocab = dict(model["vocab"])
    vocab[BOS], vocab[EOS] = len(vocab), len(vocab) + 1
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split()) for m in model["merges"]]
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)
    single = [w for w in words if len(tokenizer.tokenize(w)) != 1]
    if single:
        raise RuntimeError(f"world words split into several tokens: {single}")
    return tokenizer
