"""The ceiling: best-of-group fine-tuning (RAFT, filtered SFT) of the policy on its own aligned samples, trained with
the diffusion loss instead of a score-function gradient.

Round r = 1..R, from the policy pi_{r-1} (the model with its LoRA adapters; pi_0 is the base model, B = 0):

1. For every train prompt c_p, draw N samples x0^{p,k} ~ pi_{r-1}(. | c_p) with DDIM (10 steps, eta 1, guidance 5),
   sample k of prompt p from the training seed ``seeding.sample_seeds(seed, r, P, N)[p][k]`` (the trainer's scheme,
   the round as its epoch; never an evaluation seed).
2. Score them with the verifier and keep K_r = {(p, k) : aligned(x0^{p,k}, c_p)} (``--keep aligned``), or the
   ``--top-k`` best of each prompt's group (``--keep top-k``, ties to the earlier sample).
3. Fine-tune the LoRA on K_r's final latents x0 (each trajectory's last latent) with the epsilon-prediction loss

       L(theta) = E_{(x0, c) ~ U(K_r), t ~ U{0, ..., T - 1}, eps ~ N(0, I)} || eps_theta(x_t, t, c') - eps ||^2,
       x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps   (the scheduler's add_noise),
       c' = "" with probability ``--uncond-prob`` (classifier-free guidance keeps its unconditional model), else c,

   ``--sft-steps`` AdamW steps of ``--batch-size`` rows (batches walk through fresh permutations of K_r), gradient
   norm clipped at 1; t, eps, the dropped prompts and the order come from one generator seeded by (seed, r)
   (:func:`sft_seed`, apart from every sample's seed).
4. Evaluate the train and test prompts with the trainer's fixed seeds and sampler (``evaluation.evaluate``, 20
   steps), so the rows of ``metrics.jsonl`` are those ``dfusion train`` writes for the same prompts and seeds.

With a 0/1 reward the loss is maximum likelihood (the simplified ELBO) on pi_{r-1} conditioned on alignment: with
many samples its minimiser is pi_r(x0 | c) = pi_{r-1}(x0 | c) 1[aligned] / P_{r-1}(aligned | c), so each round can
raise the aligned rate as far as the adapters can fit that distribution — the ceiling of what these samples teach. (The
samples come from the guided sampler, the loss fits the conditional model, and sampling guides again: a round
overshoots or undershoots that fixed point; it is a control, not an exact posterior.)

Output folder: ``config.json`` (the arguments; a rerun with the same ``--out`` resumes after the last finished round
and refuses other arguments, except a different ``--rounds``), ``metrics.jsonl`` (one row per epoch and split, as
``dfusion train``'s), ``rounds.jsonl`` (per round: kept samples in all and per prompt, the batch's scores, the loss,
the wall time of each phase), ``eval/epoch-NNNN/{train,test}.{csv,png}``, and ``round-NNNN/`` (``lora.safetensors``,
``optimizer.pt``, ``state.json`` written last: the round's completion mark; round 0 holds the initial adapters).

Usage (the defaults are the full run: 40 train prompts x 8 samples, 3 rounds of 300 steps of 32, evaluation of
40 x 4 images per split at 20 steps before and after each round). On one thread of a 2-core machine under load 3-4,
a smoke run measured 32-39 ms per sample and DDIM step when sampling, 23-35 ms when evaluating, 0.9-1.3 s per
fine-tuning step: per round 3200 sample-steps (100-125 s), 300 steps (275-390 s) and an evaluation of 6400
sample-steps (150-225 s), about 29-41 min with the first evaluation:
    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python -m experiments.control.ceiling --out runs/ceiling-spatial-s0
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dfusion_bench import atomic
from dfusion_bench.devices import pick_device, pick_dtype
from dfusion_bench.errors import UserError
from dfusion_bench.evaluation import evaluate, metrics_row, write_grid, write_samples
from dfusion_bench.guidance import encode_text
from dfusion_bench.models.choice import ModelChoice
from dfusion_bench.rl.config import LoraSettings, OptimSettings
from dfusion_bench.rl.lora import add_lora, load_lora, save_lora
from dfusion_bench.rollout import sample_and_score
from dfusion_bench.scorers import make_scorer
from dfusion_bench.scorers.base import Scores
from dfusion_bench.seeding import derive_seed, sample_seeds
from dfusion_bench.settings import BATCH_SIZE, SamplerConfig
from dfusion_bench.suites import load_suite

KEEP = ("aligned", "top-k")
METRICS, ROUNDS, CONFIG = "metrics.jsonl", "rounds.jsonl", "config.json"
#: Arguments that may differ when a run is resumed (more rounds extend it; the folder may have moved).
RESUMABLE = ("rounds", "out")
#: The last key of the fine-tuning generator's seed (see :func:`sft_seed`).
SFT_STREAM = 37
#: The trainer's evaluation sampler at its defaults: 20 DDIM steps, eta 1, guidance 5 (``TrainConfig.eval_sampler``).
EVAL_STEPS = SamplerConfig().num_steps


def kept_indices(scores: Scores, groups: list[list[int]], keep: str, top_k: int) -> list[list[int]]:
    """Per prompt group, the sample indices kept: the aligned ones, or the ``top_k`` highest scores (a stable
    sort: ties go to the earlier sample)."""
    if keep == "aligned":
        if scores.aligned is None:
            raise UserError("--keep aligned needs a scorer that tells full alignment (verifier); use --keep top-k")
        return [[i for i in group if scores.aligned[i]] for group in groups]
    return [sorted(sorted(group, key=lambda i: -scores.scores[i])[:top_k]) for group in groups]


def sft_seed(seed: int, r: int) -> int:
    """The seed of round r's fine-tuning draws (t, eps, dropped prompts, order): five keys, because
    ``derive_seed(a, b, c) == derive_seed(a, b, c, 0)`` (numpy's SeedSequence pads its entropy to four words), so a
    three-key seed would be the training seed of sample 0 of prompt c; five words hash apart from every four-key
    training seed ``(seed, r, p, k)``."""
    return derive_seed(seed, r, 0, 0, SFT_STREAM)


def round_dir(out: Path, r: int) -> Path:
    return out / f"round-{r:04d}"


def finished_rounds(out: Path) -> int | None:
    """The last round whose folder is complete (its ``state.json`` written), or None (not even round 0)."""
    done = [int(p.parent.name.split("-")[1]) for p in out.glob("round-*/state.json")]
    return max(done) if done else None


def _config(args: argparse.Namespace) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in sorted(vars(args).items())}


def check_resume(out: Path, config: dict[str, Any]) -> int | None:
    """Write ``config.json`` in a new folder, or check it against the one there; the last finished round or None."""
    path = out / CONFIG
    if not path.is_file():
        if out.exists() and any(out.iterdir()):
            raise UserError(f"{out} is not empty and holds no {CONFIG}: not a ceiling run; choose another --out")
        atomic.write_json(path, config)
        return None
    old = json.loads(path.read_text())
    changed = sorted(k for k in set(old) | set(config) if k not in RESUMABLE and old.get(k) != config.get(k))
    if changed:
        diff = ", ".join(f"--{k.replace('_', '-')} {old.get(k)} -> {config.get(k)}" for k in changed)
        raise UserError(f"{out} was started with other arguments ({diff}); give the same ones or another --out")
    atomic.write_json(path, config)  # --rounds may have changed
    return finished_rounds(out)


def read_rows(path: Path, last: int) -> list[dict[str, Any]]:
    """The rows of a JSON-lines file up to epoch/round ``last`` (a resumed run redoes the later ones)."""
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
    return [row for row in rows if row.get("epoch", row.get("round", 0)) <= last]


def write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    atomic.write_text(path, "".join(atomic.json_line(row) + "\n" for row in rows))


def diffusion_loss(unet, scheduler, x0: torch.Tensor, context: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """The epsilon-prediction loss of clean latents ``x0`` (B, C, h, w) under their text ``context`` (B, L, D),
    with t and eps drawn from ``gen`` (on the CPU)."""
    param = next(unet.parameters())
    eps = torch.randn(x0.shape, generator=gen)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (len(x0),), generator=gen)
    x_t = scheduler.add_noise(x0.float(), eps, t)
    pred = unet(x_t.to(param.device, param.dtype), t.to(param.device), encoder_hidden_states=context).sample
    return F.mse_loss(pred.float(), eps.to(pred.device))


def fine_tune(
    pipe, params, optimizer, x0: torch.Tensor, prompts: list[str], args: argparse.Namespace, gen: torch.Generator
) -> list[float]:
    """``args.sft_steps`` optimizer steps on the kept samples; the per-step losses."""
    unet, dtype = pipe.unet, next(pipe.unet.parameters()).dtype
    text = encode_text(pipe, prompts)  # the prompts' embeddings and the empty prompt's, as sampling encodes them
    losses: list[float] = []
    order = torch.empty(0, dtype=torch.long)
    unet.train()
    for _ in range(args.sft_steps):
        while len(order) < args.batch_size:
            order = torch.cat([order, torch.randperm(len(x0), generator=gen)])
        rows, order = order[: args.batch_size], order[args.batch_size :]
        drop = (torch.rand(len(rows), generator=gen) < args.uncond_prob).to(text.cond.device)
        context = torch.where(drop[:, None, None], text.uncond[rows], text.cond[rows]).to(dtype)
        loss = diffusion_loss(unet, pipe.scheduler, x0[rows], context, gen)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, OptimSettings().grad_clip)
        optimizer.step()
        losses.append(float(loss.detach()))
    optimizer.zero_grad(set_to_none=True)
    unet.eval()
    return losses


class Ceiling:
    """One run: the pipeline with its adapters, the optimizer, the suite's prompts, the verifier."""

    def __init__(self, args: argparse.Namespace):
        self.args, self.out = args, Path(args.out)
        suite = load_suite(args.template)
        self.train = list(suite.prompts("train", args.prompts))
        self.eval_entries = {s: list(suite.prompts(s, args.eval_prompts or args.prompts)) for s in ("train", "test")}
        self.choice = ModelChoice.check(args.model)
        self.device = pick_device(args.device)
        prompts = [e.prompt for e in self.train + self.eval_entries["train"] + self.eval_entries["test"]]
        self.scorer = make_scorer(args.scorer, self.choice, prompts, self.device)
        if args.keep == "aligned" and self.scorer.name != "verifier":
            raise UserError(f"--keep aligned needs the verifier (the {self.scorer.name} scorer cannot tell full "
                            "alignment); use --keep top-k")  # fmt: skip
        self.dtype = pick_dtype(self.device, args.dtype)
        self.sampler = SamplerConfig(num_steps=args.steps, eta=args.eta, guidance_scale=args.guidance)
        self.eval_sampler = SamplerConfig(num_steps=args.eval_steps, eta=args.eta, guidance_scale=args.guidance)
        self.samples_seen, self.elapsed = 0, 0.0

    def load(self) -> None:
        """The pipeline with the trainer's LoRA adapters (B = 0: the base model) and their AdamW."""
        self.pipe = self.choice.load(self.device, self.dtype)
        self.params = add_lora(self.pipe.unet, LoraSettings(), self.args.seed)
        optim = OptimSettings()
        self.optimizer = torch.optim.AdamW(
            self.params, lr=self.args.lr, betas=optim.betas, weight_decay=optim.weight_decay
        )

    def evaluate(self, epoch: int) -> tuple[list[dict[str, Any]], float]:
        """The metrics rows of both splits (``dfusion train``'s shape), and the time taken."""
        t0, rows = time.perf_counter(), []
        folder = self.out / "eval" / f"epoch-{epoch:04d}"
        self.pipe.unet.eval()
        for split, entries in self.eval_entries.items():
            with torch.no_grad():
                result = evaluate(
                    self.pipe, [self.scorer], entries, self.args.eval_samples_per_prompt, self.eval_sampler,
                    self.args.sample_batch_size,
                )  # fmt: skip
            summary = result.summary[self.scorer.name]
            write_samples(folder / f"{split}.csv", result)
            write_grid(folder / f"{split}.png", result)
            rows.append(metrics_row(epoch, split, summary, self.scorer.name, self.samples_seen, self.elapsed))
        return rows, time.perf_counter() - t0

    def save(self, r: int, state: dict[str, Any]) -> None:
        folder = round_dir(self.out, r)
        save_lora(self.pipe.unet, folder / "lora.safetensors")
        atomic.write_torch(folder / "optimizer.pt", self.optimizer.state_dict())
        atomic.write_json(folder / "state.json", state)  # last: the round is complete

    def restore(self, r: int) -> None:
        folder = round_dir(self.out, r)
        load_lora(self.pipe.unet, folder / "lora.safetensors")
        self.optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
        state = json.loads((folder / "state.json").read_text())
        self.samples_seen, self.elapsed = state["samples_seen"], state["elapsed"]

    def round(self, r: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Sample, keep, fine-tune, evaluate: the round's log row and its metrics rows."""
        args, t0 = self.args, time.perf_counter()
        seeds = sample_seeds(args.seed, r, len(self.train), args.samples_per_prompt)
        with torch.no_grad():
            samples = sample_and_score(self.pipe, self.scorer, self.train, seeds, self.sampler, args.sample_batch_size)
        per_prompt = kept_indices(samples.scores, samples.groups, args.keep, args.top_k)
        kept = [i for group in per_prompt for i in group]
        t1 = time.perf_counter()
        gen = torch.Generator("cpu").manual_seed(sft_seed(args.seed, r))
        traj = samples.trajectories
        losses = []
        if kept:
            x0 = traj.latents[kept, -1]  # the final clean latents, in the UNet's (scaled) latent space
            losses = fine_tune(self.pipe, self.params, self.optimizer, x0, [traj.prompts[i] for i in kept], args, gen)
        t2 = time.perf_counter()
        self.samples_seen += len(traj)
        self.elapsed += t2 - t0
        metrics, eval_s = self.evaluate(r)
        scores = samples.scores
        log = {
            "round": r,
            "n_samples": len(traj),
            "kept": len(kept),
            "kept_per_prompt": [len(g) for g in per_prompt],
            "prompts_with_kept": sum(1 for g in per_prompt if g),
            "batch_mean_score": float(np.mean(scores.scores)),
            "batch_aligned_rate": None if scores.aligned is None else float(np.mean(scores.aligned)),
            "batch_fact_rates": scores.fact_rates() or None,
            "sft_steps": len(losses),
            "loss_first": losses[0] if losses else None,
            "loss_mean": float(np.mean(losses)) if losses else None,
            "loss_last_10": float(np.mean(losses[-10:])) if losses else None,
            "samples_seen": self.samples_seen,
            "timing": {
                "sampling_s": samples.timing["sampling_s"],
                "scoring_s": samples.timing["scoring_s"],
                "sft_s": t2 - t1,
                "eval_s": eval_s,
            },
        }
        return log, metrics

    def run(self) -> None:
        args, out = self.args, self.out
        last = check_resume(out, _config(args))  # after every check that can refuse the arguments
        self.load()
        metrics = read_rows(out / METRICS, -1 if last is None else last)
        log = read_rows(out / ROUNDS, -1 if last is None else last)
        if last is None:
            rows, eval_s = self.evaluate(0)
            write_rows(out / METRICS, metrics + rows)
            metrics += rows
            self.save(0, {"round": 0, "samples_seen": 0, "elapsed": 0.0})
            print(f"epoch 0: {_aligned(rows)}; eval {eval_s:.0f}s", flush=True)
            last = 0
        else:
            self.restore(last)
            print(f"resuming after round {last} of {args.rounds}", flush=True)
        for r in range(last + 1, args.rounds + 1):
            row, rows = self.round(r)
            metrics += rows
            log.append(row)
            write_rows(out / METRICS, metrics)
            write_rows(out / ROUNDS, log)
            self.save(r, {"round": r, "samples_seen": self.samples_seen, "elapsed": self.elapsed})
            timing = row["timing"]
            print(
                f"round {r}: kept {row['kept']}/{row['n_samples']} ({row['prompts_with_kept']}/{len(self.train)} "
                f"prompts), batch aligned {_rate(row['batch_aligned_rate'])}, loss {_rate(row['loss_mean'])}; "
                f"{_aligned(rows)}; sampling {timing['sampling_s'] + timing['scoring_s']:.0f}s "
                f"sft {timing['sft_s']:.0f}s eval {timing['eval_s']:.0f}s",
                flush=True,
            )


def _rate(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def _aligned(rows: list[dict[str, Any]]) -> str:
    return ", ".join(
        f"{row['split']} aligned {_rate(row['aligned_rate'])} (mean {row['mean_score']:.3f})" for row in rows
    )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.control.ceiling", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True, help="run folder (a rerun with the same one resumes)")
    p.add_argument("--template", default="shapes-spatial", help="prompt suite (default shapes-spatial)")
    p.add_argument("--model", type=Path, default=None, help="pipeline folder (default: the embedded model)")
    p.add_argument("--scorer", default=None, help="default: the model's (verifier for the embedded model)")
    p.add_argument("--prompts", type=int, default=None, help="first K train prompts sampled (default: all)")
    p.add_argument("--samples-per-prompt", type=int, default=8, help="N samples per prompt and round (default 8)")
    p.add_argument("--rounds", type=int, default=3, help="rounds R (default 3)")
    p.add_argument("--steps", type=int, default=10, help="DDIM steps of the rounds' samples (default 10)")
    p.add_argument("--eta", type=float, default=SamplerConfig().eta, help="DDIM eta (default 1)")
    p.add_argument("--guidance", type=float, default=SamplerConfig().guidance_scale, help="CFG scale (default 5)")
    p.add_argument("--keep", choices=KEEP, default="aligned", help="aligned samples, or the top-k of each prompt")
    p.add_argument("--top-k", type=int, default=2, help="samples kept per prompt with --keep top-k (default 2)")
    p.add_argument("--sft-steps", type=int, default=300, help="optimizer steps per round (default 300)")
    p.add_argument("--batch-size", type=int, default=32, help="rows per optimizer step (default 32)")
    p.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate (default 1e-4)")
    p.add_argument("--uncond-prob", type=float, default=0.1, help="share of rows trained on the empty prompt")
    p.add_argument("--eval-samples-per-prompt", type=int, default=4, help="fixed eval seeds per prompt (default 4)")
    p.add_argument(
        "--eval-steps", type=int, default=EVAL_STEPS, help=f"DDIM steps of evaluation (default {EVAL_STEPS})"
    )
    p.add_argument(
        "--eval-prompts", type=int, default=None, help="first K prompts of each split evaluated (default: --prompts)"
    )
    p.add_argument("--sample-batch-size", type=int, default=BATCH_SIZE.default, help="images per sampling batch")
    p.add_argument("--seed", type=int, default=0, help="seed of the run: LoRA init, training seeds, SFT draws")
    p.add_argument("--device", default=None, help="cpu or cuda (default: accelerate's choice)")
    p.add_argument("--dtype", default=None, help="fp32, fp16 or bf16 (default: fp32 on CPU, fp16 on GPU)")
    return p


def main(argv: list[str] | None = None) -> None:
    p = parser()
    args = p.parse_args(argv)
    positive = ("prompts", "eval_prompts", "samples_per_prompt", "rounds", "steps", "top_k", "batch_size")
    for name in (*positive, "eval_samples_per_prompt", "eval_steps", "sample_batch_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.sft_steps < 0 or not 0 <= args.uncond_prob <= 1:
        p.error("--sft-steps must be >= 0 and --uncond-prob in [0, 1]")
    args.out = args.out.expanduser().resolve()
    if args.model is not None:
        args.model = args.model.expanduser().resolve()
    try:
        Ceiling(args).run()
    except UserError as exc:
        p.exit(2, f"error: {exc}\n")


if __name__ == "__main__":
    main()
