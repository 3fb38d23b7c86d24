"""The three RL methods as strategies of one trainer: what data each trains on, and its loss at one denoising step.

- ``dpo`` (D3PO, Yang et al. 2024): pairs (winner, loser) that share their initial noise; at every step j,
  L = -log sigmoid(beta (log rho_w - log rho_l)), rho = clip(pi_theta / pi_ref, 1 - eps, 1 + eps) on that step's
  log-probs, pi_ref the pretrained model (adapters disabled). With fusion the pairs are (target, base); without,
  (reference, base) from the same ranking and pairing — so the winner's visual consistency is the only difference.
- ``ddpo`` (Black et al. 2024): PPO's clipped surrogate, max(-A r, -A clip(r, 1 - d, 1 + d)), r = pi_theta / pi_old
  against the sampling-time log-probs of the unmodified policy; A standardised per prompt and clipped.
- ``pg`` (REINFORCE; DDPO's "SF" variant): -A * sum_t log pi_theta, one update per batch; ``kl_weight`` adds DPOK's
  KL surrogate w * mean((eps_theta - eps_ref)^2) against the adapters-disabled model (Fan et al. 2023).
With fusion, ddpo and pg add the targets to the batch with their own scores and policy log-probs.

Every loss also returns per-row diagnostics, averaged over an epoch's updates into ``train_log.jsonl``, as
ddpo-pytorch logs them: ``approx_kl`` = 0.5 (log pi_theta - log pi_old)^2 (dpo: against pi_ref) and ``clipped``,
whether the row's ratio lay outside its clip range (ddpo: |r - 1| > d; dpo: |log rho| beyond log(1 +- eps)).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import StableDiffusionPipeline, UNet2DConditionModel

from dfusion_bench.guidance import TextConditioning, encode_text, guided_output
from dfusion_bench.pairs import Pairs
from dfusion_bench.rl.advantages import PerPromptStats, group_advantages
from dfusion_bench.rl.config import TrainConfig
from dfusion_bench.rl.lora import reference_policy
from dfusion_bench.sampling import recompute_log_probs, transition
from dfusion_bench.trajectories import Trajectories


@dataclass
class Policy:
    """The pieces a loss needs: the pipeline (scheduler, device), the trainable UNet (possibly wrapped for
    distributed training) and the plain module (for no-grad passes, e.g. the reference policy)."""

    pipe: StableDiffusionPipeline
    model: torch.nn.Module
    unet: UNet2DConditionModel
    config: TrainConfig


@dataclass
class Examples:
    """One epoch's training data. ``trajs[0]`` holds the examples (dpo: winners, ``trajs[1]`` losers)."""

    trajs: list[Trajectories]
    texts: list[TextConditioning]
    ref_log_probs: list[torch.Tensor]  # dpo: reference-policy log-probs per trajectory set
    old_log_probs: torch.Tensor | None = None  # ddpo/pg: sampling-time log-probs (B, T)
    advantages: torch.Tensor | None = None  # ddpo/pg: (B,)
    info: dict[str, float] = field(default_factory=dict)  # what the epoch's data held, for the training log

    def __len__(self) -> int:
        return len(self.trajs[0])


@dataclass
class StepLoss:
    """A loss on some rows at one denoising step each: the scalar to backpropagate and per-row diagnostics."""

    loss: torch.Tensor
    diagnostics: dict[str, torch.Tensor]


Steps = int | Sequence[int]  # one denoising step for every row, or one per row


class Method:
    """One RL method. ``sum_over_steps``: the per-step losses are summed (pg) rather than averaged."""

    name = ""
    sum_over_steps = False

    def examples_per_step(self, config: TrainConfig, n: int) -> int:
        """Examples per optimizer step when an epoch holds ``n``: ``--train-batch-size``."""
        return config.optim.batch_size

    def prepare(self, policy: Policy, pairs: Pairs, stats: PerPromptStats) -> Examples:
        raise NotImplementedError

    def step_loss(self, policy: Policy, data: Examples, idx: list[int], step: Steps) -> StepLoss:
        raise NotImplementedError


def _text(pipe: StableDiffusionPipeline, traj: Trajectories) -> TextConditioning:
    return encode_text(pipe, traj.prompts)


def _select(text: TextConditioning, idx: list[int]) -> TextConditioning:
    return text.select(torch.as_tensor(idx, dtype=torch.long, device=text.cond.device))


def _at(values: torch.Tensor, idx: list[int], step: Steps) -> torch.Tensor:
    """``values[idx, step]`` of a (B, T) table, with ``step`` one index for all rows or one per row."""
    rows = torch.as_tensor(idx, dtype=torch.long)
    steps = torch.as_tensor(step if isinstance(step, int) else list(step), dtype=torch.long).expand(len(rows))
    return values[rows, steps]


def _approx_kl(logp: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """ddpo-pytorch's per-row approximate KL, 0.5 (log pi - log pi_old)^2."""
    return 0.5 * (logp.detach() - old) ** 2


def winning_pairs(pairs: Pairs, config: TrainConfig) -> list[int]:
    """Indices of the triples DPO trains on: all, or (``dpo.require_win``) those whose winner — the fused target
    with fusion, the reference without — scores strictly higher than the base."""
    if not config.dpo.require_win or not pairs.triples:
        return list(range(len(pairs.triples)))
    scores = pairs.samples.scores.scores
    if config.fusion:
        winner = pairs.target_scores.scores
    else:
        winner = scores[[t.reference for t in pairs.triples]]
    return [i for i, t in enumerate(pairs.triples) if winner[i] > scores[t.base]]


class DPO(Method):
    name = "dpo"

    def prepare(self, policy: Policy, pairs: Pairs, stats: PerPromptStats) -> Examples:
        traj, keep = pairs.samples.trajectories, winning_pairs(pairs, policy.config)
        info = {"pairs": float(len(pairs.triples)), "pairs_trained": float(len(keep))}
        if not keep:  # nothing to learn from this epoch (the update is skipped)
            none = traj.select([])
            return Examples([none, none], [], [], info=info)
        losers = traj.select([pairs.triples[i].base for i in keep])
        if policy.config.fusion:
            winners = pairs.fusion.targets.select(keep)
        else:
            winners = traj.select([pairs.triples[i].reference for i in keep])
        with reference_policy(policy.unet):
            refs = [recompute_log_probs(policy.pipe, t, unet=policy.unet) for t in (winners, losers)]
        return Examples([winners, losers], [_text(policy.pipe, winners), _text(policy.pipe, losers)], refs, info=info)

    def step_loss(self, policy: Policy, data: Examples, idx: list[int], step: Steps) -> StepLoss:
        cfg = policy.config
        w, lo = data.trajs
        text = TextConditioning(
            torch.cat([_select(data.texts[0], idx).cond, _select(data.texts[1], idx).cond]),
            torch.cat([_select(data.texts[0], idx).uncond, _select(data.texts[1], idx).uncond]),
        )
        latents = torch.cat([w.latents[idx], lo.latents[idx]])
        both = step if isinstance(step, int) else [*step, *step]
        _, logp = transition(policy.pipe, policy.model, text, latents, w.timesteps, both, cfg.sampler)
        ref = torch.cat([_at(data.ref_log_probs[0], idx, step), _at(data.ref_log_probs[1], idx, step)])
        ref = ref.to(logp.device)
        low, high = math.log(1 - cfg.dpo.eps), math.log(1 + cfg.dpo.eps)
        raw = logp - ref
        lr_w, lr_l = raw.clamp(low, high).chunk(2)
        clipped = ((raw.detach() < low) | (raw.detach() > high)).float()
        diagnostics = {
            "approx_kl": _approx_kl(logp, ref).view(2, -1).mean(0),
            "clipped": clipped.view(2, -1).mean(0),
            "winner_ahead": (lr_w.detach() > lr_l.detach()).float(),  # the implicit reward prefers the winner
        }
        return StepLoss(-F.logsigmoid(cfg.dpo.beta * (lr_w - lr_l)).mean(), diagnostics)


class _Advantaged(Method):
    """Shared data preparation of ddpo and pg: samples (plus fused targets) with per-prompt advantages."""

    def prepare(self, policy: Policy, pairs: Pairs, stats: PerPromptStats) -> Examples:
        cfg = policy.config.ddpo
        traj, scores = pairs.samples.trajectories, pairs.samples.scores.scores
        n_targets = 0
        if policy.config.fusion and pairs.fusion is not None:
            traj = Trajectories.cat([traj, pairs.fusion.targets])
            scores = np.concatenate([scores, pairs.target_scores.scores])
            n_targets = len(pairs.fusion.targets)
        if cfg.advantages == "group":
            adv, informative = group_advantages(traj.prompts, scores, cfg.adv_std)
        else:
            adv, informative = stats.advantages(traj.prompts, scores), np.ones(len(scores), dtype=bool)
        info = {
            "reward_mean": float(np.mean(scores)),
            "reward_std": float(np.std(scores)),
            "zero_advantage_share": float(np.mean(adv == 0)),
            "targets": float(n_targets),
        }
        if cfg.advantages == "group" and cfg.drop_flat_groups:
            keep = np.flatnonzero(informative).tolist()
            traj, adv = traj.select(keep), adv[keep]
        info["examples_trained"] = float(len(traj))
        return Examples(
            [traj],
            [_text(policy.pipe, traj)] if len(traj) else [],
            [],
            old_log_probs=traj.log_probs,
            advantages=torch.as_tensor(adv, dtype=torch.float32),
            info=info,
        )


class DDPO(_Advantaged):
    name = "ddpo"

    def step_loss(self, policy: Policy, data: Examples, idx: list[int], step: Steps) -> StepLoss:
        cfg = policy.config.ddpo
        traj = data.trajs[0]
        _, logp = transition(
            policy.pipe,
            policy.model,
            _select(data.texts[0], idx),
            traj.latents[idx],
            traj.timesteps,
            step,
            policy.config.sampler,
        )
        adv = data.advantages[idx].to(logp.device).clamp(-cfg.adv_clip_max, cfg.adv_clip_max)
        old = _at(data.old_log_probs, idx, step).to(logp.device)
        ratio = torch.exp(logp - old)
        unclipped = -adv * ratio
        clipped = -adv * ratio.clamp(1.0 - cfg.clip_range, 1.0 + cfg.clip_range)
        diagnostics = {
            "approx_kl": _approx_kl(logp, old),
            "clipped": ((ratio.detach() - 1.0).abs() > cfg.clip_range).float(),
        }
        return StepLoss(torch.maximum(unclipped, clipped).mean(), diagnostics)


class PG(_Advantaged):
    name = "pg"
    sum_over_steps = True

    def examples_per_step(self, config: TrainConfig, n: int) -> int:
        """One REINFORCE step on the whole epoch (DDPO's SF variant), or minibatches of ``--train-batch-size``."""
        return n if config.pg.full_batch else config.optim.batch_size

    def step_loss(self, policy: Policy, data: Examples, idx: list[int], step: Steps) -> StepLoss:
        cfg = policy.config
        traj, text = data.trajs[0], _select(data.texts[0], idx)
        eps, logp = transition(policy.pipe, policy.model, text, traj.latents[idx], traj.timesteps, step, cfg.sampler)
        adv = data.advantages[idx].to(logp.device)
        loss = -(adv * logp).mean()
        diagnostics = {"approx_kl": _approx_kl(logp, _at(data.old_log_probs, idx, step).to(logp.device))}
        if cfg.pg.kl_weight > 0:
            rows = torch.as_tensor(idx, dtype=torch.long)
            steps = torch.as_tensor(step if isinstance(step, int) else list(step), dtype=torch.long)
            with torch.no_grad(), reference_policy(policy.unet):
                x_t = traj.latents[rows, steps.expand(len(rows))].to(eps.device)
                t = traj.timesteps[steps.expand(len(rows))]
                eps_ref = guided_output(policy.unet, x_t, t, text, cfg.sampler.guidance_scale)
            sq = (eps - eps_ref) ** 2
            loss = loss + cfg.pg.kl_weight * sq.mean()
            diagnostics["kl_surrogate"] = sq.detach().mean(dim=tuple(range(1, sq.ndim)))
        return StepLoss(loss, diagnostics)


METHODS: dict[str, type[Method]] = {"dpo": DPO, "ddpo": DDPO, "pg": PG}
