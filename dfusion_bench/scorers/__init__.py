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
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dfusion_bench.errors import UserError
from dfusion_bench.scorers.base import Scorer, Scores

if TYPE_CHECKING:
    import torch

    from dfusion_bench.models.choice import ModelChoice

ScorerFactory = Callable[..., Scorer]

#: The CLIP model of CLIPScore in the D-Fusion paper (open_clip ViT-H-14, laion2B-s32B-b79K weights).
DEFAULT_CLIP_MODEL = "ViT-H-14"

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


def make_scorer(
    name: str | None,
    model: ModelChoice,
    prompts: list[str],
    device: torch.device,
    clip_model: str | None = None,
    clip_checkpoint: Path | None = None,
) -> Scorer:
    """Build and check a scorer before any sampling: unknown names, missing or unfitting checkpoints (the CLIP model
    is loaded here) and prompts the verifier cannot read fail here, in one line."""
    name = name or model.default_scorer()
    if name not in available_scorers():
        raise UserError(f"unknown scorer {name!r}; known scorers: {', '.join(available_scorers())}")
    if name == "clip":
        model_name = clip_model or DEFAULT_CLIP_MODEL
        return get_scorer("clip", model_name=model_name, checkpoint=clip_checkpoint, device=device).load()
    if name == "verifier":
        from dfusion_bench.world.grammar import parse

        for prompt in prompts:
            parse(prompt)
    return get_scorer(name)


__all__ = [
    "DEFAULT_CLIP_MODEL",
    "Scorer",
    "ScorerFactory",
    "Scores",
    "available_scorers",
    "get_scorer",
    "make_scorer",
    "register_scorer",
]
