"""Token positions of prompt words, from the pipeline's own tokenizer.

Positions come from the tokenizer's character offsets, so a word that BPE splits into several tokens (CLIP splits
"woolen" into "woo" + "len</w>" and "computer" into "compu" + "ter</w>") gets all of its tokens, and indices account
for the start token. Hand-counted "one token per word" indices, as in the paper's template files, are never used.
"""

from __future__ import annotations

import re

from transformers import PreTrainedTokenizerBase

from dfusion_bench.errors import UserError


def word_spans(prompt: str, word: str) -> list[tuple[int, int]]:
    """Character spans of ``word`` as a whole word in ``prompt`` (case-insensitive)."""
    return [m.span() for m in re.finditer(rf"(?<![\w]){re.escape(word)}(?![\w])", prompt, flags=re.IGNORECASE)]


def word_token_positions(tokenizer: PreTrainedTokenizerBase, prompt: str, word: str, occurrence: int = 0) -> list[int]:
    """Indices, in the padded token sequence the text encoder sees, of every token of ``word`` in ``prompt``."""
    spans = word_spans(prompt, word)
    if len(spans) <= occurrence:
        raise UserError(f"item {word!r} is not a word of the prompt {prompt!r}; items must be words of their prompt")
    start, end = spans[occurrence]
    enc = tokenizer(prompt, return_offsets_mapping=True, truncation=True, max_length=tokenizer.model_max_length)
    positions = [
        i
        for i, (a, b) in enumerate(enc["offset_mapping"])
        if b > a and a < end and b > start  # special tokens have empty spans
    ]
    if not positions:
        raise UserError(
            f"item {word!r} of prompt {prompt!r} falls beyond the tokenizer's {tokenizer.model_max_length} tokens; "
            "shorten the prompt"
        )
    return positions
