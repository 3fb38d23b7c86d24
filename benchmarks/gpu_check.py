"""The CUDA path, proved in one script: fuse + one DPO epoch on a random-weight pipeline with SD 2.1-base's UNet at
512 px in fp16, plain-vs-fused sampling time and peak GPU memory. (The regression session on the embedded world runs
separately: ``dfusion regression --device cuda``.)

    python benchmarks/gpu_check.py --out DIR            # on a GPU machine
    python benchmarks/gpu_check.py --arch tiny --sample-size 16 --device cpu --dtype fp32 --out DIR   # dry run
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from dfusion_bench.devices import pick_dtype
from dfusion_bench.fusion import FusionConfig, fuse_triples, select_triples
from dfusion_bench.models.choice import ModelChoice
from dfusion_bench.models.tiny import save_tiny_pipeline
from dfusion_bench.rl.config import OptimSettings, TrainConfig
from dfusion_bench.rl.trainer import Trainer
from dfusion_bench.rollout import sample_and_score
from dfusion_bench.scorers import get_scorer
from dfusion_bench.seeding import sample_seeds
from dfusion_bench.settings import SamplerConfig
from dfusion_bench.suites import load_suite


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def _peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--arch", default="sd21")
    parser.add_argument("--sample-size", type=int, default=64, help="latent side (64 = 512 px for SD 2.1)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="fp16")
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--samples-per-prompt", type=int, default=4)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = pick_dtype(device, args.dtype)
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    folder = save_tiny_pipeline(args.out / "pipeline", arch=args.arch, seed=0, sample_size=args.sample_size)
    build_s = time.perf_counter() - t0
    pipe = ModelChoice.check(folder).load(device, dtype)
    entries = list(load_suite("paper-t1").train)[: args.prompts]
    scorer = get_scorer("compressibility")  # no CLIP weights here; any reward exercises the same path
    sampler = SamplerConfig()
    seeds = sample_seeds(0, 0, len(entries), args.samples_per_prompt)
    sample_and_score(pipe, scorer, entries[:1], [seeds[0][:1]], sampler)  # warm-up (kernels, allocator)
    _sync(device)
    _peak_reset(device)
    t1 = time.perf_counter()
    samples = sample_and_score(pipe, scorer, entries, seeds, sampler, batch_size=8)
    _sync(device)
    plain_s = (time.perf_counter() - t1) / len(samples.trajectories)
    plain_peak = _peak_gib(device)
    triples = select_triples(samples.groups, samples.scores.scores)
    _peak_reset(device)
    t2 = time.perf_counter()
    result = fuse_triples(pipe, samples.trajectories, triples, {e.prompt: e for e in entries}, FusionConfig(), 8)
    _sync(device)
    fused_s = (time.perf_counter() - t2) / max(1, len(triples))
    fused_peak = _peak_gib(device)
    del pipe, samples, result
    if device.type == "cuda":
        torch.cuda.empty_cache()
    _peak_reset(device)
    config = TrainConfig(
        method="dpo", fusion=True, template="paper-t1", model=str(folder), prompts=args.prompts,
        samples_per_prompt=args.samples_per_prompt, epochs=1, scorer="compressibility", eval_samples_per_prompt=1,
        batch_size=8, optim=OptimSettings(batch_size=1),
    )  # fmt: skip
    t3 = time.perf_counter()
    run = args.out / "dpo-run"
    Trainer(config, run, device=args.device, dtype=args.dtype).run()
    _sync(device)
    train_log = json.loads((run / "train_log.jsonl").read_text().splitlines()[-1])
    report = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "arch": args.arch,
        "latent": args.sample_size,
        "image_px": args.sample_size * 8 if args.arch == "sd21" else None,
        "dtype": str(dtype),
        "build_and_save_s": build_s,
        "samples": len(seeds) * args.samples_per_prompt,
        "targets": len(triples),
        "plain_sampling_s_per_sample": plain_s,
        "fused_sampling_s_per_target": fused_s,
        "fused_over_plain": fused_s / plain_s,
        "peak_gib_plain_sampling": plain_peak,
        "peak_gib_fusion": fused_peak,
        "dpo_epoch_s": time.perf_counter() - t3,
        "peak_gib_dpo_epoch": _peak_gib(device),
        "dpo_epoch": train_log,
    }
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
