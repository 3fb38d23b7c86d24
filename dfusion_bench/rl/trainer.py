"""The training loop shared by every method: sample → score → pairs (and fused targets) → update → evaluate.

One process on CPU, or several under ``accelerate launch``: each process samples, scores and fuses its share of the
epoch and gathers the rest, so all hold the same data; the update splits each minibatch across processes and
averages gradients (DDP), so LoRA weights stay identical everywhere (checked after every update). The amount of data
per epoch and per optimizer step is fixed by the configuration, never by the number of processes.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.progress import Progress

from dfusion_bench import atomic, imaging, runlock
from dfusion_bench.devices import pick_dtype, use_cpu
from dfusion_bench.distributed import Distributor, launch_warning, requested_processes
from dfusion_bench.errors import Interrupted, UserError, write_failure
from dfusion_bench.evaluation import evaluate, metrics_row, write_grid, write_samples
from dfusion_bench.models.choice import ModelChoice
from dfusion_bench.pairs import build_pairs
from dfusion_bench.progress import advance_callback, progress_bar
from dfusion_bench.rl import checkpoint, tracking
from dfusion_bench.rl.advantages import PerPromptStats
from dfusion_bench.rl.config import OptimSettings, TrainConfig
from dfusion_bench.rl.lora import add_lora, lora_state
from dfusion_bench.rl.lora import state_digest as _digest
from dfusion_bench.rl.methods import METHODS, Examples, Method, Policy
from dfusion_bench.rollout import sample_and_score
from dfusion_bench.runinfo import check_out_dir, write_run_info
from dfusion_bench.scorers import make_scorer
from dfusion_bench.seeding import sample_seeds
from dfusion_bench.suites import load_suite

METRICS = "metrics.jsonl"
TRAIN_LOG = checkpoint.TRAIN_LOG


def _truncate_jsonl(path: Path, max_epoch: int) -> None:
    """Keep the rows of epochs <= max_epoch (a resumed run redoes the later ones); drop a torn last line."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if row.get("epoch", 0) <= max_epoch:
            keep.append(atomic.json_line(row))
    atomic.write_text(path, "".join(k + "\n" for k in keep))


def trained_steps(n_steps: int, optim: OptimSettings) -> tuple[int, int]:
    """(steps eligible for training, steps trained per example): the first ``n_steps - exclude_last_steps``
    denoising steps are eligible, and ``timestep_fraction`` of them (at least one) are drawn per example."""
    eligible = n_steps - optim.exclude_last_steps
    return eligible, max(1, round(optim.timestep_fraction * eligible))


def step_plan(rng: np.random.Generator, rows: int, eligible: int, k: int, sampling: str) -> np.ndarray:
    """The denoising steps each of ``rows`` examples trains on, (rows, k), each row sorted: all eligible steps when
    ``k == eligible``; else ``k`` drawn without replacement, once for the whole minibatch (``shared``) or per row
    (``per-sample``)."""
    if k >= eligible:
        return np.tile(np.arange(eligible), (rows, 1))
    if sampling == "shared":
        return np.tile(np.sort(rng.choice(eligible, size=k, replace=False)), (rows, 1))
    return np.stack([np.sort(rng.choice(eligible, size=k, replace=False)) for _ in range(rows)])


def epoch_prompts(n_prompts: int, per_epoch: int | None, seed: int, epoch: int) -> list[int]:
    """Indices of the train prompts sampled in ``epoch``: all of them, or ``per_epoch`` drawn afresh each epoch
    (sorted; a pure function of the run's seed and the epoch)."""
    if per_epoch is None or per_epoch >= n_prompts:
        return list(range(n_prompts))
    rng = np.random.default_rng([seed, epoch, 29])
    return sorted(rng.choice(n_prompts, size=per_epoch, replace=False).tolist())


class Trainer:
    def __init__(
        self,
        config: TrainConfig,
        out: Path,
        device: str | None = None,
        dtype: str | None = None,
        log_with: tuple[str, ...] = (),
    ):
        from accelerate import Accelerator

        self.cfg, self.out = config, Path(out)
        self.accelerator = Accelerator(cpu=use_cpu(device), log_with=list(log_with) or None, project_dir=str(self.out))
        self.dist = Distributor(self.accelerator if self.accelerator.num_processes > 1 else None)
        warning = launch_warning(self.dist.world, requested_processes())
        if warning and self.dist.is_main:
            print(warning, file=sys.stderr)
        suite = load_suite(config.template)
        self.train_entries = list(suite.train)[: config.prompts]
        self.test_entries = list(suite.test)[: config.prompts]
        self.choice = ModelChoice.check(Path(config.model) if config.model else None)
        self.device = self.accelerator.device
        self.dtype = pick_dtype(self.device, dtype)
        prompts = [e.prompt for e in self.train_entries + self.test_entries]
        self.scorer = make_scorer(
            config.scorer,
            self.choice,
            prompts,
            self.device,
            config.clip_model,
            Path(config.clip_checkpoint) if config.clip_checkpoint else None,
        )
        self.method: Method = METHODS[config.method]()
        self.pipe = self.choice.load(self.device, self.dtype)
        self.unet = self.pipe.unet
        if config.fusion:  # the fused layers and the mask grid must exist in this UNet: checked before any write
            from dfusion_bench.fusion import FusionPlan

            FusionPlan.resolve(self.unet, config.fusion_settings, config.sampler.num_steps)
        params = add_lora(self.unet, config.lora, config.seed)
        optimizer = torch.optim.AdamW(
            params, lr=config.lr, betas=config.optim.betas, weight_decay=config.optim.weight_decay
        )
        self.model, self.optimizer = self.accelerator.prepare(self.unet, optimizer)
        self.params = params
        self.policy = Policy(self.pipe, self.model, self.unet, config)
        self.stats = PerPromptStats(config.ddpo.stat_buffer, config.ddpo.stat_min_count)
        self.samples_seen = 0
        self.elapsed = 0.0
        self.last_digests: list[str] = []

    # ---- bookkeeping ---------------------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "stats": self.stats.state_dict(),
            "samples_seen": self.samples_seen,
            "elapsed": self.elapsed,
        }

    def _restore(self, epoch: int) -> None:
        state = checkpoint.load(self.out, epoch, self.unet)
        self.optimizer.load_state_dict(state["optimizer"])
        self.stats.load_state_dict(state["stats"])
        self.samples_seen, self.elapsed = state["samples_seen"], state["elapsed"]

    def _log(self, name: str, row: dict[str, Any]) -> None:
        if self.dist.is_main:
            atomic.append_json(self.out / name, row)  # strict JSON: a NaN loss is logged as null
        if self.accelerator.trackers:  # the same row to the user's trackers (--log-with)
            prefix = f"eval/{row['split']}" if name == METRICS else "train"
            skip = {"epoch", "split", "samples_seen", "wall_time_s", "n"}
            self.accelerator.log(
                tracking.scalars({k: v for k, v in row.items() if k not in skip}, prefix), step=row["epoch"]
            )

    def _checkpoint(self, epoch: int) -> None:
        if self.dist.is_main:
            checkpoint.save(self.out, epoch, self.unet, self._state())
        self.dist.barrier()

    # ---- phases --------------------------------------------------------------------------------------------
    def _evaluate(self, epoch: int, progress: Progress) -> float:
        t0 = time.perf_counter()
        folder = self.out / "eval" / f"epoch-{epoch:04d}"
        splits = {"train": self.train_entries, "test": self.test_entries}
        for split in self.cfg.eval_splits:
            entries = splits[split]
            self.unet.eval()
            with torch.no_grad():
                result = evaluate(
                    self.pipe,
                    [self.scorer],
                    entries,
                    self.cfg.eval_samples_per_prompt,
                    self.cfg.eval_sampler,
                    self.cfg.batch_size,
                    progress=progress,
                    label=f"eval {split} (epoch {epoch})",
                    dist=self.dist,
                )
            summary = result.summary[self.scorer.name]
            if self.dist.is_main:
                write_samples(folder / f"{split}.csv", result)
                write_grid(folder / f"{split}.png", result)
                if self.accelerator.trackers:
                    tracking.log_image(
                        self.accelerator, f"eval/{split}/grid", imaging.read_png(folder / f"{split}.png"), epoch
                    )
            self._log(METRICS, metrics_row(epoch, split, summary, self.scorer.name, self.samples_seen, self.elapsed))
        return time.perf_counter() - t0

    def _update(self, epoch: int, data: Examples, progress: Progress) -> dict[str, float]:
        """All optimizer steps of one epoch; returns the mean per-step loss and the mean of each diagnostic."""
        cfg, n, n_steps = self.cfg, len(data), len(data.trajs[0].timesteps)
        if n == 0:
            return {"loss": float("nan")}
        self.unet.train()
        losses, diagnostics = [], {}
        eligible, k = trained_steps(n_steps, cfg.optim)
        weight = (eligible / k) if self.method.sum_over_steps else 1.0 / k
        world, rank = self.dist.world, self.dist.rank
        per_step = self.method.examples_per_step(cfg, n)
        micro = cfg.optim.micro_batch_size
        n_updates = cfg.optim.inner_epochs * -(-n // per_step)
        advance = advance_callback(progress, f"update ({self.method.name})", n_updates)
        for inner in range(cfg.optim.inner_epochs):
            rng = np.random.default_rng([cfg.seed, epoch, inner, 17])
            order = rng.permutation(n)
            for start in range(0, n, per_step):
                batch = order[start : start + per_step].tolist()
                plan = step_plan(rng, len(batch), eligible, k, cfg.optim.timestep_sampling)
                local, local_plan = batch[rank::world], plan[rank::world]
                n_chunks = math.ceil(math.ceil(len(batch) / world) / micro)  # chunks of the largest process share
                for c in range(n_chunks):
                    chunk = local[c * micro : (c + 1) * micro]
                    # this process's part of the minibatch mean (DDP averages over processes, hence * world);
                    # a process with no rows left still joins every gradient all-reduce, with weight 0
                    share = len(chunk) * world / len(batch)
                    rows, steps = (chunk, local_plan[c * micro : (c + 1) * micro]) if chunk else (batch[:1], plan[:1])
                    for p in range(k):
                        column = steps[:, p].tolist()
                        step = column[0] if cfg.optim.timestep_sampling == "shared" else column
                        out = self.method.step_loss(self.policy, data, rows, step)
                        self.accelerator.backward(out.loss * weight * share)
                        if chunk:
                            losses.append(float(out.loss.detach()))
                            for name, values in out.diagnostics.items():
                                diagnostics.setdefault(name, []).append(values.float().cpu())
                self.accelerator.clip_grad_norm_(self.params, cfg.optim.grad_clip)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                advance(1)
        self.unet.eval()
        self._check_in_sync()
        totals = {"loss": (float(np.sum(losses)), len(losses))}
        totals.update({name: (float(torch.cat(v).sum()), sum(len(x) for x in v)) for name, v in diagnostics.items()})
        summary = {}
        for name in totals:  # means over every process's rows
            parts = [t[name] for t in self.dist.gather([totals])]
            count = sum(c for _, c in parts)
            summary[name] = sum(s for s, _ in parts) / count if count else float("nan")
        return summary

    def _check_in_sync(self) -> list[str]:
        """SHA-256 of the LoRA weights on every process; they must agree (ddpo-pytorch #10 must not happen here)."""
        digests = self.dist.gather([_digest(lora_state(self.unet))])
        if len(set(digests)) != 1:
            raise RuntimeError(f"LoRA weights diverged across processes: {digests}")
        self.last_digests = digests
        return digests

    def _epoch(self, epoch: int, progress: Progress) -> None:
        cfg, timing = self.cfg, {}
        t0 = time.perf_counter()
        chosen = epoch_prompts(len(self.train_entries), cfg.prompts_per_epoch, cfg.seed, epoch)
        all_seeds = sample_seeds(cfg.seed, epoch, len(self.train_entries), cfg.samples_per_prompt)
        with torch.no_grad():
            samples = sample_and_score(
                self.pipe,
                self.scorer,
                [self.train_entries[p] for p in chosen],
                [all_seeds[p] for p in chosen],  # a prompt's seeds do not depend on which others were drawn
                cfg.sampler,
                cfg.batch_size,
                progress=progress,
                label=f"epoch {epoch}: sampling",
                dist=self.dist,
                fusion=cfg.fusion_settings if cfg.fusion else None,  # sampling records the references for fusion
            )
            timing.update(samples.timing)
            pairs = build_pairs(
                self.pipe,
                self.scorer,
                samples,
                cfg.fusion_settings,
                fuse=cfg.fusion,
                batch_size=cfg.batch_size,
                progress=progress,
                dist=self.dist,
            )
            timing["fusion_s"] = pairs.timing.get("fusion_s", 0.0)  # fused targets + their policy log-probs
            timing["scoring_s"] += pairs.timing.get("scoring_s", 0.0)  # scoring the targets
            data = self.method.prepare(self.policy, pairs, self.stats)
        t2 = time.perf_counter()
        update = self._update(epoch, data, progress)
        timing["update_s"] = time.perf_counter() - t2
        self.samples_seen += len(samples.trajectories)
        self.elapsed += time.perf_counter() - t0
        timing["eval_s"] = 0.0
        if epoch % cfg.eval_every == 0 or epoch == cfg.epochs:
            timing["eval_s"] = self._evaluate(epoch, progress)
        beats = None
        if pairs.target_scores is not None and pairs.triples:
            base = samples.scores.scores[[t.base for t in pairs.triples]]
            beats = float(np.mean(pairs.target_scores.scores > base))
        self._log(
            TRAIN_LOG,
            {
                "epoch": epoch,
                **update,  # loss and the methods' diagnostics (approx_kl, clipped, ...)
                "batch_mean_score": float(np.mean(samples.scores.scores)),
                "batch_score_std": float(np.std(samples.scores.scores)),
                "batch_aligned_rate": None
                if samples.scores.aligned is None
                else float(np.mean(samples.scores.aligned)),
                "batch_fact_rates": samples.scores.fact_rates() or None,
                "prompts": [self.train_entries[p].prompt for p in chosen] if cfg.prompts_per_epoch else None,
                "n_pairs": len(pairs.triples),
                "n_examples": len(data),
                "data": data.info,  # rewards, zero-advantage share, pairs and targets trained
                "target_beats_base": beats,
                "pair_fact_rates": pairs.fact_rates() or None,  # facts held by references, bases, targets
                "samples_seen": self.samples_seen,
                "timing": timing,
                "lora_sha256_per_process": self.last_digests,
            },
        )
        self._checkpoint(epoch)

    # ---- entry point ---------------------------------------------------------------------------------------
    def run(self, resume: bool = False, overwrite: bool = False) -> Path:
        """Train from scratch (``overwrite``: empty a non-empty folder first) or from the latest checkpoint.

        The run folder is locked for the whole run (one writer per run); a fresh run that ends before its first
        checkpoint leaves nothing behind. An interrupt or a failed write ends in one line that names the last
        complete checkpoint and the command that resumes from it.
        """
        self._at: int | None = None
        with runlock.hold(self.out, self.dist, check=lambda: self._check_start(resume, overwrite)) as created:
            try:
                self._run(resume, overwrite)
            except BaseException as exc:
                latest = self._keep_or_discard(resume, created)
                if isinstance(exc, KeyboardInterrupt):
                    raise Interrupted(f"interrupted {self._where()}; {self._kept(latest, resume)}") from None
                failure = write_failure(exc, self._kept(latest, resume)) if isinstance(exc, OSError) else None
                if failure is not None:
                    raise failure from None
                raise
        return self.out

    def _check_start(self, resume: bool, overwrite: bool) -> None:
        """What must hold before the first write, checked once the folder is locked (another writer may have
        changed it since the command looked): a fresh run's folder is empty, a resumed run is not cut short."""
        if not resume:
            check_out_dir(self.out, overwrite)
            return
        latest = checkpoint.latest_epoch(self.out)
        if latest is None:
            raise UserError(f"--resume: {self.out} holds no checkpoint yet; start it afresh with --overwrite")
        if self.cfg.epochs < latest:
            raise UserError(
                f"--resume --epochs {self.cfg.epochs}: the run has finished epoch {latest} already; "
                f"give --epochs {latest} or more, or leave --epochs out"
            )

    def _keep_or_discard(self, resume: bool, created: bool) -> int | None:
        """After a failure: the last complete checkpoint's epoch, or None, in which case a fresh run's folder is
        emptied (and removed with the lock, if the run made it)."""
        try:
            latest = checkpoint.latest_epoch(self.out)
        except UserError:
            latest = None
        if latest is None and not resume and self.dist.is_main:
            try:
                runlock.discard(self.out)
            except OSError:  # the failure itself may stop the clean-up (a read-only place); report the failure
                pass
        return latest

    def _where(self) -> str:
        if self._at is None:
            return "before training started"
        return "at the first evaluation (epoch 0)" if self._at == 0 else f"at epoch {self._at} of {self.cfg.epochs}"

    def _kept(self, latest: int | None, resume: bool) -> str:
        """What a failed or interrupted run kept, and how to go on."""
        if latest is not None:
            return checkpoint.resume_hint(self.out, latest)
        if resume:
            return f"the checkpoints in {self.out / 'checkpoints'} were left as they were"
        return f"no checkpoint was complete, so nothing was kept in {self.out}; run the same command again"

    def _run(self, resume: bool, overwrite: bool) -> None:
        out = self.out
        start = 1
        if resume:
            latest = checkpoint.latest_epoch(out)
            if self.dist.is_main:
                runlock.sweep_held(out)  # what a killed run left half written
            self._restore(latest)
            if self.dist.is_main:
                _truncate_jsonl(out / METRICS, latest)
                _truncate_jsonl(out / TRAIN_LOG, latest)
                atomic.write_json(out / "config.json", self.cfg.to_dict())  # --epochs may have been raised
            start = latest + 1
        elif self.dist.is_main:
            if overwrite:
                runlock.discard(out)  # only the main process, and only once every process has started
            atomic.write_json(out / "config.json", self.cfg.to_dict())
            write_run_info(
                out, "train", self.cfg.to_dict(), {"seed": self.cfg.seed}, self.choice.path, processes=self.dist.world
            )
        self.dist.barrier()
        if self.accelerator.trackers or self.accelerator.log_with:
            self.accelerator.init_trackers(out.name, config=tracking.hyperparameters(self.cfg.to_dict()))
        with progress_bar(disable=not self.dist.is_main) as progress:
            if start == 1 and not resume:
                self._at = 0
                self._evaluate(0, progress)
                self._checkpoint(0)
            for epoch in range(start, self.cfg.epochs + 1):
                self._at = epoch
                self._epoch(epoch, progress)
        self.accelerator.end_training()
