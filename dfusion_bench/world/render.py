"""Procedural renderer: a scene spec and a random generator in, a 32×32 RGB image and per-object masks out.

Objects are flat-colored circles, squares and upward triangles on black, hard-edged, at least ``GAP`` pixels apart,
so that every object's ground-truth mask is exact. A relation in the spec is rendered unambiguously: the displacement
between the two centers lies along the relation's axis and is at least ``DOMINANCE`` times its other component.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dfusion_bench.world.grammar import COLORS, RELATIONS, SHAPES, SIZES, ObjectSpec, SceneSpec

IMAGE_SIZE = 32
#: Half-extent (pixels) of an object's bounding box, per size class. The verifier splits the classes between them.
#: The ranges keep every digital circle visibly round (area / bounding box <= 0.89, a square fills 1.0).
RADIUS_RANGE: dict[str, tuple[float, float]] = {"small": (4.0, 4.3), "big": (6.0, 7.0)}
GAP = 2.0
DOMINANCE = 1.5


@dataclass(frozen=True)
class PlacedObject:
    """A fully specified object at a position: ``(cx, cy)`` its center in pixels, ``radius`` its half-extent."""

    shape: str
    color: str
    size: str
    cx: float
    cy: float
    radius: float


@dataclass(frozen=True)
class Render:
    image: np.ndarray  # (H, W, 3) float32 in [0, 1]
    masks: tuple[np.ndarray, ...]  # one (H, W) bool mask per object, in spec order
    objects: tuple[PlacedObject, ...]


def shape_mask(
    shape: str, cx: float, cy: float, radius: float, size: int = IMAGE_SIZE, radius_y: float | None = None
) -> np.ndarray:
    """Pixels (sampled at their centers) covered by a shape with the given center and half-extents.

    ``radius`` is the horizontal half-extent and ``radius_y`` the vertical one (default: equal), so that the
    verifier can fit an ideal shape to any bounding box.
    """
    ry = radius if radius_y is None else radius_y
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    u, v = (xs - cx) / radius, (ys - cy) / ry  # coordinates in units of the half-extents
    if shape == "circle":
        return u * u + v * v <= 1.0
    if shape == "square":
        return (np.abs(u) <= 1.0) & (np.abs(v) <= 1.0)
    if shape == "triangle":  # apex at the top, base at the bottom
        return (v >= -1.0) & (v <= 1.0) & (np.abs(u) <= (v + 1.0) / 2.0)
    raise ValueError(f"unknown shape {shape!r}")


def _resolve(obj: ObjectSpec, rng: np.random.Generator) -> tuple[str, str, str]:
    color = obj.color or str(rng.choice(list(COLORS)))
    size = obj.size or str(rng.choice(list(SIZES)))
    return obj.shape, color, size


def _apart(a: PlacedObject, b: PlacedObject) -> bool:
    reach = a.radius + b.radius + GAP
    return abs(a.cx - b.cx) >= reach or abs(a.cy - b.cy) >= reach


def relation_holds(
    relation: str, first: tuple[float, float], second: tuple[float, float], dominance: float = 1.0
) -> bool:
    """Whether ``first <relation> second`` for two centers: the displacement's dominant axis and sign match.

    With ``dominance`` 1 the four relations partition the plane (chance is 25% for random placements).
    """
    ux, uy = RELATIONS[relation]
    dx, dy = first[0] - second[0], first[1] - second[1]
    along, across = dx * ux + dy * uy, abs(dx * uy) + abs(dy * ux)
    return along > 0 and along > dominance * across


def layout(spec: SceneSpec, rng: np.random.Generator, max_tries: int = 10_000) -> tuple[PlacedObject, ...]:
    """Sample sizes, colors left open by the spec, and positions that satisfy the spec."""
    attrs = [_resolve(o, rng) for o in spec.objects]
    for _ in range(max_tries):
        placed = []
        for shape, color, size in attrs:
            radius = float(rng.uniform(*RADIUS_RANGE[size]))
            lo, hi = radius + 1.0, IMAGE_SIZE - radius - 1.0
            placed.append(
                PlacedObject(shape, color, size, float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi)), radius)
            )
        if len(placed) == 2:
            if not _apart(placed[0], placed[1]):
                continue
            if spec.relation is not None and not relation_holds(
                spec.relation, (placed[0].cx, placed[0].cy), (placed[1].cx, placed[1].cy), DOMINANCE
            ):
                continue
        return tuple(placed)
    raise RuntimeError(f"could not place {spec} in {max_tries} tries")


def draw(objects: tuple[PlacedObject, ...], size: int = IMAGE_SIZE) -> Render:
    """Paint placed objects on black."""
    image = np.zeros((size, size, 3), dtype=np.float32)
    masks = []
    for obj in objects:
        mask = shape_mask(obj.shape, obj.cx, obj.cy, obj.radius, size)
        image[mask] = COLORS[obj.color]
        masks.append(mask)
    return Render(image=image, masks=tuple(masks), objects=objects)


def render(spec: SceneSpec, rng: np.random.Generator) -> Render:
    """A random rendering that satisfies ``spec``."""
    return draw(layout(spec, rng))


__all__ = ["IMAGE_SIZE", "SHAPES", "PlacedObject", "Render", "draw", "layout", "relation_holds", "render", "shape_mask"]
