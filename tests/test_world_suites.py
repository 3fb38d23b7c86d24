"""The shapes-world suites: shipped files, sizes, the held-out rule, grammar, items, coverage and balance."""

from __future__ import annotations

from collections import Counter
from itertools import combinations
from pathlib import Path

import pytest

from dfusion_bench import suites as templates
from dfusion_bench.world import suites
from dfusion_bench.world.grammar import COLORS, RELATIONS, SHAPES, SIZES, SceneSpec, parse

REPO = Path(__file__).resolve().parent.parent
KINDS = ["objects", "binding", "spatial"]


def _load(kind: str) -> templates.Suite:
    return templates.load_suite(str(REPO / "templates" / f"shapes-{kind}.json"))


def _specs(kind: str, split: str) -> list[SceneSpec]:
    return [parse(e.prompt) for e in _load(kind).split(split)]


def _combination(kind: str, spec: SceneSpec) -> set[tuple]:
    """What a test prompt must hold that no train prompt does, written independently of the module's rule."""
    if kind == "objects":
        return {(o.color, o.shape) for o in spec.objects}
    if kind == "binding":
        return {(o.size, o.color, o.shape) for o in spec.objects}
    a, b = (o.shape for o in spec.objects)
    flip = {"below": "above", "on the right of": "on the left of"}
    return {(b, flip[spec.relation], a)} if spec.relation in flip else {(a, spec.relation, b)}


@pytest.mark.parametrize("kind", KINDS)
def test_shipped_file_equals_a_fresh_generation(kind):
    fresh = suites.shapes_suite(kind)
    assert fresh.name == f"shapes-{kind}"
    assert (REPO / "templates" / f"shapes-{kind}.json").read_text() == templates.dumps_suite(fresh)


def test_generation_depends_on_the_seed_only():
    assert suites.shapes_suite("objects") == suites.shapes_suite("objects")
    assert suites.shapes_suite("objects", seed=1) != suites.shapes_suite("objects")


@pytest.mark.parametrize("kind", KINDS)
def test_forty_train_and_forty_test_prompts_disjoint(kind):
    suite = _load(kind)
    assert len(suite.train) == len(suite.test) == 40
    train, test = {e.prompt for e in suite.train}, {e.prompt for e in suite.test}
    assert len(train) == len(test) == 40
    assert not train & test


@pytest.mark.parametrize("kind", KINDS)
def test_held_out_combinations_are_in_every_test_prompt_and_no_train_prompt(kind):
    assert all(suites.held_out_combinations(kind, s) for s in _specs(kind, "test"))
    assert not any(suites.held_out_combinations(kind, s) for s in _specs(kind, "train"))


@pytest.mark.parametrize("kind", KINDS)
def test_every_test_prompt_holds_a_combination_no_train_prompt_holds(kind):
    seen = set().union(*(_combination(kind, s) for s in _specs(kind, "train")))
    for spec in _specs(kind, "test"):
        assert _combination(kind, spec) - seen, spec


@pytest.mark.parametrize("kind", KINDS)
def test_prompts_parse_and_items_are_their_two_different_shapes(kind):
    for entry in _load(kind).train + _load(kind).test:
        spec = parse(entry.prompt)
        assert len(spec.objects) == 2
        assert entry.items == tuple(o.shape for o in spec.objects)
        assert entry.thresholds == (None, None)
        assert len(set(entry.items)) == 2
        assert all(entry.prompt.split().count(item) == 1 for item in entry.items)
        assert spec.objects[0].color != spec.objects[1].color


@pytest.mark.parametrize(
    ("kind", "relations", "sized"),
    [("objects", {None}, False), ("binding", {None}, True), ("spatial", set(RELATIONS), False)],
)
def test_prompt_structure_matches_the_suite(kind, relations, sized):
    for spec in _specs(kind, "train") + _specs(kind, "test"):
        assert spec.relation in relations
        assert spec.article == "a"
        assert all(o.color is not None for o in spec.objects)
        assert all((o.size is not None) == sized for o in spec.objects)
        if sized:
            assert spec.objects[0].size != spec.objects[1].size


@pytest.mark.parametrize("kind", KINDS)
def test_train_prompts_use_every_word(kind):
    specs = _specs(kind, "train")
    objects = [o for s in specs for o in s.objects]
    assert {o.color for o in objects} == set(COLORS)
    assert {o.shape for o in objects} == set(SHAPES)
    if kind == "binding":
        assert {o.size for o in objects} == set(SIZES)
    if kind == "spatial":
        assert {s.relation for s in specs} == set(RELATIONS)


def test_binding_train_prompts_hold_every_attribute_pair():
    objects = [o for s in _specs("binding", "train") for o in s.objects]
    assert {(o.color, o.shape) for o in objects} == {(c, s) for c in COLORS for s in SHAPES}
    assert {(o.size, o.shape) for o in objects} == {(z, s) for z in SIZES for s in SHAPES}
    assert {(o.size, o.color) for o in objects} == {(z, c) for z in SIZES for c in COLORS}


def test_spatial_train_prompts_hold_every_shape_pair_on_both_axes():
    seen = {(frozenset((a, b)), axis) for s in _specs("spatial", "train") for a, axis, b in _combination("spatial", s)}
    pairs = [frozenset(p) for p in combinations(SHAPES, 2)]
    assert seen == {(p, axis) for p in pairs for axis in ("above", "on the left of")}


def test_arrangement_ignores_the_wording():
    assert suites.arrangement(parse("a red circle above a blue square")) == ("circle", "above", "square")
    assert suites.arrangement(parse("a blue square below a red circle")) == ("circle", "above", "square")
    assert suites.arrangement(parse("a red circle on the right of a blue square")) == (
        "square",
        "on the left of",
        "circle",
    )


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("split", ["train", "test"])
def test_splits_are_balanced(kind, split):
    specs = _specs(kind, split)
    orders = Counter(tuple(o.shape for o in s.objects) for s in specs)
    assert len(orders) == 6 and max(orders.values()) - min(orders.values()) <= 1
    colors = Counter(o.color for s in specs for o in s.objects)
    assert len(colors) == len(COLORS) and max(colors.values()) - min(colors.values()) <= 2
    if kind == "spatial":
        assert Counter(s.relation for s in specs) == {r: 10 for r in RELATIONS}
