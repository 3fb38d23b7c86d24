"""The real CLIP BPE tokenizer of Stable Diffusion 1.x/2.x, built offline from the vocabulary file inside open_clip.

SD's ``tokenizer/`` folder holds OpenAI CLIP's byte-level BPE (49 408 tokens). ``open_clip`` ships the same merges as
``bpe_simple_vocab_16e6.txt.gz``, so the identical :class:`transformers.CLIPTokenizer` can be rebuilt without a
download. Test pipelines use it so that multi-token words ("woolen" → ``woo|len``) behave exactly as in real SD.

SD 1.x pads with ``<|endoftext|>`` (id 49407, the default here); SD 2.x's diffusers folders and ``open_clip.tokenize``
pad with ``!`` (id 0). With ``pad_token="!"`` the tokenizer also reproduces the quirk of SD 2's diffusers tokenizer:
``!`` becomes a special token, so every ``!`` in a prompt encodes to id 0, where open_clip merges it with its
neighbours ("!!" → 748; diffusers issue #4153). Prompts without ``!`` encode identically either way.
"""

from __future__ import annotations

import gzip
import importlib.util
from functools import lru_cache
from pathlib import Path

from transformers import CLIPTokenizer

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
#: OpenAI CLIP's vocabulary size: 256 bytes + 256 end-of-word bytes + 48 894 merges + 2 special tokens.
VOCAB_SIZE = 49408
_N_MERGES = VOCAB_SIZE - 2 * 256 - 2


def _bpe_file() -> Path:
    """The gzipped merges file that ships inside the ``open_clip`` package (located without importing open_clip,
    whose import costs seconds)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "open_clip is not installed; it provides CLIP's BPE vocabulary (pip install open_clip_torch)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        raise RuntimeError(f"CLIP's BPE vocabulary is missing from open_clip: {path}")
    return path


def bytes_to_unicode() -> dict[int, str]:
    """OpenAI CLIP's reversible byte → printable-unicode table (identical to ``open_clip.tokenizer``'s).

    Printable Latin-1 bytes map to themselves; the other 68 bytes map to code points 256… in byte order.
    """
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


@lru_cache(maxsize=1)
def _vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's ``(vocab, merges)`` in the order ``open_clip.tokenizer.SimpleTokenizer`` assigns ids."""
    with gzip.open(_bpe_file(), "rt", encoding="utf-8") as fh:
        lines = fh.read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : _N_MERGES + 1]]
    if len(merges) != _N_MERGES or any(len(m) != 2 for m in merges):
        raise RuntimeError(f"unexpected CLIP merges file {_bpe_file()}: {len(merges)} merges")
    tokens = list(bytes_to_unicode().values())
    tokens += [t + "</w>" for t in tokens]
    tokens += ["".join(m) for m in merges]
    tokens += [BOS, EOS]
    vocab = {t: i for i, t in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE:
        raise RuntimeError(f"CLIP vocabulary has {len(vocab)} distinct tokens, expected {VOCAB_SIZE}")
    return vocab, merges  # type: ignore[return-value]


@lru_cache(maxsize=8)
def clip_tokenizer(model_max_length: int = 77, pad_token: str = EOS) -> CLIPTokenizer:
    """SD's CLIP tokenizer (cached per arguments; treat it as read-only).

    ``pad_token`` is ``"<|endoftext|>"`` for SD 1.x, ``"!"`` for SD 2.x (then ids equal ``open_clip.tokenize``).
    """
    vocab, merges = _vocab_and_merges()
    if pad_token not in vocab:
        raise ValueError(f"pad_token {pad_token!r} is not in the CLIP vocabulary")
    return CLIPTokenizer(
        vocab=dict(vocab),
        merges=list(merges),
        model_max_length=model_max_length,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=EOS,
        pad_token=pad_token,
    )
