"""One-word edits of a world prompt: the relation to its opposite, or an object's color, shape or size to another.

Each edit keeps the token count, so a prompt and its edit align position by position. The text probe measures how far
an edit moves the text conditioning; the text encoder's contrastive pretraining uses false edits as hard negatives.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from dfusion_bench.world.grammar import COLORS, RELATIONS, SHAPES, SIZES, ObjectSpec, SceneSpec, format_prompt, parse

#: Each relation's opposite (the negated direction): "above" <-> "below", "on the left of" <-> "on the right of".
OPPOSITE = {r: next(o for o, (ox, oy) in RELATIONS.items() if (ox, oy) == (-x, -y)) for r, (x, y) in RELATIONS.items()}


def _next(values: tuple[str, ...], current: str) -> str:
    return values[(values.index(current) + 1) % len(values)]


def _edit_object(index: int, attribute: str, values: tuple[str, ...]) -> Callable[[SceneSpec], SceneSpec | None]:
    def edit(spec: SceneSpec) -> SceneSpec | None:
        if index >= len(spec.objects) or getattr(spec.objects[index], attribute) is None:
            return None
        old: ObjectSpec = spec.objects[index]
        new = dataclasses.replace(old, **{attribute: _next(values, getattr(old, attribute))})
        objects = tuple(new if i == index else o for i, o in enumerate(spec.objects))
        return dataclasses.replace(spec, objects=objects)

    return edit


def _opposite_relation(spec: SceneSpec) -> SceneSpec | None:
    return None if spec.relation is None else dataclasses.replace(spec, relation=OPPOSITE[spec.relation])


#: Edit name -> a function giving the edited spec (``None`` where the edit does not apply to a prompt). Every edit
#: changes one word and keeps the token count, so the two sequences align position by position.
EDITS: dict[str, Callable[[SceneSpec], SceneSpec | None]] = {
    "relation: opposite": _opposite_relation,
    "first object: color": _edit_object(0, "color", tuple(COLORS)),
    "first object: shape": _edit_object(0, "shape", SHAPES),
    "first object: size": _edit_object(0, "size", SIZES),
    "second object: color": _edit_object(1, "color", tuple(COLORS)),
    "second object: shape": _edit_object(1, "shape", SHAPES),
    "second object: size": _edit_object(1, "size", SIZES),
}


def edited_prompts(prompt: str) -> list[tuple[str, str]]:
    """``(edit name, edited prompt)`` for every edit that applies to ``prompt``."""
    spec = parse(prompt)
    out = []
    for name, edit in EDITS.items():
        edited = edit(spec)
        if edited is not None:
            out.append((name, format_prompt(edited)))
    return out


__all__ = ["EDITS", "OPPOSITE", "edited_prompts"]
