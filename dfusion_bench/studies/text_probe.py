"""What the text conditioning carries: how far one-word edits of a prompt move the text encoder's output.

For each prompt of a suite and each one-word edit (the relation to its opposite, an object's color, shape or size to
another value), the distance between the conditioning the UNet sees for the prompt and for its edit: the L2 norm of
the difference of the two embedding sequences, per token, summed over tokens (and its largest token). An edit whose
distance is small next to the others is a word the UNet can barely react to, whatever it learns; RL that adapts only
the UNet cannot recover it.
"""

from __future__ import annotations

import pandas as pd
import torch
from diffusers import StableDiffusionPipeline

from dfusion_bench.guidance import encode_text
from dfusion_bench.world.edits import EDITS, edited_prompts


def edit_distances(pipe: StableDiffusionPipeline, prompts: list[str]) -> pd.DataFrame:
    """One row per (prompt, edit): the summed and the largest per-token L2 distance of the two conditionings."""
    pairs = [(p, name, e) for p in prompts for name, e in edited_prompts(p)]
    if not pairs:
        return pd.DataFrame(columns=["prompt", "edit", "edited", "l2_sum", "l2_max"])
    original = encode_text(pipe, [p for p, _, _ in pairs]).cond.float()
    edited = encode_text(pipe, [e for _, _, e in pairs]).cond.float()
    per_token = torch.linalg.vector_norm(original - edited, dim=-1)  # (n, L)
    return pd.DataFrame(
        {
            "prompt": [p for p, _, _ in pairs],
            "edit": [name for _, name, _ in pairs],
            "edited": [e for _, _, e in pairs],
            "l2_sum": per_token.sum(dim=1).cpu().numpy(),
            "l2_max": per_token.amax(dim=1).cpu().numpy(),
        }
    )


def probe_summary(distances: pd.DataFrame) -> pd.DataFrame:
    """Per edit: how many prompts, mean summed and largest distance, and the mean summed distance relative to the
    mean over all color edits (1.0 = moves the conditioning as much as naming another color)."""
    summary = (
        distances.groupby("edit", sort=False)
        .agg(n_prompts=("prompt", "size"), l2_sum=("l2_sum", "mean"), l2_max=("l2_max", "mean"))
        .reset_index()
    )
    colors = distances[distances.edit.str.endswith(": color")]
    reference = colors.l2_sum.mean() if len(colors) else float("nan")
    summary["relative_to_color"] = summary.l2_sum / reference
    return summary


__all__ = ["EDITS", "edit_distances", "edited_prompts", "probe_summary"]
