"""Contrastive (CLIP-style) pretraining of the embedded text encoder, before and apart from diffusion training.

Stable Diffusion does not learn its text encoder from the diffusion loss: it uses CLIP's, trained contrastively on
image–caption pairs and frozen. The embedded model does the same at its scale. A small image encoder (used here only,
not shipped) and the text encoder's pooled output are trained with CLIP's symmetric InfoNCE loss on rendered scenes
and their true captions. CLIP trained on in-batch negatives alone behaves like a bag of words — it need not tell "a red
circle above a blue square" from "... below ..." (Yuksekgonul et al., ICLR 2023) — so, as in their NegCLIP, every
caption also brings a hard negative: a one-word edit of it (:mod:`dfusion_bench.world.edits`) that the exact verifier
confirms is false of the image. The relation flip is drawn for half of the captions that have a relation.

At this scale and budget the contrastive loss alone leaves relations on a plateau (measured: after 1250 steps the
relation flip is told apart on 52% of held-out scenes, chance 50%, while every attribute edit is at 97–100%). So a
second, supervised head reads the layout from the pooled text embedding: the offset from the second named object to
the first (zero-mean noise for "and", a clear direction for a relation). It is dropped after pretraining, like the
image encoder; what remains is a text encoder whose output depends on the relation word.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPTextModel, CLIPTokenizer

from dfusion_bench.world.architecture import TEXT_WIDTH
from dfusion_bench.world.edits import EDITS
from dfusion_bench.world.grammar import SceneSpec, format_prompt, parse
from dfusion_bench.world.render import IMAGE_SIZE, draw
from dfusion_bench.world.scenes import training_example
from dfusion_bench.world.verify import verify

EMBED_DIM = 128
#: Probability of choosing the relation flip as the hard negative when a caption has a relation.
P_RELATION_NEGATIVE = 0.5
#: Layout offsets are in units of a quarter image, so that they are of order one.
OFFSET_UNIT = IMAGE_SIZE / 4


class ImageEncoder(nn.Module):
    """32×32 image → an embedding. Strided convolutions down to 4×4, then a flatten, so positions survive."""

    def __init__(self, dim: int = EMBED_DIM):
        super().__init__()
        layers: list[nn.Module] = []
        widths = (3, 32, 64, 128, 128)
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
            layers += [nn.Conv2d(a, b, 3, stride=1 if i == 0 else 2, padding=1), nn.GroupNorm(8, b), nn.SiLU()]
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(128 * 4 * 4, 256), nn.SiLU(), nn.Linear(256, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class ContrastiveHeads(nn.Module):
    """What contrastive pretraining adds around the text encoder: an image encoder, a text projection, a temperature."""

    def __init__(self, dim: int = EMBED_DIM):
        super().__init__()
        self.image = ImageEncoder(dim)
        self.text_projection = nn.Linear(TEXT_WIDTH, dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))  # CLIP's initial temperature
        self.layout = nn.Sequential(nn.Linear(TEXT_WIDTH, 64), nn.SiLU(), nn.Linear(64, 2))


def hard_negative(spec: SceneSpec, image: np.ndarray, rng: np.random.Generator) -> tuple[str, str] | None:
    """``(edit name, caption)``: a one-word edit of ``spec`` that is false of ``image``, or None if none is."""
    candidates = [(name, edit(spec)) for name, edit in EDITS.items()]
    candidates = [(name, e) for name, e in candidates if e is not None]
    order = list(rng.permutation(len(candidates)))
    relation = [i for i, (name, _) in enumerate(candidates) if name.startswith("relation")]
    if relation and rng.random() < P_RELATION_NEGATIVE:
        order = relation + [i for i in order if i not in relation]
    for i in order:
        name, edited = candidates[i]
        if verify(edited, image).score < 1.0:
            return name, format_prompt(edited)
    return None


@dataclass(frozen=True)
class ContrastiveBatch:
    images: torch.Tensor  # (n, 3, 32, 32) in [-1, 1]
    captions: list[str]
    negatives: list[str]  # one hard negative per caption (the caption itself in the rare case none exists)
    kinds: list[str]  # each negative's edit name, or "none"
    offsets: torch.Tensor  # (n, 2): first named object's centre minus the second's, in OFFSET_UNIT (0 for one object)
    two_objects: torch.Tensor  # (n,) bool: the caption names two objects


def contrastive_batch(seed: int, phase: int, step: int, n: int) -> ContrastiveBatch:
    """Scenes, true captions, hard negatives and layouts; a pure function of its arguments."""
    rng = np.random.default_rng([seed, phase, step])
    images, captions, negatives, kinds, offsets, two = [], [], [], [], [], []
    for _ in range(n):
        objects, text = training_example(rng)
        image = draw(objects).image
        found = hard_negative(parse(text), image, rng)
        name, negative = found if found is not None else ("none", text)
        images.append(image)
        captions.append(text)
        negatives.append(negative)
        kinds.append(name)
        two.append(len(objects) == 2)  # a caption names every object of its layout
        first, second = objects[0], objects[-1]
        offsets.append(((first.cx - second.cx) / OFFSET_UNIT, (first.cy - second.cy) / OFFSET_UNIT))
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)
    offsets_t = torch.tensor(offsets, dtype=torch.float32)
    return ContrastiveBatch(x * 2.0 - 1.0, captions, negatives, kinds, offsets_t, torch.tensor(two))


def pooled_text(text: CLIPTextModel, tok: CLIPTokenizer, captions: list[str]) -> torch.Tensor:
    """The text encoder's pooled output (its end-of-text token), as CLIP takes it."""
    ids = tok(captions, padding="max_length", max_length=tok.model_max_length, return_tensors="pt").input_ids
    return text(ids).pooler_output


def text_features(heads: ContrastiveHeads, pooled: torch.Tensor) -> torch.Tensor:
    """Unit-norm projected text embeddings (CLIP's text tower)."""
    return F.normalize(heads.text_projection(pooled), dim=-1)


def pretraining_loss(text: CLIPTextModel, heads: ContrastiveHeads, tok: CLIPTokenizer, batch: ContrastiveBatch):
    """Contrastive loss plus the layout head's mean squared error on two-object captions; returns (total, parts)."""
    pooled = pooled_text(text, tok, batch.captions)
    image_emb = F.normalize(heads.image(batch.images), dim=-1)
    negative_emb = text_features(heads, pooled_text(text, tok, batch.negatives))
    clip = contrastive_loss(image_emb, text_features(heads, pooled), negative_emb, heads.logit_scale)
    two = batch.two_objects
    layout = F.mse_loss(heads.layout(pooled[two]), batch.offsets[two]) if two.any() else pooled.sum() * 0
    return clip + layout, {"clip": clip.item(), "layout": layout.item()}


def contrastive_loss(
    image_emb: torch.Tensor, text_emb: torch.Tensor, negative_emb: torch.Tensor, logit_scale: torch.Tensor
) -> torch.Tensor:
    """CLIP's symmetric InfoNCE; the hard negatives join the candidates of the image→text direction (NegCLIP)."""
    scale = logit_scale.clamp(max=math.log(100.0)).exp()
    target = torch.arange(len(image_emb))
    image_to_text = scale * image_emb @ torch.cat([text_emb, negative_emb]).T
    text_to_image = scale * text_emb @ image_emb.T
    return (F.cross_entropy(image_to_text, target) + F.cross_entropy(text_to_image, target)) / 2


@torch.no_grad()
def hard_negative_accuracy(
    text: CLIPTextModel, heads: ContrastiveHeads, tok: CLIPTokenizer, seed: int, n: int = 512
) -> dict[str, float]:
    """Per edit kind, on held-out scenes: the fraction of images scored closer to their caption than to its hard
    negative (0.5 = the encoder cannot tell the edit apart; 1.0 = always can)."""
    batch = contrastive_batch(seed, 4, 0, n)
    image_emb = F.normalize(heads.image(batch.images), dim=-1)
    right = (image_emb * text_features(heads, pooled_text(text, tok, batch.captions))).sum(-1)
    wrong = (image_emb * text_features(heads, pooled_text(text, tok, batch.negatives))).sum(-1)
    wins = (right > wrong).numpy()
    kinds = np.array(batch.kinds)
    return {k: float(wins[kinds == k].mean()) for k in sorted(set(batch.kinds)) if k != "none"}


__all__ = [
    "ContrastiveBatch",
    "ContrastiveHeads",
    "ImageEncoder",
    "contrastive_batch",
    "contrastive_loss",
    "hard_negative",
    "hard_negative_accuracy",
    "pooled_text",
    "pretraining_loss",
    "text_features",
]
