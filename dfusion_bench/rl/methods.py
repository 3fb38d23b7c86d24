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
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import StableDiffusionPipeline, UNet2DConditionModel

from dfusion_bench.denoise import TextConditioning, encode_text, guided_output
from dfusion_bench.pairs import Pairs
from dfusion_bench.rl.advantages import PerPromptStats
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

    def __len__(self) -> int:
        return len(self.trajs[0])


class Method:
    """One RL method. ``sum_over_steps``: the per-step losses are summed (pg) rather than averaged."""

    name = ""
    sum_over_steps = False
    one_update_per_epoch = False

    def prepare(self, policy: Policy, pairs: Pairs, stats: PerPromptStats) -> Examples:
        raise NotImplementedError

    def step_loss(self, policy: Policy, data: Examples, idx: list[int], step: int) -> torch.Tensor:
        raise NotImplementedError


def _text(pipe: StableDiffusionPipeline, traj: Trajectories) -> TextConditioning:
    return encode_text(pipe, traj.prompts)


def _select(text: TextConditioning, idx: list[int]) -> TextConditioning:
    return text.select(torch.as_tensor(idx, dtype=torch.long, device=text.cond.device))


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
        if not keep:  # nothing to learn from this epoch (the update is skipped)
            none = traj.select([])
            return Examples([none, none], [], [])
        losers = traj.select([pairs.triples[i].base for i in keep])
        if policy.config.fusion:
            winners = pairs.fusion.targets.select(keep)
        else:
            winners = traj.select([pairs.triples[i].reference for i in keep])
        with reference_policy(policy.unet):
            refs = [recompute_log_probs(policy.pipe, t, unet=policy.unet) for t in (winners, losers)]
        return Examples([winners, losers], [_text(policy.pipe, winners), _text(policy.pipe, losers)], refs)

    def step_loss(self, policy: Policy, data: Examples, idx: list[int], step: int) -> torch.Tensor:
        cfg = policy.config
        w, lo = data.trajs
        text = TextConditioning(
            torch.cat([_select(data.texts[0], idx).cond, _select(data.texts[1], idx).cond]),
            torch.cat([_select(data.texts[0], idx).uncond, _select(data.texts[1], idx).uncond]),
        )
        latents = torch.cat([w.latents[idx], lo.latents[idx]])
        _, logp = transition(policy.pipe, policy.model, text, latents, w.timesteps, step, cfg.sampler)
        ref = torch.cat([data.ref_log_probs[0][idx, step], data.ref_log_probs[1][idx, step]]).to(logp.device)
        log_ratio = (logp - ref).clamp(math.log(1 - cfg.dpo.eps), math.log(1 + cfg.dpo.eps))
        lr_w, lr_l = log_ratio.chunk(2)
        return -F.logsigmoid(cfg.dpo.beta * (lr_w - lr_l)).mean()


class _Advantaged(Method):
    """Shared data preparation of ddpo and pg: samples (plus fused targets) with per-prompt advantages."""

    def prepare(self, policy: Policy, pairs: Pairs, stats: PerPromptStats) -> Examples:
        traj, scores = pairs.samples.trajectories, pairs.samples.scores.scores
        if policy.config.fusion and pairs.fusion is not None:
            traj = Trajectories.cat([traj, pairs.fusion.targets])
            scores = np.concatenate([scores, pairs.target_scores.scores])
        adv = stats.advantages(traj.prompts, scores)
        return Examples(
            [traj],
            [_text(policy.pipe, traj)],
            [],
            old_log_probs=traj.log_probs,
            advantages=torch.as_tensor(adv, dtype=torch.float32),
        )


class DDPO(_Advantaged):
    name = "ddpo"

    def step_loss(self, policy: Policy, data: Examples, idx: list[int], step: int) -> torch.Tensor:
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
        ratio = torch.exp(logp - data.old_log_probs[idx, step].to(logp.device))
        unclipped = -adv * ratio
        clipped = -adv * ratio.clamp(1.0 - cfg.clip_range, 1.0 + cfg.clip_range)
        return torch.maximum(unclipped, clipped).mean()


class PG(_Advantaged):
    name = "pg"
    sum_over_steps = True
    one_update_per_epoch = True

    def step_loss(self, policy: Policy, data: Examples, idx: list[int], step: int) -> torch.Tensor:
        cfg = policy.config
        traj, text = data.trajs[0], _select(data.texts[0], idx)
        eps, logp = transition(policy.pipe, policy.model, text, traj.latents[idx], traj.timesteps, step, cfg.sampler)
        adv = data.advantages[idx].to(logp.device)
        loss = -(adv * logp).mean()
        if cfg.pg.kl_weight > 0:
            with torch.no_grad(), reference_policy(policy.unet):
                x_t = traj.latents[idx, step].to(eps.device)
                eps_ref = guided_output(policy.unet, x_t, int(traj.timesteps[step]), text, cfg.sampler.guidance_scale)
            loss = loss + cfg.pg.kl_weight * ((eps - eps_ref) ** 2).mean()
        return loss


METHODS: dict[str, type[Method]] = {"dpo": DPO, "ddpo": DDPO, "pg": PG}
