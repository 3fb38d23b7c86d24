"""Pretraining of the embedded model on freshly rendered scenes, in three phases, as Stable Diffusion's parts were made:
the VAE; the text encoder, contrastively against an image encoder as CLIP's was (:mod:`.text_pretrain`); then the
UNet, by the diffusion loss with the text encoder frozen.

Every batch is a pure function of ``(seed, phase, step)``, so a run stopped at any checkpoint and resumed ends with the
same weights as an uninterrupted one. Diffusion training follows Stable Diffusion (epsilon prediction on VAE latents,
SD's noise schedule, 10% empty captions for classifier-free guidance) with two standard aids for a short CPU budget:
Min-SNR-γ loss weighting (Hang et al. 2023, γ = 5) and an EMA of the UNet's weights (decay 0.999), which is what ships.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from diffusers.training_utils import EMAModel

from dfusion_bench import atomic
from dfusion_bench.errors import UserError
from dfusion_bench.models.sd_parts import NOISE_SCHEDULE, assemble
from dfusion_bench.progress import progress_bar
from dfusion_bench.world import architecture
from dfusion_bench.world.render import draw
from dfusion_bench.world.scenes import training_example
from dfusion_bench.world.text_pretrain import (
    ContrastiveHeads,
    contrastive_batch,
    hard_negative_accuracy,
    pretraining_loss,
)
from dfusion_bench.world.tokenizer import build_tokenizer

MARKER = "dfusion_world.json"
CHECKPOINT = "checkpoint.pt"


@dataclass(frozen=True)
class PretrainConfig:
    seed: int = 0
    vae_steps: int = 1500
    text_steps: int = 1500
    text_batch_size: int = 256
    text_lr: float = 1e-3
    unet_steps: int = 6000
    batch_size: int = 64
    vae_lr: float = 1e-3
    lr: float = 5e-4
    warmup_steps: int = 200
    ema_decay: float = 0.999
    p_uncond: float = 0.1
    min_snr_gamma: float = 5.0
    checkpoint_every: int = 250


def scene_batch(seed: int, phase: int, step: int, n: int) -> tuple[torch.Tensor, list[str]]:
    """Images in [-1, 1], shape (n, 3, 32, 32), and their captions; a pure function of its arguments."""
    rng = np.random.default_rng([seed, phase, step])
    images, captions = [], []
    for _ in range(n):
        objects, text = training_example(rng)
        images.append(draw(objects).image)
        captions.append(text)
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)
    return x * 2.0 - 1.0, captions


def _generator(seed: int, phase: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(np.random.default_rng([seed, phase, step, 7]).integers(2**62)))


def _lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1.0 + np.cos(np.pi * min(progress, 1.0)))


class _State:
    """Everything a checkpoint holds."""

    def __init__(self, cfg: PretrainConfig):
        torch.manual_seed(cfg.seed)
        self.cfg = cfg
        self.tokenizer = build_tokenizer()
        self.vae = architecture.make_vae()
        self.unet = architecture.make_unet()
        self.text = architecture.make_text_encoder(self.tokenizer)
        self.heads = ContrastiveHeads()
        self.vae_opt = torch.optim.AdamW(self.vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
        text_params = [*self.text.parameters(), *self.heads.parameters()]
        self.text_opt = torch.optim.AdamW(text_params, lr=cfg.text_lr, weight_decay=1e-2)
        self.opt = torch.optim.AdamW(self.unet.parameters(), lr=cfg.lr, weight_decay=1e-2)
        self.ema_unet = EMAModel(self.unet.parameters(), decay=cfg.ema_decay)
        self.vae_step = 0
        self.text_step = 0
        self.unet_step = 0
        self.text_eval: dict[str, float] = {}

    @property
    def steps(self) -> int:
        return self.vae_step + self.text_step + self.unet_step

    def state_dict(self) -> dict:
        return {
            "config": dataclasses.asdict(self.cfg),
            "vae_step": self.vae_step,
            "text_step": self.text_step,
            "unet_step": self.unet_step,
            "text_eval": self.text_eval,
            "scaling_factor": self.vae.config.scaling_factor,
            "vae": self.vae.state_dict(),
            "unet": self.unet.state_dict(),
            "text": self.text.state_dict(),
            "heads": self.heads.state_dict(),
            "vae_opt": self.vae_opt.state_dict(),
            "text_opt": self.text_opt.state_dict(),
            "opt": self.opt.state_dict(),
            "ema_unet": self.ema_unet.state_dict(),
        }

    def load_state_dict(self, sd: dict) -> None:
        self.vae_step, self.text_step, self.unet_step = sd["vae_step"], sd["text_step"], sd["unet_step"]
        self.text_eval = sd["text_eval"]
        self.vae.register_to_config(scaling_factor=sd["scaling_factor"])
        self.vae.load_state_dict(sd["vae"])
        self.unet.load_state_dict(sd["unet"])
        self.text.load_state_dict(sd["text"])
        self.heads.load_state_dict(sd["heads"])
        self.vae_opt.load_state_dict(sd["vae_opt"])
        self.text_opt.load_state_dict(sd["text_opt"])
        self.opt.load_state_dict(sd["opt"])
        self.ema_unet.load_state_dict(sd["ema_unet"])


def _save_checkpoint(out: Path, state: _State) -> None:
    atomic.write_with(out / CHECKPOINT, lambda p: torch.save(state.state_dict(), p))


def _load_checkpoint(out: Path, cfg: PretrainConfig) -> dict:
    path = out / CHECKPOINT
    if not path.is_file():
        raise UserError(f"--resume: no checkpoint at {path}; start without --resume")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # a truncated or foreign file
        raise UserError(f"--resume: checkpoint {path} is unreadable ({exc}); delete it and start again") from exc
    if sd.get("config") != dataclasses.asdict(cfg):
        raise UserError(f"--resume: {path} was written with another configuration; use the same --seed and steps")
    return sd


def _train_vae(state: _State, stop: Callable[[], bool], out: Path) -> bool:
    cfg, vae = state.cfg, state.vae
    vae.train()
    with progress_bar() as bar:
        task = bar.add_task("VAE", total=cfg.vae_steps, completed=state.vae_step)
        while state.vae_step < cfg.vae_steps:
            if stop():
                return False
            x, _ = scene_batch(cfg.seed, 0, state.vae_step, cfg.batch_size)
            for group in state.vae_opt.param_groups:
                group["lr"] = cfg.vae_lr * _lr_factor(state.vae_step, cfg.vae_steps, cfg.warmup_steps)
            posterior = vae.encode(x).latent_dist
            z = posterior.sample(generator=_generator(cfg.seed, 0, state.vae_step))
            recon = vae.decode(z).sample
            loss = F.l1_loss(recon, x) + F.mse_loss(recon, x) + 1e-6 * posterior.kl().mean()
            state.vae_opt.zero_grad(set_to_none=True)
            loss.backward()
            state.vae_opt.step()
            state.vae_step += 1
            bar.update(task, advance=1, description=f"VAE loss {loss.item():.4f}")
            if state.vae_step % cfg.checkpoint_every == 0 or state.vae_step == cfg.vae_steps:
                if state.vae_step == cfg.vae_steps:
                    _set_scaling_factor(state)
                _save_checkpoint(out, state)
    return True


@torch.no_grad()
def _set_scaling_factor(state: _State) -> None:
    """SD's convention: latents are multiplied by 1 / (their standard deviation) before diffusion."""
    state.vae.eval()
    x, _ = scene_batch(state.cfg.seed, 2, 0, 512)
    z = state.vae.encode(x).latent_dist.sample(generator=_generator(state.cfg.seed, 2, 0))
    state.vae.register_to_config(scaling_factor=float(1.0 / z.std()))


def _train_text(state: _State, stop: Callable[[], bool], out: Path) -> bool:
    cfg, text, heads, tok = state.cfg, state.text, state.heads, state.tokenizer
    text.train()
    heads.train()
    params = [*text.parameters(), *heads.parameters()]
    with progress_bar() as bar:
        task = bar.add_task("text encoder", total=cfg.text_steps, completed=state.text_step)
        while state.text_step < cfg.text_steps:
            if stop():
                return False
            batch = contrastive_batch(cfg.seed, 3, state.text_step, cfg.text_batch_size)
            for group in state.text_opt.param_groups:
                group["lr"] = cfg.text_lr * _lr_factor(state.text_step, cfg.text_steps, cfg.warmup_steps)
            loss, parts = pretraining_loss(text, heads, tok, batch)
            state.text_opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            state.text_opt.step()
            state.text_step += 1
            description = f"text encoder: contrastive {parts['clip']:.3f} layout {parts['layout']:.3f}"
            bar.update(task, advance=1, description=description)
            if state.text_step % cfg.checkpoint_every == 0 or state.text_step == cfg.text_steps:
                if state.text_step == cfg.text_steps:
                    text.eval()
                    heads.eval()
                    state.text_eval = hard_negative_accuracy(text, heads, tok, cfg.seed)
                    atomic.write_json(out / "text_encoder_eval.json", state.text_eval)
                _save_checkpoint(out, state)
    return True


def _train_unet(state: _State, stop: Callable[[], bool], out: Path) -> bool:
    cfg, unet, text, vae, tok = state.cfg, state.unet, state.text, state.vae, state.tokenizer
    vae.eval().requires_grad_(False)
    text.eval().requires_grad_(False)
    unet.train()
    noise_schedule = DDPMScheduler(**NOISE_SCHEDULE)
    alphas = noise_schedule.alphas_cumprod
    snr = alphas / (1 - alphas)
    weights = torch.clamp(snr, max=cfg.min_snr_gamma) / snr
    with progress_bar() as bar:
        task = bar.add_task("UNet", total=cfg.unet_steps, completed=state.unet_step)
        while state.unet_step < cfg.unet_steps:
            if stop():
                return False
            step = state.unet_step
            gen = _generator(cfg.seed, 1, step)
            rng = np.random.default_rng([cfg.seed, 1, step, 1])
            x, captions = scene_batch(cfg.seed, 1, step, cfg.batch_size)
            captions = ["" if rng.random() < cfg.p_uncond else c for c in captions]
            ids = tok(captions, padding="max_length", max_length=tok.model_max_length, return_tensors="pt").input_ids
            with torch.no_grad():
                latents = vae.encode(x).latent_dist.sample(generator=gen) * vae.config.scaling_factor
                cond = text(ids)[0]
            noise = torch.randn(latents.shape, generator=gen)
            t = torch.randint(0, noise_schedule.config.num_train_timesteps, (len(x),), generator=gen)
            noisy = noise_schedule.add_noise(latents, noise, t)
            pred = unet(noisy, t, cond).sample
            per_sample = F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3))
            loss = (weights[t] * per_sample).mean()
            for group in state.opt.param_groups:
                group["lr"] = cfg.lr * _lr_factor(step, cfg.unet_steps, cfg.warmup_steps)
            state.opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
            state.opt.step()
            state.ema_unet.step(unet.parameters())
            state.unet_step += 1
            bar.update(task, advance=1, description=f"UNet loss {loss.item():.4f}")
            if state.unet_step % cfg.checkpoint_every == 0 or state.unet_step == cfg.unet_steps:
                _save_checkpoint(out, state)
    return True


def export_pipeline(state: _State, dest: Path) -> Path:
    """Write the EMA weights as a standard diffusers folder (atomically: built beside ``dest``, then renamed)."""
    state.ema_unet.copy_to(state.unet.parameters())
    pipe = assemble(state.vae, state.text, state.tokenizer, state.unet)
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(tmp, safe_serialization=True)
    marker = {
        "world": "shapes",
        "format": 1,
        "pretrain": dataclasses.asdict(state.cfg),
        "trained": {"vae_steps": state.vae_step, "text_steps": state.text_step, "unet_steps": state.unet_step},
        "text_encoder_hard_negative_accuracy": state.text_eval,
    }
    (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    atomic.replace_dir(tmp, dest)
    return dest


def pretrain(
    out: Path, cfg: PretrainConfig, minutes: float | None = None, resume: bool = False, stop_at: int | None = None
) -> Path | None:
    """Train (or resume) into ``out``; return the exported pipeline folder, or None if stopped early.

    ``minutes`` bounds the wall time of this call; ``stop_at`` stops once the steps of all phases reach that count.
    Either way the state is checkpointed and ``resume=True`` continues it to the same weights as an uninterrupted run.
    """
    out.mkdir(parents=True, exist_ok=True)
    if not resume and (out / CHECKPOINT).exists():
        raise UserError(f"{out} already holds a pretraining checkpoint; pass --resume to continue it")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    state = _State(cfg)
    if resume:
        state.load_state_dict(_load_checkpoint(out, cfg))
    atomic.write_json(out / "config.json", dataclasses.asdict(cfg))
    deadline = time.monotonic() + (minutes * 60 if minutes else float("inf"))

    def stop() -> bool:
        return time.monotonic() > deadline or (stop_at is not None and state.steps >= stop_at)

    phases = (_train_vae, _train_text, _train_unet)
    if not all(phase(state, stop, out) for phase in phases):
        _save_checkpoint(out, state)
        return None
    return export_pipeline(state, out / "pipeline")
