"""Scorer registry: look up reward / evaluation scorers by name.

Built-in scorers:

* ``clip`` — CLIPScore as in D-Fusion: cosine similarity of open_clip image and text embeddings (ViT-H-14 by default,
  weights from a local checkpoint file).
* ``verifier`` — the exact verifier of the embedded shapes world: the fraction of a prompt's facts that hold.

The built-in factories import their modules on first use, so ``import dfusion_bench.scorers`` stays cheap (open_clip
alone takes seconds to import).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dfusion_bench.errors import UserError
from dfusion_bench.scorers.base import Scorer, Scores

ScorerFactory = Callable[..., Scorer]

_FACTORIES: dict[str, ScorerFactory] = {}


def register_scorer(name: str) -> Callable[[ScorerFactory], ScorerFactory]:
    """Decorator that registers a factory ``(**options) -> Scorer`` under ``name``."""

    def decorate(factory: ScorerFactory) -> ScorerFactory:
        if name in _FACTORIES:
            raise ValueError(f"a scorer named {name!r} is already registered")
        _FACTORIES[name] = factory
        return factory

    return decorate


def available_scorers() -> list[str]:
    """Names of all registered scorers, sorted."""
    return sorted(_FACTORIES)


def get_scorer(name: str, **options: Any) -> Scorer:
    """A new scorer ``name`` built with ``options``; an unknown name is a :class:`UserError`."""
    factory = _FACTORIES.get(name)
    if factory is None:
        raise UserError(f"unknown scorer {name!r}; known scorers: {', '.join(available_scorers())}")
    return factory(**options)


@register_scorer("clip")
def _clip_scorer(**options: Any) -> Scorer:
    from dfusion_bench.scorers.clip import ClipScorer

    return ClipScorer(**options)


@register_scorer("compressibility")
def _compressibility_scorer(**options: Any) -> Scorer:
    from dfusion_bench.scorers.compressibility import CompressibilityScorer

    return CompressibilityScorer(**options)


@register_scorer("verifier")
def _verifier_scorer(**options: Any) -> Scorer:
    from dfusion_bench.scorers.verifier import VerifierScorer

    return VerifierScorer(**options)


__all__ = ["Scorer", "ScorerFactory", "Scores", "available_scorers", "get_scorer", "register_scorer"]
