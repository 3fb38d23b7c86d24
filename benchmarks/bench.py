"""Benchmarks (``nox -s bench``): ratios measured on one machine in one run, never asserted in tests.

1. Fusion: plain sampling time per sample (and while recording the reference cache), fused-target time per target
   with the cache and with replay (the target pass; the policy log-prob pass apart), their ratios, UNet evaluations
   per target-step (a CFG pair counts once), the records' size, peak memory per phase, and whether cache and replay
   gave the same targets bit for bit.
2. Training: seconds per epoch split into sampling, fusion, scoring and update, per method with and without fusion.

Runs on the embedded model when it is installed, else on a tiny random pipeline (``--arch tiny``); ``--arch sd21``
builds SD 2.1-base's UNet with random weights (``--sample-size 64`` = 512 px; for a GPU: ``--device cuda --dtype fp16
--skip-training``). Prints tables and writes ``benchmarks/results.json``.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from dfusion_bench.devices import pick_dtype
from dfusion_bench.fusion import FusionConfig, fuse_triples, select_triples
from dfusion_bench.fusion.cache import recording
from dfusion_bench.models.choice import ModelChoice
from dfusion_bench.models.loading import EMBEDDED_MODEL
from dfusion_bench.rl.config import OptimSettings, TrainConfig
from dfusion_bench.rl.trainer import Trainer
from dfusion_bench.sampling import sample
from dfusion_bench.seeding import sample_seeds
from dfusion_bench.settings import SamplerConfig
from dfusion_bench.suites import load_suite

MIB = 2**20


def _model(arch: str, workdir: Path, sample_size: int | None) -> tuple[Path, str, str]:
    if arch == "embedded" and (EMBEDDED_MODEL / "model_index.json").is_file():
        return EMBEDDED_MODEL, "shapes-objects", "verifier"
    from dfusion_bench.models.tiny import save_tiny_pipeline

    arch = "tiny" if arch == "embedded" else arch
    return save_tiny_pipeline(workdir / arch, arch=arch, sample_size=sample_size), "paper-t1", "compressibility"


class Phase:
    """Wall time, this process's CPU time and peak memory of a block: CUDA's peak allocation on a GPU, else the
    process's peak resident set (VmHWM, reset at the start through /proc/self/clear_refs where Linux allows it)."""

    def __init__(self, device: torch.device):
        self.device, self.seconds, self.cpu_seconds, self.peak_mib = device, 0.0, 0.0, None

    def __enter__(self) -> Phase:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            try:
                Path("/proc/self/clear_refs").write_text("5")
            except OSError:
                pass
        self.t0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak_mib = torch.cuda.max_memory_allocated() / MIB
        else:
            status = Path("/proc/self/status")
            found = re.search(r"VmHWM:\s+(\d+) kB", status.read_text()) if status.exists() else None
            self.peak_mib = int(found.group(1)) / 1024 if found else None
        self.seconds, self.cpu_seconds = time.perf_counter() - self.t0, time.process_time() - self.c0


def _same(a, b) -> bool:
    return all(torch.equal(getattr(a, k), getattr(b, k)) for k in ("latents", "log_probs", "images"))


def bench_fusion(model: Path, template: str, prompts: int, per_prompt: int, device, dtype) -> dict:
    """The full pairing by rank (N/2 targets per prompt, as if every reference beat its base: the cost does not depend
    on the scores), fused with the cache and with replay from the same samples. Times are given twice: wall seconds,
    and this process's CPU seconds (on a CPU shared with other jobs, the comparable figure; equal when alone with one
    thread). Ratios compare like with like: CPU time on a CPU, wall time on a GPU."""
    pipe = ModelChoice.check(model).load(device, dtype)
    entries = list(load_suite(template).train)[:prompts]
    sampler, config = SamplerConfig(), FusionConfig(reference_cache="on")
    seed_rows = sample_seeds(0, 0, len(entries), per_prompt)
    work = [(e.prompt, s) for e, row in zip(entries, seed_rows, strict=True) for s in row]
    texts, seeds = [w[0] for w in work], [w[1] for w in work]
    items = {e.prompt: e for e in entries}
    sample(pipe, texts[:1], seeds[:1], sampler)  # warm-up (kernels, allocator)
    with Phase(device) as plain_phase:
        plain = sample(pipe, texts, seeds, sampler)
    with Phase(device) as record_phase:
        with recording(pipe, None, config, items, texts, sampler.num_steps) as rec:
            recorded = sample(pipe, texts, seeds, sampler, before_call=rec.before_call)
    groups = [list(range(k * per_prompt, (k + 1) * per_prompt)) for k in range(len(entries))]
    rank = -np.concatenate([np.arange(per_prompt, dtype=float)] * len(entries))
    triples = select_triples(groups, rank, config.reference_fraction, config.reference_uses)
    cache = rec.cache
    cache.keep({t.reference for t in triples})
    with Phase(device) as cache_phase:
        cached = fuse_triples(pipe, recorded, triples, items, config, references=cache)
    cache.release()
    with Phase(device) as replay_phase:
        replayed = fuse_triples(pipe, recorded, triples, items, FusionConfig(reference_cache="off"))
    n, g = len(plain), len(triples)
    key = "cpu_s" if device.type == "cpu" else "s"

    def per(seconds: dict[str, float], count: int) -> dict[str, float]:
        return {k: v / count for k, v in seconds.items()}

    out = {
        "model": str(model),
        "device": str(device),
        "dtype": str(dtype),
        "samples": n,
        "targets": g,
        "plain_per_sample": per({"s": plain_phase.seconds, "cpu_s": plain_phase.cpu_seconds}, n),
        "recording_per_sample": per({"s": record_phase.seconds, "cpu_s": record_phase.cpu_seconds}, n),
        "fusion_per_target_cache": per({"s": cached.timing["targets_s"], "cpu_s": cached.timing["targets_cpu_s"]}, g),
        "fusion_per_target_replay": per(
            {"s": replayed.timing["targets_s"], "cpu_s": replayed.timing["targets_cpu_s"]}, g
        ),
        "policy_log_probs_per_target": per(
            {"s": cached.timing["policy_log_probs_s"], "cpu_s": cached.timing["policy_log_probs_cpu_s"]}, g
        ),
        "unet_evals_per_target_step_cache": cached.evals_per_target_step(),
        "unet_evals_per_target_step_replay": replayed.evals_per_target_step(),
        "unet_evals_per_target_step_cache_with_policy_log_probs": cached.evals_per_target_step(True),
        "unet_evals_per_target_step_replay_with_policy_log_probs": replayed.evals_per_target_step(True),
        "record_mib_per_reference": cache.choice.bytes_per_reference / MIB,
        "record_mib_all_samples": cache.sizes["recorded_bytes"] / MIB,
        "record_mib_kept": cache.sizes["kept_bytes"] / MIB,
        "peak_mib": {
            "plain_sampling": plain_phase.peak_mib,
            "recording_sampling": record_phase.peak_mib,
            "fusion_cache": cache_phase.peak_mib,
            "fusion_replay": replay_phase.peak_mib,
        },
        "recording_leaves_samples_bit_identical": _same(plain, recorded),
        "cache_equals_replay_bit_identical": _same(cached.targets, replayed.targets)
        and torch.equal(cached.masks, replayed.masks),
        "ratio_time": key,
    }
    base = out["plain_per_sample"][key]
    out["ratio_recording"] = out["recording_per_sample"][key] / base
    out["ratio_cache"] = out["fusion_per_target_cache"][key] / base
    out["ratio_replay"] = out["fusion_per_target_replay"][key] / base
    out["ratio_policy_log_probs"] = out["policy_log_probs_per_target"][key] / base
    return out


def fusion_table(f: dict) -> Table:
    where = f"{Path(f['model']).name}, {f['device']}, {f['dtype']}"
    table = Table(title=f"D-Fusion cost ({f['samples']} samples, {f['targets']} targets, {where})")
    for col in ("", "cache", "replay"):
        table.add_column(col)

    def secs(d: dict[str, float], ratio: float | None = None) -> str:
        text = f"{d['s']:.3f} s, {d['cpu_s']:.3f} CPU s"
        return text if ratio is None else f"{text} ({ratio:.2f}x)"

    table.add_row("plain sampling, per sample", secs(f["plain_per_sample"]), "")
    table.add_row("sampling while recording, per sample", secs(f["recording_per_sample"], f["ratio_recording"]), "")
    table.add_row(
        "fusion (target pass), per target",
        secs(f["fusion_per_target_cache"], f["ratio_cache"]),
        secs(f["fusion_per_target_replay"], f["ratio_replay"]),
    )
    table.add_row(
        "policy log-probs, per target", secs(f["policy_log_probs_per_target"], f["ratio_policy_log_probs"]), ""
    )
    table.add_row(
        "UNet evals per target-step",
        f"{f['unet_evals_per_target_step_cache']:.3f}",
        f"{f['unet_evals_per_target_step_replay']:.3f}",
    )
    table.add_row(
        "  with the policy log-probs",
        f"{f['unet_evals_per_target_step_cache_with_policy_log_probs']:.3f}",
        f"{f['unet_evals_per_target_step_replay_with_policy_log_probs']:.3f}",
    )
    table.add_row(
        "records, MiB: per reference / all samples / kept",
        f"{f['record_mib_per_reference']:.2f} / {f['record_mib_all_samples']:.1f} / {f['record_mib_kept']:.1f}",
        "",
    )
    peak = {k: ("n/a" if v is None else f"{v:.0f}") for k, v in f["peak_mib"].items()}
    sampling_peaks = f"{peak['plain_sampling']} / {peak['recording_sampling']}"
    table.add_row("peak memory MiB: plain / recording sampling", sampling_peaks, "")
    table.add_row("peak memory MiB: fusion", peak["fusion_cache"], peak["fusion_replay"])
    table.add_row("recording leaves the samples bit-identical", str(f["recording_leaves_samples_bit_identical"]), "")
    table.add_row("cache = replay, targets bit-identical", str(f["cache_equals_replay_bit_identical"]), "")
    table.caption = f"ratios: to a plain sample, on {'CPU' if f['ratio_time'] == 'cpu_s' else 'wall'} time"
    return table


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
        "--arch",
        choices=("embedded", "tiny", "sd21"),
        default="embedded",
        help="the embedded model (the tiny pipeline when it is not installed), or a random-weight one",
    )
    parser.add_argument("--sample-size", type=int, default=None, help="latent side of --arch tiny/sd21")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None, help="fp32, fp16 or bf16 (default: fp16 on GPU, fp32 on CPU)")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--samples-per-prompt", type=int, default=8)
    parser.add_argument("--skip-training", action="store_true")
    args = parser.parse_args()
    console = Console(width=140)
    device = torch.device(args.device)
    dtype = pick_dtype(device, args.dtype)
    with tempfile.TemporaryDirectory() as tmp:
        model, template, scorer = _model(args.arch, Path(tmp), args.sample_size)
        fusion = bench_fusion(model, template, args.prompts, args.samples_per_prompt, device, dtype)
        console.print(fusion_table(fusion))
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
    results = {"fusion": fusion, "training": training, "threads": torch.get_num_threads()}
    out = Path(__file__).parent / "results.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    console.print(f"written {out}")


if __name__ == "__main__":
    main()
