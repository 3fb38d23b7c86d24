"""Random scenes and their captions: the pretraining data of the embedded model, and the verifier's validation set.

A training example is a random layout of one or two objects and a caption that is true of it. Captions vary in how
much they say (color and size are sometimes left out) so that the model learns each word on its own; two-object
captions use a spatial relation when the layout makes one clear, and ``and`` otherwise.
"""

from __future__ import annotations

import numpy as np

from dfusion_bench.world.grammar import COLORS, RELATIONS, SHAPES, SIZES, ObjectSpec, SceneSpec, format_prompt
from dfusion_bench.world.render import DOMINANCE, PlacedObject, layout, relation_holds

#: Probabilities that shape the pretraining captions (documented in the README's world section).
P_TWO_OBJECTS = 0.65
P_RELATION_LAYOUT = 0.75
P_RELATION_CAPTION = 0.75
P_SAY_COLOR = 0.9
P_SAY_SIZE = 0.6


def random_spec(rng: np.random.Generator, n_objects: int, relation: bool = False, sizes: bool = True) -> SceneSpec:
    """A fully specified random spec (every object has shape, color and, if ``sizes``, size)."""
    objects = tuple(
        ObjectSpec(
            shape=str(rng.choice(SHAPES)),
            color=str(rng.choice(list(COLORS))),
            size=str(rng.choice(SIZES)) if sizes else None,
        )
        for _ in range(n_objects)
    )
    rel = str(rng.choice(list(RELATIONS))) if relation and n_objects == 2 else None
    return SceneSpec(objects=objects, relation=rel)


def _mention(obj: PlacedObject, rng: np.random.Generator) -> ObjectSpec:
    return ObjectSpec(
        shape=obj.shape,
        color=obj.color if rng.random() < P_SAY_COLOR else None,
        size=obj.size if rng.random() < P_SAY_SIZE else None,
    )


def caption(objects: tuple[PlacedObject, ...], rng: np.random.Generator) -> tuple[str, tuple[PlacedObject, ...]]:
    """A random true caption of a layout, and the layout's objects in the order the caption names them."""
    mentions = [_mention(o, rng) for o in objects]
    if len(objects) == 1:
        return format_prompt(SceneSpec(objects=(mentions[0],))), objects
    order = [0, 1] if rng.random() < 0.5 else [1, 0]
    first, second = (objects[i] for i in order)
    relation = None
    if rng.random() < P_RELATION_CAPTION:
        clear = [r for r in RELATIONS if relation_holds(r, (first.cx, first.cy), (second.cx, second.cy), DOMINANCE)]
        relation = clear[0] if clear else None
    text = format_prompt(SceneSpec(objects=tuple(mentions[i] for i in order), relation=relation))
    return text, (first, second)


def training_example(rng: np.random.Generator) -> tuple[tuple[PlacedObject, ...], str]:
    """One random layout (relation-aware for a share of the two-object scenes) and a true caption; the objects come
    in the order the caption names them."""
    n = 2 if rng.random() < P_TWO_OBJECTS else 1
    spec = random_spec(rng, n, relation=n == 2 and rng.random() < P_RELATION_LAYOUT)
    text, objects = caption(layout(spec, rng), rng)
    return objects, text
