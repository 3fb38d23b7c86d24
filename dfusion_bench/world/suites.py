"""The shapes world's prompt suites, mirroring the paper's three templates, with a held-out test split.

Three suites, 40 train and 40 test prompts each, every prompt naming two objects of different shapes AND different
colors (and, in ``shapes-binding``, different sizes), so that each shape word occurs once and swapping two
attributes is always a visible error. The items are the two shape words; thresholds are ``null`` (auto) until they
are calibrated.

=================  ===========================================  ==============================================
suite              prompt                                       held out (never in train, in every test prompt)
=================  ===========================================  ==============================================
shapes-objects     ``a red circle and a blue square``           6 (color, shape) bindings, :data:`OBJECTS_HELD_OUT`
shapes-binding     ``a big red circle and a small blue square`` 6 (size, color, shape) bindings,
                                                                :data:`BINDING_HELD_OUT`
shapes-spatial     ``a red circle above a blue square``         6 arrangements (shape X above / left of shape Y),
                                                                :data:`SPATIAL_HELD_OUT`
=================  ===========================================  ==============================================

The held-out rule: a train prompt contains no held-out combination, and every test prompt contains at least one, so
every test prompt holds a combination that no train prompt contains. The held-out sets are small patterns chosen so
that train prompts still use every color, shape, size and relation word:

* objects: each color loses one shape and each shape loses two colors (a Latin pattern);
* binding: each held-out (size, color, shape) keeps its (color, shape), (size, shape) and (size, color) pairs in
  train, so only the full triple is new at test time;
* spatial: an arrangement is a fact about the image, not the wording (``circle above square`` and ``square below
  circle`` are one arrangement, held out together). For each shape pair and axis, one orientation is trained and the
  other is tested, so every shape pair appears on both axes in train, and the test asks for the opposite layout.

Both splits are drawn deterministically (fixed seed) and greedily balanced: each next prompt is the candidate whose
relation, shape order, colors (and held-out combinations) have been used least so far, so relations and shape orders
are as even as 40 allows, and any prefix of a split is itself roughly balanced. Note that the world's pretraining
captions are random, so "held out" means unseen in fine-tuning (RL / D-Fusion training), not in pretraining.

Regenerate the files with ``python -m dfusion_bench.suites`` (see :mod:`dfusion_bench.suites`).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass
from itertools import permutations, product

from dfusion_bench.suites import PromptEntry, Suite
from dfusion_bench.world.grammar import COLORS, RELATIONS, SHAPES, SIZES, ObjectSpec, SceneSpec, format_prompt

SEED = 20250501
N_PER_SPLIT = 40

#: shapes-objects: each color loses one shape, each shape loses two colors.
OBJECTS_HELD_OUT: frozenset[tuple[str, str]] = frozenset(
    {
        ("red", "circle"),
        ("green", "square"),
        ("blue", "triangle"),
        ("yellow", "circle"),
        ("purple", "square"),
        ("cyan", "triangle"),
    }
)
#: shapes-binding: (size, color, shape); each (color, shape) pair is still seen in train with the other size.
BINDING_HELD_OUT: frozenset[tuple[str, str, str]] = frozenset(
    {
        ("small", "red", "circle"),
        ("big", "green", "square"),
        ("small", "blue", "triangle"),
        ("big", "yellow", "circle"),
        ("small", "purple", "square"),
        ("big", "cyan", "triangle"),
    }
)
#: shapes-spatial: arrangements (first, "above" | "on the left of", second). For each shape pair and each axis one
#: orientation is held out and the other is trained; the held-out ones are cyclic (circle above square above triangle
#: above circle), so no fixed ranking of shapes (e.g. "circles go on top") fits both splits.
SPATIAL_HELD_OUT: frozenset[tuple[str, str, str]] = frozenset(
    {
        ("circle", "above", "square"),
        ("square", "above", "triangle"),
        ("triangle", "above", "circle"),
        ("square", "on the left of", "circle"),
        ("triangle", "on the left of", "square"),
        ("circle", "on the left of", "triangle"),
    }
)
#: A relation and its converse: ``x below y`` is the arrangement ``y above x``.
_CONVERSE = {"below": "above", "on the right of": "on the left of"}


def arrangement(spec: SceneSpec) -> tuple[str, str, str]:
    """The spatial arrangement of a two-object relation spec, independent of wording: (top or left shape, axis
    relation ``above`` / ``on the left of``, other shape)."""
    a, b = spec.objects[0].shape, spec.objects[1].shape
    relation = spec.relation or ""
    if relation in _CONVERSE:
        return b, _CONVERSE[relation], a
    return a, relation, b


def held_out_combinations(kind: str, spec: SceneSpec) -> set[tuple[str, ...]]:
    """The held-out combinations of suite ``shapes-<kind>`` that a spec contains (empty for a train spec)."""
    if kind == "objects":
        return {(o.color, o.shape) for o in spec.objects} & OBJECTS_HELD_OUT
    if kind == "binding":
        return {(o.size, o.color, o.shape) for o in spec.objects} & BINDING_HELD_OUT
    if kind == "spatial":
        return {arrangement(spec)} & SPATIAL_HELD_OUT
    raise ValueError(f"unknown shapes suite kind {kind!r}")


# ------------------------------------------------------------------------------------------------------ candidates


def _object_pairs(sized: bool) -> Iterator[tuple[ObjectSpec, ObjectSpec]]:
    """Every ordered pair of fully specified objects that differ in shape, color and (if ``sized``) size."""
    sizes: tuple[str | None, ...] = SIZES if sized else (None,)
    objects = [ObjectSpec(shape=s, color=c, size=z) for z, c, s in product(sizes, COLORS, SHAPES)]
    for a, b in permutations(objects, 2):
        if a.shape != b.shape and a.color != b.color and (not sized or a.size != b.size):
            yield a, b


def candidates(kind: str) -> list[SceneSpec]:
    """Every spec suite ``shapes-<kind>`` may draw from, in a fixed order."""
    if kind == "spatial":
        return [SceneSpec(objects=p, relation=r) for p in _object_pairs(False) for r in RELATIONS]
    if kind in ("objects", "binding"):
        return [SceneSpec(objects=p) for p in _object_pairs(kind == "binding")]
    raise ValueError(f"unknown shapes suite kind {kind!r}")


def _features(kind: str, spec: SceneSpec) -> list[list[Hashable]]:
    """What a balanced split spreads evenly, most important first; each feature is a list of values of the spec."""
    features: list[list[Hashable]] = [[spec.relation]] if kind == "spatial" else []
    features.append([tuple(o.shape for o in spec.objects)])
    features.append(sorted(held_out_combinations(kind, spec)))
    features.append([o.color for o in spec.objects])
    if kind == "binding":
        features.append([spec.objects[0].size])
    return features


def balanced_sample(
    pool: Iterable[SceneSpec], n: int, features: Callable[[SceneSpec], list[list[Hashable]]], rng: random.Random
) -> list[SceneSpec]:
    """``n`` specs from ``pool``, greedily keeping feature counts even; ties go to a seeded shuffle's order."""
    remaining = list(pool)
    rng.shuffle(remaining)
    if len(remaining) < n:
        raise ValueError(f"only {len(remaining)} candidates for {n} prompts")
    counts: list[Counter[Hashable]] = [Counter() for _ in features(remaining[0])]

    def cost(spec: SceneSpec) -> tuple[int, ...]:
        return tuple(sum(c[v] for v in values) for c, values in zip(counts, features(spec), strict=True))

    chosen: list[SceneSpec] = []
    for _ in range(n):
        best = min(remaining, key=cost)
        remaining.remove(best)
        chosen.append(best)
        for c, values in zip(counts, features(best), strict=True):
            c.update(values)
    return chosen


# ---------------------------------------------------------------------------------------------------------- suites


@dataclass(frozen=True)
class _Kind:
    description: str
    source: str


_KINDS: dict[str, _Kind] = {
    "objects": _Kind(
        "Shapes world, two objects (mirrors paper template 1): 'a red circle and a blue square'; items: both shapes. "
        "Test prompts hold a (color, shape) binding that no train prompt has.",
        "generated by dfusion_bench.world.suites (held out: OBJECTS_HELD_OUT)",
    ),
    "binding": _Kind(
        "Shapes world, attribute binding (mirrors paper template 2): 'a big red circle and a small blue square'; "
        "items: both shapes. Test prompts hold a (size, color, shape) binding that no train prompt has, though its "
        "pairs (color, shape), (size, shape), (size, color) all appear in train.",
        "generated by dfusion_bench.world.suites (held out: BINDING_HELD_OUT)",
    ),
    "spatial": _Kind(
        "Shapes world, spatial relations (mirrors paper template 3): 'a red circle above a blue square'; items: both "
        "shapes. Test prompts hold a shape arrangement (e.g. circle above square, in either wording) that no train "
        "prompt has.",
        "generated by dfusion_bench.world.suites (held out: SPATIAL_HELD_OUT)",
    ),
}


def _entry(spec: SceneSpec) -> PromptEntry:
    shapes = tuple(o.shape for o in spec.objects)
    return PromptEntry(prompt=format_prompt(spec), items=shapes, thresholds=(None,) * len(shapes))


def shapes_suite(kind: str, seed: int = SEED, n: int = N_PER_SPLIT) -> Suite:
    """Suite ``shapes-<kind>`` (kind: objects, binding, spatial), the same for the same seed."""
    pool = candidates(kind)
    test_pool = [s for s in pool if held_out_combinations(kind, s)]
    train_pool = [s for s in pool if not held_out_combinations(kind, s)]
    rng = random.Random(f"{seed}-{kind}")
    features = lambda spec: _features(kind, spec)  # noqa: E731
    return Suite(
        name=f"shapes-{kind}",
        description=_KINDS[kind].description,
        source=_KINDS[kind].source,
        train=tuple(_entry(s) for s in balanced_sample(train_pool, n, features, rng)),
        test=tuple(_entry(s) for s in balanced_sample(test_pool, n, features, rng)),
    )


#: The shapes-world suites' names.
SHAPES_SUITES = tuple(f"shapes-{kind}" for kind in _KINDS)


def shapes_suites(seed: int = SEED) -> list[Suite]:
    """The three shapes-world suites."""
    return [shapes_suite(kind, seed) for kind in _KINDS]
