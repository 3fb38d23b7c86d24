"""Is plain REINFORCE's gradient signal or noise? The signal-to-noise ratio of pg's per-sample policy gradients.

One epoch of a pg run rebuilt exactly as the trainer makes it (its configuration, its sampling seeds, the verifier's
scores, group advantages with the batch's std, flat groups left out), at the base model with the trainer's freshly
initialised LoRA. For every example i that pg trains on, the gradient over all LoRA parameters (flattened) of its
loss term, g_i = d/dW sum_t pg.step_loss(i, t) = -A_i d/dW sum_t log pi(x_{t-1} | x_t), with pg's own step loss (so
the package's transition log-prob); and per denoising step t, g_{i,t}. A minibatch of B examples steps along their
mean, so with mean gradient g = mean_i g_i and per-example covariance Sigma:

    tr(Sigma)     = sum_i |g_i - g|^2 / (n - 1)                  (unbiased)
    |g|^2_unb     = |g|^2 - tr(Sigma) / n                        (unbiased estimate of the true mean's |g|^2)
    SNR(B)        = |g|^2_unb / (tr(Sigma) / B)                  (signal over the noise of a B-example mean)
    B*            = tr(Sigma) / |g|^2_unb                        (the batch at which SNR = 1; none if |g|^2_unb <= 0)

with a check that does not rest on the formulas: the cosine between the mean gradients of two disjoint halves of the
examples (random halves within each prompt's group, and random halves of the prompts), near 0 when there is no
consistent direction, against the cosine the measured SNR predicts; a bootstrap over prompts for |g|^2_unb (its
97.5th percentile bounds B* from below); and the same SNR in Adam's metric, every coordinate divided by its root
mean square over the examples (Adam divides each coordinate by its own scale: noise in a coordinate without signal
becomes a full-size step there). The same
for the "positive-only" advantage max(A, 0) (g_i times 1[A_i > 0], exact since the loss is linear in A), and for the
plain diffusion loss |eps_theta(x_t, t, c) - eps|^2 on the final latents of the aligned samples (each prompt's best
sample when the scorer tells no alignment), one (t, eps) draw per sample: the best-of-group fine-tuning alternative;
beside it the same loss on all samples, and the difference of the two (rows (1[aligned] / q - 1) g_i, q the aligned
share, whose mean is exactly the aligned mean minus the overall mean): the part of that fine-tuning that depends on
the reward at all.

At the start LoRA's B matrices are zero, so the gradients with respect to the A matrices are exactly zero; the
statistics are over all LoRA parameters anyway, and the output says which carry gradient. The examples of one
prompt share their group's mean reward, so they are not quite independent; the formulas treat them as independent
(as the trainer's shuffled minibatches mix them), and the split-halves and the bootstrap over prompts check that.

Usage (the whole epoch of the runs that did not learn: 40 prompts x 8 samples, 10 DDIM steps, minibatches of 64):
    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python -m experiments.control.gradient_snr --out scratch/snr-spatial
Writes OUT/snr.json and OUT/snr.md (default OUT: results/control-snr) and prints the table.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import DDPMScheduler

from dfusion_bench import atomic
from dfusion_bench.guidance import encode_text
from dfusion_bench.models.sd_parts import NOISE_SCHEDULE
from dfusion_bench.pairs import build_pairs
from dfusion_bench.rl.advantages import PerPromptStats
from dfusion_bench.rl.config import DDPOSettings, OptimSettings, PGSettings, TrainConfig
from dfusion_bench.rl.methods import PG, Examples, Policy
from dfusion_bench.rl.trainer import Trainer
from dfusion_bench.rollout import ScoredSamples, sample_and_score
from dfusion_bench.seeding import derive_seed, sample_seeds
from dfusion_bench.settings import SamplerConfig
from dfusion_bench.trajectories import Trajectories
from experiments import RESULTS
from experiments.control.ceiling import diffusion_loss

OUT = RESULTS / "control-snr"
BATCH = 64  # --train-batch-size of the pg runs that did not learn
SPLITS = 200  # random split-halves averaged
BOOTSTRAP = 1000  # bootstrap resamples of the prompts
FIRST = 5  # a row for the sum over the first 5 steps: the pg runs with --exclude-last-steps 5
_SFT_KEY = 43  # derive_seed(seed, epoch, _SFT_KEY, sample's seed): the (t, eps) draw of its diffusion loss


# ---- the arithmetic --------------------------------------------------------------------------------------------
def moments(gram: np.ndarray, counts: np.ndarray | None = None) -> dict[str, float]:
    """|mean|^2, unbiased tr(Sigma) and |mean|^2_unb = |mean|^2 - tr(Sigma) / n of the vectors whose Gram matrix is
    ``gram`` (n x n). |mean|^2_unb is also the mean of g_i . g_j over the pairs i != j, and with ``counts`` (a
    bootstrap resample holding vector i ``counts[i]`` times) it is that mean over the pairs of distinct originals, so
    that a drawn-twice vector does not pass for signal."""
    c = np.ones(len(gram)) if counts is None else np.asarray(counts, dtype=np.float64)
    n, diag = float(c.sum()), np.diag(gram)
    sq_mean = float(c @ gram @ c) / n**2
    trace = (float(c @ diag) - n * sq_mean) / (n - 1) if n > 1 else math.nan
    pairs = n**2 - float(c @ c)
    unbiased = (float(c @ gram @ c) - float((c * c) @ diag)) / pairs if pairs > 0 else math.nan
    return {"n": n, "sq_mean": sq_mean, "trace": trace, "sq_mean_unbiased": unbiased}


def snr(sq_mean_unbiased: float, trace: float, batch: float) -> float:
    """SNR of the mean of ``batch`` examples: |g|^2_unb / (tr(Sigma) / B); inf without noise, nan without either."""
    if trace > 0:
        return sq_mean_unbiased * batch / trace
    return math.inf if sq_mean_unbiased > 0 else math.nan


def batch_for_snr_1(sq_mean_unbiased: float, trace: float) -> float:
    """B* = tr(Sigma) / |g|^2_unb, the batch whose mean has SNR 1; inf when no signal is measured (|g|^2_unb <= 0)."""
    return trace / sq_mean_unbiased if sq_mean_unbiased > 0 else math.inf


def half_cosine(gram: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """Cosine between the mean vectors of the index sets ``a`` and ``b``."""
    wa, wb = np.zeros(len(gram)), np.zeros(len(gram))
    wa[a], wb[b] = 1.0 / len(a), 1.0 / len(b)
    denominator = math.sqrt(max(float(wa @ gram @ wa), 0.0) * max(float(wb @ gram @ wb), 0.0))
    return float(wa @ gram @ wb) / denominator if denominator > 0 else math.nan


def predicted_cosine(sq_mean_unbiased: float, trace: float, na: int, nb: int) -> float:
    """The cosine of two independent half means of na and nb examples that the measured moments predict (ratio of
    expectations): |g|^2 / sqrt((|g|^2 + tr/na)(|g|^2 + tr/nb)), with |g|^2_unb clipped at 0."""
    signal = max(sq_mean_unbiased, 0.0)
    denominator = math.sqrt((signal + trace / na) * (signal + trace / nb))
    return signal / denominator if denominator > 0 else math.nan


def _summary(values: list[float]) -> dict[str, float]:
    finite = np.array([v for v in values if math.isfinite(v)])
    if len(finite) == 0:
        return {"mean": math.nan, "std": math.nan}
    return {"mean": float(finite.mean()), "std": float(finite.std(ddof=1)) if len(finite) > 1 else 0.0}


def snr_stats(
    grads: torch.Tensor,
    groups: list[list[int]],
    batch: int,
    seed: int,
    splits: int = SPLITS,
    bootstrap: int = BOOTSTRAP,
) -> dict[str, Any]:
    """Every statistic of the module's docstring for per-example gradients ``grads`` (n x P), whose examples fall in
    the prompt ``groups`` (lists of row indices); SNR at ``batch`` and at n (the whole epoch in one step)."""
    rows = grads.detach().double().cpu()
    n = rows.shape[0]
    gram = (rows @ rows.T).numpy()
    m = moments(gram)
    trace, unbiased = m["trace"], m["sq_mean_unbiased"]
    labels = np.zeros(n, dtype=int)
    for k, group in enumerate(groups):
        labels[group] = k
    same = labels[:, None] == labels[None, :]
    across_pairs = int((~same).sum())
    across = float(gram[~same].sum()) / across_pairs if across_pairs else math.nan
    out: dict[str, Any] = {
        "n": n,
        "sq_mean": m["sq_mean"],
        "sq_mean_unbiased": unbiased,
        "trace": trace,
        "mean_sq_norm": float(np.trace(gram)) / n,  # E|g_i|^2
        "batch": batch,
        "snr_batch": snr(unbiased, trace, batch),
        "snr_n": snr(unbiased, trace, n),
        "b_star": batch_for_snr_1(unbiased, trace),
        "signal_detected": bool(unbiased > 0),
        # g_i . g_j over pairs of examples of different prompts only: no pair shares a group mean, so this estimates
        # the part of |mean|^2 that the prompts have in common without the group baseline's coupling
        "sq_mean_across_prompts": across,
        "b_star_across_prompts": batch_for_snr_1(across, trace),
        "expected_sq_norm_batch": m["sq_mean"] - trace / n + trace / batch if n > 1 else math.nan,  # E|mean of B|^2
    }
    # Adam's metric: each coordinate divided by its root mean square over the examples (what Adam's second moment
    # estimates), then the same moments; under pure zero-mean noise |g|^2_unb is 0 in expectation here too
    scale = rows.pow(2).mean(0).sqrt()
    active = scale > 0
    white = rows[:, active] / scale[active]
    w_mean = white.mean(0)
    w_trace = float(white.var(0, unbiased=True).sum()) if n > 1 else math.nan
    w_unbiased = float(w_mean.pow(2).sum()) - w_trace / n
    out["coordinates_with_gradient"] = int(active.sum())
    out["whitened_sq_mean_unbiased"], out["whitened_trace"] = w_unbiased, w_trace
    out["whitened_snr_batch"] = snr(w_unbiased, w_trace, batch)
    out["whitened_b_star"] = batch_for_snr_1(w_unbiased, w_trace)
    rng = np.random.default_rng([seed, 101])
    within, predicted = [], []
    for _ in range(splits):  # halves within each prompt's group: both halves see every prompt
        a, b = [], []
        for group in groups:
            order = rng.permutation(group)
            first, second = order[: len(order) // 2], order[len(order) // 2 :]  # an odd group's extra: second
            if rng.random() < 0.5:
                first, second = second, first
            a.extend(first.tolist())
            b.extend(second.tolist())
        if a and b:
            within.append(half_cosine(gram, np.array(a), np.array(b)))
            predicted.append(predicted_cosine(unbiased, trace, len(a), len(b)))
    across_cos = []
    for _ in range(splits if len(groups) > 1 else 0):  # halves of the prompts
        order = rng.permutation(len(groups))
        a = [i for g in order[: len(groups) // 2] for i in groups[g]]
        b = [i for g in order[len(groups) // 2 :] for i in groups[g]]
        if a and b:
            across_cos.append(half_cosine(gram, np.array(a), np.array(b)))
    out["cos_halves_within_prompts"] = _summary(within)
    out["cos_predicted"] = _summary(predicted)["mean"]
    out["cos_halves_across_prompts"] = _summary(across_cos)
    boot = []
    for _ in range(bootstrap if len(groups) > 1 else 0):  # resample prompts (their groups) with replacement
        counts = np.zeros(n)
        for g in rng.integers(0, len(groups), len(groups)):
            counts[groups[g]] += 1
        if counts.sum() > 1:
            boot.append(moments(gram, counts)["sq_mean_unbiased"])
    if boot:
        low, high = np.percentile(boot, [2.5, 97.5])
        out["sq_mean_unbiased_ci95"] = [float(low), float(high)]
        out["b_star_lower_95"] = batch_for_snr_1(float(high), trace)
    else:
        out["sq_mean_unbiased_ci95"], out["b_star_lower_95"] = [math.nan, math.nan], math.nan
    return out


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    denominator = float(a.double().norm() * b.double().norm())
    return float(a.double() @ b.double()) / denominator if denominator > 0 else math.nan


# ---- the gradients ---------------------------------------------------------------------------------------------
def groups_of(prompts: list[str]) -> list[list[int]]:
    """Row indices of each distinct prompt, in order of first appearance."""
    found: dict[str, list[int]] = {}
    for i, p in enumerate(prompts):
        found.setdefault(p, []).append(i)
    return list(found.values())


def flat(grads: tuple[torch.Tensor | None, ...], params: list[torch.nn.Parameter]) -> torch.Tensor:
    return torch.cat(
        [
            (torch.zeros_like(p) if g is None else g).detach().flatten().float().cpu()
            for g, p in zip(grads, params, strict=True)
        ]
    )


def pg_gradients(policy: Policy, data: Examples, step: int, params: list[torch.nn.Parameter]) -> torch.Tensor:
    """(n, P): row i is the gradient of pg's loss on example i alone at denoising step ``step``, -A_i d log pi."""
    method = PG()
    rows = []
    for i in range(len(data)):
        loss = method.step_loss(policy, data, [i], step).loss
        rows.append(flat(torch.autograd.grad(loss, params, allow_unused=True), params))
    return torch.stack(rows)


def sft_rows(samples: ScoredSamples) -> list[int]:
    """The samples the best-of-group alternative trains on: the aligned ones, or each prompt's best without
    alignment (a scorer that cannot tell it)."""
    if samples.scores.aligned is not None:
        return np.flatnonzero(samples.scores.aligned).tolist()
    return [group[int(np.argmax(samples.scores.scores[group]))] for group in samples.groups if group]


def sft_gradients(
    trainer: Trainer, traj: Trajectories, seed: int, epoch: int, params: list[torch.nn.Parameter]
) -> torch.Tensor:
    """(n, P): row i is the gradient of the plain diffusion loss mean |eps_theta(x_t, t, c) - eps|^2 on sample i's
    final latent, at one (t, eps) drawn from a seed of the sample's own (t uniform over the training timesteps)."""
    schedule = DDPMScheduler(**NOISE_SCHEDULE)
    text = encode_text(trainer.pipe, traj.prompts)
    rows = []
    for i in range(len(traj)):
        gen = torch.Generator("cpu").manual_seed(derive_seed(seed, epoch, _SFT_KEY, int(traj.seeds[i]) % 2**62))
        dtype = next(trainer.unet.parameters()).dtype
        context = text.cond[i : i + 1].to(trainer.device, dtype)
        loss = diffusion_loss(trainer.model, schedule, traj.latents[i, -1:].float(), context, gen)
        rows.append(flat(torch.autograd.grad(loss, params, allow_unused=True), params))
    return torch.stack(rows)


def parameter_report(names: list[str], params: list[torch.nn.Parameter], grads: torch.Tensor) -> dict[str, Any]:
    """Which LoRA parameters carry gradient (lora_A / lora_B, and per projection), with their shares of E|g_i|^2 and
    of |mean g|^2."""
    sizes = [p.numel() for p in params]
    bounds = np.cumsum([0, *sizes])
    per_row = grads.double() ** 2
    mean_sq = grads.double().mean(0) ** 2
    total_row, total_mean = float(per_row.sum()), float(mean_sq.sum())
    kinds: dict[str, dict[str, float]] = {}
    for name, lo, hi in zip(names, bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
        matrix = "lora_A" if ".lora_A." in name else "lora_B" if ".lora_B." in name else "other"
        projection = next((k for k in ("to_q", "to_k", "to_v", "to_out") if f".{k}." in name), "other")
        energy, signal = float(per_row[:, lo:hi].sum()), float(mean_sq[lo:hi].sum())
        for key in (matrix, f"{matrix} {projection}"):
            entry = kinds.setdefault(key, {"tensors": 0, "tensors_with_gradient": 0, "parameters": 0})
            entry["tensors"] += 1
            entry["tensors_with_gradient"] += int(energy > 0)
            entry["parameters"] += hi - lo
            entry["share_of_sq_norm"] = entry.get("share_of_sq_norm", 0.0) + energy / total_row if total_row else 0.0
            entry["share_of_sq_mean"] = entry.get("share_of_sq_mean", 0.0) + signal / total_mean if total_mean else 0.0
    return {"parameters": int(bounds[-1]), "tensors": len(params), "by_kind": kinds}


# ---- the measurement -------------------------------------------------------------------------------------------
def config_for(args: argparse.Namespace) -> TrainConfig:
    """The pg run whose first epoch is rebuilt: group advantages with the batch's std, minibatches of ``--batch``."""
    return TrainConfig(
        method="pg",
        template=args.template,
        model=args.model,
        scorer=args.scorer,
        prompts=args.prompts,
        samples_per_prompt=args.samples_per_prompt,
        seed=args.seed,
        sampler=SamplerConfig(num_steps=args.steps, guidance_scale=args.guidance),
        ddpo=DDPOSettings(advantages="group", adv_std="batch"),
        pg=PGSettings(full_batch=False),
        optim=OptimSettings(batch_size=args.batch),
    )


def _log(message: str, t0: float) -> None:
    print(f"[{time.perf_counter() - t0:7.1f} s] {message}", file=sys.stderr, flush=True)


def measure(
    config: TrainConfig,
    epoch: int = 1,
    device: str = "cpu",
    sft: bool = True,
    splits: int = SPLITS,
    bootstrap: int = BOOTSTRAP,
    first: int = FIRST,
) -> dict[str, Any]:
    """Everything snr.json holds, for the first epoch (``epoch``'s sampling seeds) of the pg run of ``config``."""
    torch.manual_seed(config.seed)
    with tempfile.TemporaryDirectory() as scratch:  # the trainer's run folder: nothing is written there
        trainer = Trainer(config, Path(scratch), device=device)  # the LoRA exactly as training creates it
        return _measure(trainer, config, epoch, sft, splits, bootstrap, first)


def _measure(
    trainer: Trainer, config: TrainConfig, epoch: int, sft: bool, splits: int, bootstrap: int, first: int
) -> dict[str, Any]:
    t0 = time.perf_counter()
    policy, params = trainer.policy, trainer.params
    names = [name for name, p in trainer.unet.named_parameters() if p.requires_grad]
    entries = trainer.train_entries
    seeds = sample_seeds(config.seed, epoch, len(entries), config.samples_per_prompt)
    with torch.no_grad():
        samples = sample_and_score(trainer.pipe, trainer.scorer, entries, seeds, config.sampler, config.batch_size)
        pairs = build_pairs(trainer.pipe, trainer.scorer, samples, config.fusion_settings, fuse=False)
        data = PG().prepare(policy, pairs, PerPromptStats(config.ddpo.stat_buffer, config.ddpo.stat_min_count))
    timing = {"sampling_s": time.perf_counter() - t0}
    _log(f"{len(samples.trajectories)} samples, {len(data)} examples with a nonzero-spread group", t0)
    advantages = data.advantages.double()
    header: dict[str, Any] = {
        "config": config.to_dict(),
        "epoch": epoch,
        "samples": len(samples.trajectories),
        "reward_mean": float(np.mean(samples.scores.scores)),
        "reward_std": float(np.std(samples.scores.scores)),
        "aligned_rate": None if samples.scores.aligned is None else float(np.mean(samples.scores.aligned)),
        "examples": len(data),
        "data": data.info,
        "advantages": {
            "mean_abs": float(advantages.abs().mean()) if len(data) else math.nan,
            "positive": int((advantages > 0).sum()),
            "negative": int((advantages < 0).sum()),
            "zero": int((advantages == 0).sum()),
        },
    }
    result: dict[str, Any] = {**header, "rows": [], "timing": timing}
    if len(data) < 2:
        result["note"] = "fewer than 2 examples with advantage: nothing to measure"
        return result
    groups = groups_of(data.trajs[0].prompts)
    positive = (advantages > 0).float()
    n_steps = len(data.trajs[0].timesteps)
    whole = torch.zeros(len(data), sum(p.numel() for p in params))
    first_k = whole.clone() if 0 < first < n_steps else None
    trainer.unet.train()  # as the trainer's update (LoRA dropout is 0: no randomness)
    t1 = time.perf_counter()

    def rows_for(label: str, grads: torch.Tensor) -> None:
        for variant, g in (("A", grads), ("max(A,0)", grads * positive[:, None])):
            row = snr_stats(g, groups, config.optim.batch_size, config.seed, splits, bootstrap)
            result["rows"].append({"loss": "pg", "steps": label, "advantage": variant, **row})

    for t in range(n_steps):
        step_grads = pg_gradients(policy, data, t, params)
        whole += step_grads
        if first_k is not None and t < first:
            first_k += step_grads
        rows_for(f"t={t}", step_grads)
        _log(f"step {t}: {len(data)} per-example gradients", t0)
    rows_for("all", whole)
    n_head = 2
    if first_k is not None:  # what --exclude-last-steps trains: the first ``first`` steps
        rows_for(f"t<{first}", first_k)
        n_head = 4
    result["rows"] = result["rows"][-n_head:] + result["rows"][:-n_head]  # the sums over steps first
    timing["pg_gradients_s"] = time.perf_counter() - t1
    result["parameters"] = parameter_report(names, params, whole)
    mean_pg = whole.double().mean(0)
    result["cos_mean_positive_only_vs_pg"] = cosine((whole * positive[:, None]).double().mean(0), mean_pg)
    if sft:
        t2 = time.perf_counter()
        traj = samples.trajectories
        grads = sft_gradients(trainer, traj, config.seed, epoch, params)  # every sample, one (t, eps) draw each
        chosen = sft_rows(samples)
        everything = list(range(len(traj)))
        # the part of fine-tuning on the chosen samples that depends on the reward: with q the chosen share, the rows
        # (1[chosen] / q - 1) g_i have as mean exactly (mean over the chosen) - (mean over all)
        weight = torch.full((len(traj),), -1.0)
        weight[chosen] += len(traj) / max(len(chosen), 1)
        variants = (
            ("eps-MSE (aligned)", chosen, grads),
            ("eps-MSE (all samples)", everything, grads),
            ("eps-MSE (aligned - all)", everything, grads * weight[:, None]),
        )
        for label, rows, values in variants:
            if len(rows) >= 2 and (label == "eps-MSE (all samples)" or len(chosen) >= 2):
                row = snr_stats(
                    values[rows], groups_of([traj.prompts[i] for i in rows]), config.optim.batch_size, config.seed,
                    splits, bootstrap,
                )  # fmt: skip
                result["rows"].append({"loss": label, "steps": "x_0", "advantage": "-", **row})
        if len(chosen) >= 2:
            aligned_mean = grads[chosen].double().mean(0)
            # minimising the diffusion loss on good samples and minimising pg's loss: do they point the same way?
            result["cos_mean_sft_vs_pg"] = cosine(aligned_mean, mean_pg)
            # and how much of fine-tuning on good samples is fine-tuning on any sample of the model's own?
            result["cos_mean_sft_aligned_vs_all"] = cosine(aligned_mean, grads.double().mean(0))
            result["cos_mean_sft_aligned_minus_all_vs_pg"] = cosine(aligned_mean - grads.double().mean(0), mean_pg)
        else:
            result["note"] = f"diffusion loss: {len(chosen)} aligned sample(s), fewer than 2: only all samples'"
        timing["sft_gradients_s"] = time.perf_counter() - t2
        _log(f"diffusion loss on {len(traj)} samples ({len(chosen)} aligned)", t0)
    trainer.unet.eval()
    timing["total_s"] = time.perf_counter() - t0
    return result


# ---- the outputs -----------------------------------------------------------------------------------------------
def _g(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, float) and math.isinf(x):
        return "∞"
    return f"{x:.{digits}g}"


def table(result: dict[str, Any]) -> str:
    """The Markdown of snr.md: what was sampled, which parameters carry gradient, and the table of rows."""
    cfg = result["config"]
    lines = [
        f"# Gradient SNR of pg at the base model ({cfg['template']}, epoch {result['epoch']}, seed {cfg['seed']})",
        "",
        f"{result['samples']} samples ({cfg['prompts']} prompts x {cfg['samples_per_prompt']}, "
        f"{cfg['sampler']['num_steps']} DDIM steps, eta {cfg['sampler']['eta']}, CFG {cfg['sampler']['guidance_scale']}"
        f"); reward mean {_g(result['reward_mean'])}, aligned rate {_g(result['aligned_rate'])}; "
        f"{result['examples']} examples in groups with spread (group advantages / batch std: "
        f"{result['advantages']['positive']} positive, {result['advantages']['negative']} negative, "
        f"{result['advantages']['zero']} zero; mean |A| {_g(result['advantages']['mean_abs'])}).",
        "",
    ]
    if "parameters" in result:
        kinds = result["parameters"]["by_kind"]
        carried = ", ".join(
            f"{k}: {v['tensors_with_gradient']}/{v['tensors']} tensors ({v['parameters']} parameters), "
            f"{100 * v.get('share_of_sq_norm', 0):.0f}% of E|g_i|^2"
            for k, v in kinds.items()
            if " " not in k
        )
        shares = ", ".join(
            f"{k.split()[1]} {100 * v.get('share_of_sq_norm', 0):.0f}%"
            for k, v in kinds.items()
            if k.startswith("lora_B ")
        )
        lines += [
            f"LoRA parameters: {result['parameters']['parameters']}; {carried}; lora_B by projection: {shares} "
            "(whole trajectory).",
            "",
        ]
    lines += [
        f"B = {cfg['optim']['batch_size']} (the minibatch); n = examples measured; E|g_i|^2 = mean squared norm of "
        "one example's gradient; tr Σ = the per-example noise (unbiased); |g|^2_unb = |mean|^2 - tr/n, with a 95% "
        "bootstrap interval over prompts; SNR(B) = |g|^2_unb / (tr/B); B* = tr / |g|^2_unb (∞: no signal measured), "
        "B* ≥ its 95% lower bound from the interval's top; |g|^2_x, B*_x: the same from pairs of examples of "
        "different prompts only; cos: mean (sd) over random split-halves, within each prompt's group and across "
        "prompts, and the within-prompt cosine the measured SNR predicts; Adam: SNR(B) and B* of the gradients with "
        "each coordinate divided by its RMS over the examples (Adam's metric).",
        "",
        "| loss | steps | adv | n | E\\|g_i\\|² | tr Σ | \\|g\\|²_unb [95%] | SNR(B) | B* | B* ≥ | \\|g\\|²_x "
        "| B*_x | cos within | cos pred | cos across | Adam SNR(B) | Adam B* |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        low, high = r["sq_mean_unbiased_ci95"]
        within, across = r["cos_halves_within_prompts"], r["cos_halves_across_prompts"]
        lines.append(
            f"| {r['loss']} | {r['steps']} | {r['advantage']} | {r['n']} | {_g(r['mean_sq_norm'])} | "
            f"{_g(r['trace'])} | {_g(r['sq_mean_unbiased'])} [{_g(low, 2)}, {_g(high, 2)}] | {_g(r['snr_batch'])} | "
            f"{_g(r['b_star'])} | {_g(r['b_star_lower_95'])} | {_g(r['sq_mean_across_prompts'])} | "
            f"{_g(r['b_star_across_prompts'])} | "
            f"{_g(within['mean'], 2)} ({_g(within['std'], 1)}) | {_g(r['cos_predicted'], 2)} | "
            f"{_g(across['mean'], 2)} ({_g(across['std'], 1)}) | {_g(r['whitened_snr_batch'])} | "
            f"{_g(r['whitened_b_star'])} |"
        )
    extra = []
    if "cos_mean_positive_only_vs_pg" in result:
        extra.append(f"cos(mean positive-only, mean pg) = {_g(result['cos_mean_positive_only_vs_pg'])}")
    if "cos_mean_sft_vs_pg" in result:
        extra.append(f"cos(mean eps-MSE on aligned, mean pg) = {_g(result['cos_mean_sft_vs_pg'])}")
        extra.append(f"cos(mean eps-MSE on aligned, on all) = {_g(result['cos_mean_sft_aligned_vs_all'])}")
        extra.append(f"cos(aligned minus all, mean pg) = {_g(result['cos_mean_sft_aligned_minus_all_vs_pg'])}")
    if extra:
        lines += ["", "; ".join(extra) + " (whole trajectory)."]
    if "note" in result:
        lines += ["", result["note"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.control.gradient_snr", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--template", default="shapes-spatial", help="prompt suite (default shapes-spatial)")
    parser.add_argument("--prompts", type=int, default=40, help="train prompts (default 40)")
    parser.add_argument("--samples-per-prompt", type=int, default=8, help="samples per prompt (default 8)")
    parser.add_argument("--steps", type=int, default=10, help="DDIM steps (default 10)")
    parser.add_argument("--guidance", type=float, default=SamplerConfig().guidance_scale, help="CFG scale (5)")
    parser.add_argument("--seed", type=int, default=0, help="the run's seed (LoRA init, sampling seeds; default 0)")
    parser.add_argument("--epoch", type=int, default=1, help="whose sampling seeds (default 1, the first epoch)")
    parser.add_argument("--batch", type=int, default=BATCH, help=f"minibatch B of SNR(B) (default {BATCH})")
    parser.add_argument("--model", default=None, help="pipeline folder (default: the embedded model)")
    parser.add_argument("--scorer", default=None, help="reward (default: the verifier on the embedded model)")
    parser.add_argument("--device", default="cpu", help="device (default cpu)")
    parser.add_argument("--splits", type=int, default=SPLITS, help=f"random split-halves (default {SPLITS})")
    parser.add_argument("--bootstrap", type=int, default=BOOTSTRAP, help=f"bootstrap resamples ({BOOTSTRAP})")
    parser.add_argument("--first", type=int, default=FIRST, help=f"a row for the first K steps' sum (default {FIRST})")
    parser.add_argument("--no-sft", action="store_true", help="leave out the diffusion-loss comparison")
    parser.add_argument("--out", type=Path, default=OUT, help="output folder (default results/control-snr)")
    args = parser.parse_args(argv)
    config = config_for(args)
    result = measure(config, args.epoch, args.device, not args.no_sft, args.splits, args.bootstrap, args.first)
    result["command"] = "python -m experiments.control.gradient_snr " + " ".join(sys.argv[1:] if argv is None else argv)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic.write_json(args.out / "snr.json", result)
    text = table(result)
    atomic.write_text(args.out / "snr.md", text)
    print(text, end="")


if __name__ == "__main__":
    main()
