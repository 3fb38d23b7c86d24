"""Denoising trajectories: what a sampler produced, stored so that training can score it again.

One :class:`Trajectories` holds B samples of the same sampler configuration: their prompts and seeds, the DDIM
timesteps, every latent x_T … x_0, the per-step log-probabilities under the policy that owns them, and the decoded
images. It saves to one safetensors file (tensors) whose metadata holds the prompts, seeds and configuration.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

from dfusion_bench import atomic
from dfusion_bench.errors import UserError
from dfusion_bench.settings import SamplerConfig


@dataclass
class Trajectories:
    prompts: list[str]
    seeds: list[int]
    timesteps: torch.Tensor  # (T,) long
    latents: torch.Tensor  # (B, T + 1, C, h, w) float32: x_T ... x_0
    log_probs: torch.Tensor  # (B, T) float32: log p(x_{t-1} | x_t, c), mean over latent dimensions
    images: torch.Tensor  # (B, 3, H, W) float32 in [0, 1]
    config: SamplerConfig = field(default_factory=SamplerConfig)

    def __len__(self) -> int:
        return len(self.prompts)

    def select(self, index: list[int] | torch.Tensor) -> Trajectories:
        idx = torch.as_tensor(index, dtype=torch.long)
        return Trajectories(
            prompts=[self.prompts[i] for i in idx.tolist()],
            seeds=[self.seeds[i] for i in idx.tolist()],
            timesteps=self.timesteps,
            latents=self.latents[idx],
            log_probs=self.log_probs[idx],
            images=self.images[idx],
            config=self.config,
        )

    @staticmethod
    def cat(parts: list[Trajectories]) -> Trajectories:
        first = parts[0]
        for p in parts[1:]:
            if p.config != first.config or not torch.equal(p.timesteps, first.timesteps):
                raise ValueError("cannot concatenate trajectories of different sampler configurations")
        return Trajectories(
            prompts=[p for part in parts for p in part.prompts],
            seeds=[s for part in parts for s in part.seeds],
            timesteps=first.timesteps,
            latents=torch.cat([p.latents for p in parts]),
            log_probs=torch.cat([p.log_probs for p in parts]),
            images=torch.cat([p.images for p in parts]),
            config=first.config,
        )

    def save(self, path: str | Path) -> Path:
        tensors = {
            "timesteps": self.timesteps.cpu().contiguous(),
            "latents": self.latents.cpu().float().contiguous(),
            "log_probs": self.log_probs.cpu().float().contiguous(),
            "images": self.images.cpu().float().contiguous(),
        }
        meta = {
            "prompts": json.dumps(self.prompts),
            "seeds": json.dumps(self.seeds),
            "config": json.dumps(asdict(self.config)),
        }
        return atomic.write_safetensors(path, tensors, metadata=meta)  # equal trajectories, equal bytes

    @staticmethod
    def load(path: str | Path) -> Trajectories:
        path = Path(path)
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as fh:
                meta = fh.metadata()
            tensors = load_file(str(path))
            return Trajectories(
                prompts=json.loads(meta["prompts"]),
                seeds=json.loads(meta["seeds"]),
                timesteps=tensors["timesteps"],
                latents=tensors["latents"],
                log_probs=tensors["log_probs"],
                images=tensors["images"],
                config=SamplerConfig(**json.loads(meta["config"])),
            )
        except Exception as exc:  # safetensors raises its own error types on corrupt files
            raise UserError(
                f"{path} is not a readable trajectories file ({exc}); re-run the command that wrote it"
            ) from None
