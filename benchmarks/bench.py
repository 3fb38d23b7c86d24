"""Benchmarks (``nox -s bench``): ratios measured on one machine in one run, never asserted in tests.

1. Fusion: plain sampling time per sample, fused-target time per target, their ratio, and UNet evaluations per target
   per denoising step (a CFG pair counts once) — with and without the policy log-prob recomputation.
2. Training: seconds per epoch split into sampling, fusion, scoring and update, per method with and without fusion.

Runs on the embedded model when it is installed, else on a tiny random pipeline (``--tiny``), on this machine's CPU
or GPU. Prints a table and writes ``benchmarks/results.json``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from dfusion_bench.fusion import FusionConfig, fuse_triples, select_triples
from dfusion_bench.models.choice import ModelChoice
from dfusion_bench.models.loading import EMBEDDED_MODEL
from dfusion_bench.rl.config import OptimSettings, TrainConfig
from dfusion_bench.rl.trainer import Trainer
from dfusion_bench.rollout import sample_and_score
from dfusion_bench.scorers import get_scorer
from dfusion_bench.seeding import sample_seeds
from dfusion_bench.settings import SamplerConfig
from dfusion_bench.suites import load_suite


def _model(tiny: bool, workdir: Path) -> tuple[Path, str, str]:
    if not tiny and (EMBEDDED_MODEL / "model_index.json").is_file():
        return EMBEDDED_MODEL, "shapes-objects", "verifier"
    from dfusion_bench.models.tiny import save_tiny_pipeline

    return save_tiny_pipeline(workdir / "tiny"), "paper-t1", "compressibility"


def bench_fusion(model: Path, template: str, scorer_name: str, prompts: int, per_prompt: int) -> dict:
    choice = ModelChoice.check(model)
    pipe = choice.load(torch.device("cpu"), torch.float32)
    entries = list(load_suite(template).train)[:prompts]
    scorer = get_scorer(scorer_name)
    sampler = SamplerConfig()
    seeds = sample_seeds(0, 0, len(entries), per_prompt)
    samples = sample_and_score(pipe, scorer, entries, seeds, sampler)
    plain = samples.timing["sampling_s"] / len(samples.trajectories)  # sampling only, as the fused time below
    triples = select_triples(samples.groups, samples.scores.scores)
    if not triples:  # no preference in the scores: pair by rank anyway for timing
        triples = select_triples(samples.groups, -samples.scores.scores - 1e-9 * torch.arange(len(seeds)).numpy())
    items = {e.prompt: e for e in entries}
    t1 = time.perf_counter()
    result = fuse_triples(pipe, samples.trajectories, triples, items, FusionConfig())
    fused = (time.perf_counter() - t1) / len(triples)
    return {
        "model": str(model),
        "samples": len(samples.trajectories),
        "targets": len(triples),
        "plain_s_per_sample": plain,
        "fusion_s_per_target": fused,
        "ratio": fused / plain,
        "unet_evals_per_target_step": result.evals_per_target_step(),
        "unet_evals_per_target_step_with_policy_log_probs": result.evals_per_target_step(include_log_probs=True),
    }


def bench_training(model: Path, template: str, scorer_name: str, prompts: int, per_prompt: int) -> list[dict]:
    rows = []
    for method in ("dpo", "ddpo", "pg"):
        for fusion in (False, True):
            with tempfile.TemporaryDirectory() as tmp:
                config = TrainConfig(
                    method=method,
                    fusion=fusion,
                    template=template,
                    model=str(model),
                    prompts=prompts,
                    samples_per_prompt=per_prompt,
                    epochs=1,
                    scorer=scorer_name,
                    eval_samples_per_prompt=1,
                    optim=OptimSettings(batch_size=8),
                )
                out = Path(tmp) / "run"
                Trainer(config, out, device="cpu").run()
                timing = json.loads((out / "train_log.jsonl").read_text().splitlines()[-1])["timing"]
            rows.append(
                {
                    "method": method,
                    "fusion": fusion,
                    **{k: timing[k] for k in ("sampling_s", "fusion_s", "scoring_s", "update_s")},
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tiny", action="store_true", help="use a tiny random pipeline even if the embedded model exists"
    )
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--samples-per-prompt", type=int, default=8)
    parser.add_argument("--skip-training", action="store_true")
    args = parser.parse_args()
    console = Console()
    with tempfile.TemporaryDirectory() as tmp:
        model, template, scorer = _model(args.tiny, Path(tmp))
        fusion = bench_fusion(model, template, scorer, args.prompts, args.samples_per_prompt)
        keys = (
            "plain_s_per_sample",
            "fusion_s_per_target",
            "ratio",
            "unet_evals_per_target_step",
            "unet_evals_per_target_step_with_policy_log_probs",
        )
        table = Table(title=f"D-Fusion cost ({fusion['samples']} samples, {fusion['targets']} targets, {model.name})")
        for key in keys:
            table.add_column(key)
        table.add_row(*(f"{fusion[k]:.3f}" for k in keys))
        console.print(table)
        training = (
            [] if args.skip_training else bench_training(model, template, scorer, args.prompts, args.samples_per_prompt)
        )
        if training:
            t = Table(title="seconds per epoch")
            for col in ("method", "fusion", "sampling_s", "fusion_s", "scoring_s", "update_s"):
                t.add_column(col)
            for r in training:
                t.add_row(
                    r["method"],
                    str(r["fusion"]),
                    *(f"{r[k]:.2f}" for k in ("sampling_s", "fusion_s", "scoring_s", "update_s")),
                )
            console.print(t)
    results = {"fusion": fusion, "training": training, "device": "cpu", "threads": torch.get_num_threads()}
    out = Path(__file__).parent / "results.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    console.print(f"written {out}")


if __name__ == "__main__":
    main()
