"""The exact verifier: which of a prompt's facts hold in an image, and where each prompt object is.

Detection, in three rules (all constants below, none tuned on generated images):

1. **Color.** A pixel is foreground when its brightest channel exceeds ``FOREGROUND``. Its chromaticity (RGB divided
   by the brightest channel) is assigned to the nearest palette color if it lies within ``COLOR_TOLERANCE``;
   otherwise the pixel belongs to no object.
2. **Objects.** The 8-connected components of each color with at least ``MIN_AREA`` pixels are the detected objects.
3. **Shape and size**, from the component's bounding box: a box wider or taller than ``MAX_ASPECT`` to 1 is a
   ``blob`` (e.g. two merged objects); a component whose top half holds under ``TRIANGLE_TOP`` times the pixels of its
   bottom half is a ``triangle``; else it is a ``square`` if it fills at least ``SQUARE_FILL`` of its box, a
   ``circle`` if at least ``CIRCLE_FILL``, and a ``blob`` below. The size class is ``small`` when the larger
   half-extent of the box is under ``SIZE_SPLIT`` pixels, else ``big``.

Facts of a prompt (see :meth:`SceneSpec.facts`): ``object<i>`` — some detection matches every attribute the prompt
gives object *i* (one detection per object); ``relation`` — the matched objects' centers satisfy the relation (dominant
axis and sign of the displacement, so chance is 25%); ``count`` — there are exactly as many detections as prompt
objects. The score is the fraction of facts that hold; an image is *aligned* when all hold.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from dfusion_bench.world.grammar import COLORS, ObjectSpec, SceneSpec
from dfusion_bench.world.render import relation_holds

FOREGROUND = 0.35
COLOR_TOLERANCE = 0.3
MIN_AREA = 10
MAX_ASPECT = 1.5
TRIANGLE_TOP = 0.6
SQUARE_FILL = 0.92
CIRCLE_FILL = 0.55
SIZE_SPLIT = 5.25

_NAMES = list(COLORS)
_CHROMA = np.array([np.asarray(c) / max(c) for c in COLORS.values()], dtype=np.float32)
_EIGHT = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class Detection:
    color: str
    shape: str  # one of grammar.SHAPES, or "blob"
    size: str
    mask: np.ndarray = field(repr=False)
    cx: float
    cy: float
    area: int

    def matches(self, obj: ObjectSpec) -> bool:
        return (
            self.shape == obj.shape
            and (obj.color is None or obj.color == self.color)
            and (obj.size is None or obj.size == self.size)
        )


@dataclass(frozen=True)
class Verdict:
    score: float
    facts: dict[str, bool]
    masks: tuple[np.ndarray | None, ...] = field(repr=False)  # the detected mask of each prompt object, or None
    detections: tuple[Detection, ...] = field(repr=False)

    @property
    def aligned(self) -> bool:
        return all(self.facts.values())


def as_float_image(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) float32 in [0, 1] from a float or uint8 array."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected an (H, W, 3) image, got shape {image.shape}")
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    return np.clip(image.astype(np.float32), 0.0, 1.0)


def _classify_shape(mask: np.ndarray) -> tuple[str, float, float, float]:
    """Shape, center and larger half-extent of one component."""
    ys, xs = np.nonzero(mask)
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    w, h = x1 - x0, y1 - y0
    box = mask[y0:y1, x0:x1]
    top, bottom = box[: h // 2].sum(), box[(h + 1) // 2 :].sum()
    fill = box.sum() / (w * h)
    if not 1 / MAX_ASPECT <= w / h <= MAX_ASPECT:
        shape = "blob"
    elif top < TRIANGLE_TOP * bottom:
        shape = "triangle"
    elif fill >= SQUARE_FILL:
        shape = "square"
    elif fill >= CIRCLE_FILL:
        shape = "circle"
    else:
        shape = "blob"
    return shape, float(xs.mean() + 0.5), float(ys.mean() + 0.5), max(w, h) / 2


def detect(image: np.ndarray) -> tuple[Detection, ...]:
    """Every object the verifier sees in an image."""
    image = as_float_image(image)
    bright = image.max(axis=-1)
    chroma = image / np.maximum(bright, 1e-6)[..., None]
    dist = np.linalg.norm(chroma[..., None, :] - _CHROMA, axis=-1)  # (H, W, colors)
    nearest = dist.argmin(axis=-1)
    valid = (bright > FOREGROUND) & (dist.min(axis=-1) < COLOR_TOLERANCE)
    found = []
    for k, name in enumerate(_NAMES):
        labels, n = ndimage.label(valid & (nearest == k), structure=_EIGHT)
        for lab in range(1, n + 1):
            mask = labels == lab
            area = int(mask.sum())
            if area < MIN_AREA:
                continue
            shape, cx, cy, radius = _classify_shape(mask)
            size = "small" if radius < SIZE_SPLIT else "big"
            found.append(Detection(name, shape, size, mask, cx, cy, area))
    return tuple(found)


def verify(spec: SceneSpec, image: np.ndarray) -> Verdict:
    """Check an image against a prompt's spec."""
    detections = detect(image)
    n = len(spec.objects)
    options = [[d for d in range(len(detections)) if detections[d].matches(o)] + [None] for o in spec.objects]
    best: tuple[int, dict[str, bool], tuple[int | None, ...]] | None = None
    for choice in itertools.product(*options):
        used = [c for c in choice if c is not None]
        if len(used) != len(set(used)):
            continue
        facts = {f"object{i}": choice[i] is not None for i in range(n)}
        if spec.relation is not None:
            a, b = choice
            facts["relation"] = (
                a is not None
                and b is not None
                and relation_holds(
                    spec.relation, (detections[a].cx, detections[a].cy), (detections[b].cx, detections[b].cy)
                )
            )
        facts["count"] = len(detections) == n
        held = sum(facts.values())
        if best is None or held > best[0]:
            best = (held, facts, choice)
    assert best is not None  # the all-None choice always exists
    held, facts, choice = best
    masks = tuple(None if c is None else detections[c].mask for c in choice)
    return Verdict(score=held / len(facts), facts=facts, masks=masks, detections=detections)
