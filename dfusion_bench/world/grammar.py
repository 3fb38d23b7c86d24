"""The shapes world's scene grammar: vocabulary, structured scene specs, and prompt text in both directions.

A prompt is one or two noun phrases, joined by ``and`` or by a spatial relation::

    prompt  := phrase [("and" | relation) phrase]
    phrase  := ("a" | "the") [size] [color] shape
    relation:= "above" | "below" | "on the left of" | "on the right of"

``parse(format_prompt(spec)) == spec`` for every spec, and unknown words are a :class:`~dfusion_bench.errors.UserError`.
"""

from __future__ import annotations

from dataclasses import dataclass

from dfusion_bench.errors import UserError

#: Flat RGB colors in [0, 1]; far apart in RGB so that the verifier's nearest-color rule is exact on renders.
COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.95, 0.12, 0.12),
    "green": (0.12, 0.85, 0.12),
    "blue": (0.15, 0.30, 1.00),
    "yellow": (0.95, 0.90, 0.10),
    "purple": (0.80, 0.20, 0.95),
    "cyan": (0.10, 0.90, 0.90),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
SIZES: tuple[str, ...] = ("small", "big")
#: Relation name -> the unit direction from the second object to the first (image y grows downwards).
RELATIONS: dict[str, tuple[int, int]] = {
    "above": (0, -1),
    "below": (0, 1),
    "on the left of": (-1, 0),
    "on the right of": (1, 0),
}
ARTICLES: tuple[str, ...] = ("a", "the")


def vocabulary() -> list[str]:
    """Every word a prompt of this world may contain, in a fixed order."""
    words = [*ARTICLES, *SIZES, *COLORS, *SHAPES, "and"]
    for rel in RELATIONS:
        words += [w for w in rel.split() if w not in words]
    return words


@dataclass(frozen=True)
class ObjectSpec:
    """One object of a prompt. ``None`` attributes are unconstrained."""

    shape: str
    color: str | None = None
    size: str | None = None

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise UserError(f"unknown shape {self.shape!r}; use one of {', '.join(SHAPES)}")
        if self.color is not None and self.color not in COLORS:
            raise UserError(f"unknown color {self.color!r}; use one of {', '.join(COLORS)}")
        if self.size is not None and self.size not in SIZES:
            raise UserError(f"unknown size {self.size!r}; use one of {', '.join(SIZES)}")

    def phrase(self, article: str = "a") -> str:
        return " ".join(w for w in (article, self.size, self.color, self.shape) if w)

    def describe(self) -> str:
        """The phrase without its article, e.g. ``big red circle``."""
        return self.phrase("").strip()


@dataclass(frozen=True)
class SceneSpec:
    """What a prompt asks for: one or two objects and, for two, optionally ``objects[0] <relation> objects[1]``."""

    objects: tuple[ObjectSpec, ...]
    relation: str | None = None
    article: str = "a"

    def __post_init__(self) -> None:
        if not 1 <= len(self.objects) <= 2:
            raise UserError(f"a scene holds one or two objects, not {len(self.objects)}")
        if self.relation is not None and (self.relation not in RELATIONS or len(self.objects) != 2):
            raise UserError(f"relation {self.relation!r} needs two objects and one of {', '.join(RELATIONS)}")
        if self.article not in ARTICLES:
            raise UserError(f"unknown article {self.article!r}; use one of {', '.join(ARTICLES)}")

    def facts(self) -> list[str]:
        """Names of the facts the verifier checks, in a fixed order."""
        names = [f"object{i}" for i in range(len(self.objects))]
        if self.relation is not None:
            names.append("relation")
        names.append("count")
        return names


def format_prompt(spec: SceneSpec) -> str:
    """Prompt text for a spec."""
    phrases = [o.phrase(spec.article) for o in spec.objects]
    if len(phrases) == 1:
        return phrases[0]
    return f" {spec.relation or 'and'} ".join(phrases)


def _parse_phrase(words: list[str], prompt: str) -> tuple[ObjectSpec, str]:
    if not words or words[0] not in ARTICLES:
        raise UserError(f"prompt {prompt!r}: each object starts with 'a' or 'the'")
    article, rest = words[0], words[1:]
    size = rest.pop(0) if rest and rest[0] in SIZES else None
    color = rest.pop(0) if rest and rest[0] in COLORS else None
    if len(rest) != 1 or rest[0] not in SHAPES:
        raise UserError(
            f"prompt {prompt!r}: expected '[size] [color] shape' after {article!r}, got {' '.join(rest) or 'nothing'!r}"
        )
    return ObjectSpec(shape=rest[0], color=color, size=size), article


def parse(prompt: str) -> SceneSpec:
    """Structured spec of a prompt; unknown words or a bad structure raise :class:`UserError`."""
    words = prompt.lower().split()
    known = set(vocabulary())
    unknown = [w for w in words if w not in known]
    if unknown:
        raise UserError(
            f"prompt {prompt!r}: unknown word {unknown[0]!r}; the shapes world knows: {' '.join(vocabulary())}"
        )
    text = " ".join(words)
    for joiner in ("and", *RELATIONS):
        marker = f" {joiner} "
        if marker in f" {text} ":
            left, _, right = f" {text} ".partition(marker)
            (a, art_a), (b, art_b) = _parse_phrase(left.split(), prompt), _parse_phrase(right.split(), prompt)
            if art_a != art_b:
                raise UserError(f"prompt {prompt!r}: use the same article for both objects")
            return SceneSpec(objects=(a, b), relation=None if joiner == "and" else joiner, article=art_a)
    obj, article = _parse_phrase(words, prompt)
    return SceneSpec(objects=(obj,), article=article)
