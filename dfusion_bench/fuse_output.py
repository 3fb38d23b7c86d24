"""The folder ``dfusion fuse`` writes, and the loader that ``train`` and the reports use to read it back.

Layout::

    run.json                  resolved configuration, package versions, seeds, command line
    manifest.json             counts, fusion plan, UNet-evaluation figures, reference cache or replay, one record per
                              triple
    samples.csv               one row per sample: id, prompt, seed, score, aligned, facts, rank, role
    triples.csv               one row per triple: reference, base, target ids, scores and facts
    samples.safetensors       every sample's trajectory (latents x_T..x_0, timesteps, log-probs, image)
    targets.safetensors       every target's trajectory; log-probs under the unmodified policy
    masks.safetensors         per-step union masks (G, T, h, w) and item maps (G, T, items, h, w)
    images/samples/s00000.png every sample
    images/triples/t0000.png  reference | base | target | mask (enlarged)
    images/masks/t0000.png    the mask at every fused step
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from safetensors.torch import load_file

from dfusion_bench import atomic, imaging
from dfusion_bench.errors import UserError
from dfusion_bench.fusion import Triple
from dfusion_bench.pairs import Pairs
from dfusion_bench.trajectories import Trajectories

PREVIEW = 128  # pixels per image in triple previews


def samples_table(pairs: Pairs) -> pd.DataFrame:
    s = pairs.samples
    roles = ["unused"] * len(s.trajectories)
    for t in pairs.triples:
        roles[t.reference], roles[t.base] = "reference", "base"
    ranks = [0] * len(s.trajectories)
    for group in s.groups:
        for r, i in enumerate(sorted(group, key=lambda i: (-float(s.scores.scores[i]), group.index(i)))):
            ranks[i] = r
    prompt_index = s.prompt_index()
    return pd.DataFrame(
        {
            "sample": range(len(s.trajectories)),
            "prompt_index": prompt_index,
            "prompt": s.trajectories.prompts,
            "seed": s.trajectories.seeds,
            "score": s.scores.scores,
            "aligned": s.scores.aligned if s.scores.aligned is not None else [None] * len(prompt_index),
            "facts": [s.scores.facts_json(i) for i in range(len(s.trajectories))],
            "rank": ranks,
            "role": roles,
        }
    )


def triples_table(pairs: Pairs) -> pd.DataFrame:
    scores = pairs.samples.scores
    rows: dict[str, list[Any]] = {
        "triple": list(range(len(pairs.triples))),
        "prompt": [pairs.samples.trajectories.prompts[t.base] for t in pairs.triples],
        "reference": [t.reference for t in pairs.triples],
        "base": [t.base for t in pairs.triples],
        "reference_score": [float(scores.scores[t.reference]) for t in pairs.triples],
        "base_score": [float(scores.scores[t.base]) for t in pairs.triples],
    }
    if pairs.target_scores is not None:
        rows["target_score"] = [float(x) for x in pairs.target_scores.scores]
    rows["reference_facts"] = [scores.facts_json(t.reference) for t in pairs.triples]
    rows["base_facts"] = [scores.facts_json(t.base) for t in pairs.triples]
    if pairs.target_scores is not None:
        rows["target_facts"] = [pairs.target_scores.facts_json(g) for g in range(len(pairs.triples))]
    return pd.DataFrame(rows)


def _write_images(out: Path, pairs: Pairs) -> None:
    traj = pairs.samples.trajectories
    for i in range(len(traj)):
        imaging.save_png(traj.images[i], out / "images" / "samples" / f"s{i:05d}.png")
    if pairs.fusion is None:
        return
    masks = pairs.fusion.masks
    final = max(pairs.fusion.plan.fused_steps, default=0)
    for g, t in enumerate(pairs.triples):
        row = [
            imaging.upscale(traj.images[t.reference], PREVIEW),
            imaging.upscale(traj.images[t.base], PREVIEW),
            imaging.upscale(pairs.fusion.targets.images[g], PREVIEW),
            imaging.mask_image(masks[g, final], PREVIEW),
        ]
        imaging.save_png(imaging.hstack(row), out / "images" / "triples" / f"t{g:04d}.png")
        steps = [imaging.mask_image(masks[g, i], 48) for i in pairs.fusion.plan.fused_steps]
        if steps:
            imaging.save_png(imaging.hstack(steps, pad=1), out / "images" / "masks" / f"t{g:04d}.png")


def write(out: Path, pairs: Pairs, extra_manifest: dict[str, Any]) -> dict[str, Any]:
    """Write everything but ``run.json``; return the manifest."""
    atomic.write_text(out / "samples.csv", samples_table(pairs).to_csv(index=False))
    pairs.samples.trajectories.save(out / "samples.safetensors")
    triples = triples_table(pairs)
    atomic.write_text(out / "triples.csv", triples.to_csv(index=False))
    manifest: dict[str, Any] = {
        "format": "dfusion-fuse/1",
        "prompts": [e.prompt for e in pairs.samples.entries],
        "items": {e.prompt: {"items": list(e.items), "thresholds": list(e.thresholds)} for e in pairs.samples.entries},
        "n_samples": len(pairs.samples.trajectories),
        "n_triples": len(pairs.triples),
        "triples": [{"reference": t.reference, "base": t.base} for t in pairs.triples],
        **extra_manifest,
    }
    if pairs.fusion is not None:
        f = pairs.fusion
        f.targets.save(out / "targets.safetensors")
        tensors = {"masks": f.masks.to(torch.uint8).contiguous(), "maps": f.maps.half().contiguous()}
        atomic.write_safetensors(out / "masks.safetensors", tensors)
        n_steps = len(f.targets.timesteps)
        manifest.update(
            {
                "unet_evals_per_target_step": f.evals_per_target_step(),
                "unet_evals_per_target_step_with_policy_log_probs": f.evals_per_target_step(include_log_probs=True),
                "unet_evals": f.unet_evals,
                "denoising_steps": n_steps,
                "fusion_plan": {
                    "fuse_layers": list(f.plan.fuse_layers),
                    "mask_layers": list(f.plan.mask_layers),
                    "mask_resolution": f.plan.mask_resolution,
                    "fused_steps": list(f.plan.fused_steps),
                },
                "fused_calls": len(f.events),
                "reference_cache": f.reference_cache,  # cache or replay, why, estimated and measured bytes
                "fusion_timing": f.timing,  # targets_s, policy_log_probs_s
            }
        )
        if pairs.target_scores is not None:
            t = triples
            manifest["target_beats_base_rate"] = float((t.target_score > t.base_score).mean())
            manifest["mean_gain_target_vs_base"] = float((t.target_score - t.base_score).mean())
            manifest["mean_gain_reference_vs_base"] = float((t.reference_score - t.base_score).mean())
            manifest["fact_rates"] = pairs.fact_rates()
    _write_images(out, pairs)
    atomic.write_json(out / "manifest.json", manifest)
    return manifest


@dataclass
class FuseOutput:
    """A fuse folder read back."""

    manifest: dict[str, Any]
    samples: Trajectories
    targets: Trajectories | None
    triples: list[Triple]
    sample_table: pd.DataFrame
    triple_table: pd.DataFrame
    masks: torch.Tensor | None


def load(path: Path) -> FuseOutput:
    """Read a folder written by ``dfusion fuse``; a missing or incomplete one is a :class:`UserError`."""
    path = Path(path)
    manifest_file = path / "manifest.json"
    if not manifest_file.is_file():
        raise UserError(f"{path} is not a dfusion fuse folder (no manifest.json); run dfusion fuse --out {path}")
    targets_file = path / "targets.safetensors"
    masks_file = path / "masks.safetensors"
    try:
        manifest = json.loads(manifest_file.read_text())
        return FuseOutput(
            manifest=manifest,
            samples=Trajectories.load(path / "samples.safetensors"),
            targets=Trajectories.load(targets_file) if targets_file.is_file() else None,
            triples=[Triple(**t) for t in manifest["triples"]],
            sample_table=pd.read_csv(path / "samples.csv"),
            triple_table=pd.read_csv(path / "triples.csv"),
            masks=load_file(str(masks_file))["masks"].bool() if masks_file.is_file() else None,
        )
    except UserError:
        raise
    except Exception as exc:  # a damaged or partial folder
        raise UserError(f"{path}: the fuse folder is damaged ({exc}); run dfusion fuse again") from None
