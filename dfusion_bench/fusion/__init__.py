"""D-Fusion: visually consistent preference pairs from reference self-attention inside cross-attention masks.

Modules, in the order data flows through them: ``config`` (settings), ``layers`` (which processors, at which
resolution), ``plan`` (the resolved layers and steps, and a reference record's size), ``tokens`` (item words to token
positions), ``records`` (what is kept of a reference), ``processors`` (the controller and the attention processors),
``cache`` (recording while sampling, cache or replay), ``triples`` (who is reference, who is base), ``masks`` (maps to
masks), ``engine`` (fused sampling).
"""

from typing import Any

from dfusion_bench.fusion.config import FusionConfig
from dfusion_bench.fusion.triples import Triple, select_triples

__all__ = ["FusionConfig", "FusionPlan", "FusionResult", "Triple", "fuse_triples", "select_triples"]

_ENGINE = ("FusionPlan", "FusionResult", "fuse_triples")


def __getattr__(name: str) -> Any:
    """The engine's names, imported on first use: settings and the command line read :class:`FusionConfig` without
    importing torch and diffusers."""
    if name in _ENGINE:
        from dfusion_bench.fusion import engine, plan

        return getattr(plan if name == "FusionPlan" else engine, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
