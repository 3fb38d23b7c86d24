"""D-Fusion: visually consistent preference pairs from reference self-attention inside cross-attention masks.

Modules, in the order data flows through them: ``triples`` (who is reference, who is base), ``tokens`` (item words to
token positions), ``layers`` (which processors, at which resolution), ``processors`` (the controller and the
attention processors), ``masks`` (maps to masks), ``engine`` (fused sampling), ``config`` (settings).
"""

from dfusion_bench.fusion.config import FusionConfig
from dfusion_bench.fusion.engine import FusionPlan, FusionResult, fuse_triples
from dfusion_bench.fusion.triples import Triple, select_triples

__all__ = ["FusionConfig", "FusionPlan", "FusionResult", "Triple", "fuse_triples", "select_triples"]
