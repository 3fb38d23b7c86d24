"""What fusion keeps of a reference: its inputs to the fused self-attention layers and its item cross-attention maps,
per fused step.

A record is filled by the controller's ``record`` mode in either of two ways, with the same numbers on a CPU: while
the samples are drawn (the cache: every sample of the batch is recorded, since the ranking that picks the references
comes later, and only the references' records are kept once it is known), or by replaying a reference's stored
latents just before the fused step that needs them (replay). Keys are sample indices (into the batch the triples
index); values live on the UNet's device, states in its dtype, maps in float32.

- states: for each (sample, step, layer), the layer's input hidden states of both CFG halves, (2, tokens, channels);
- maps: for each (sample, step), the sum over the mask layers of the conditional half's item maps (items, h, w) and
  the number of layers summed; :meth:`ReferenceRecords.maps` returns their mean.
"""

from __future__ import annotations

import torch


class ReferenceRecords:
    """Recorded self-attention inputs and cross-attention maps, keyed by sample index and step."""

    def __init__(self) -> None:
        self._states: dict[tuple[int, int], dict[str, torch.Tensor]] = {}
        self._map_sums: dict[tuple[int, int], tuple[torch.Tensor, int]] = {}

    # ---- writing (the controller's record mode) ------------------------------------------------------------
    def add_states(self, layer: str, step: int, samples: list[int], uncond: torch.Tensor, cond: torch.Tensor) -> None:
        """The input of ``layer`` at ``step`` for ``samples``: rows of ``uncond`` and ``cond`` (k, tokens, channels)."""
        for j, s in enumerate(samples):
            self._states.setdefault((s, step), {})[layer] = torch.stack([uncond[j], cond[j]])

    def add_maps(self, step: int, samples: list[int], maps: list[torch.Tensor]) -> None:
        """One mask layer's item maps (items, h, w) of each of ``samples`` at ``step``, added to their sums."""
        for s, m in zip(samples, maps, strict=True):
            key = (s, step)
            if key in self._map_sums:
                total, count = self._map_sums[key]
                if total.shape != m.shape:
                    raise RuntimeError(f"mask layers disagree on the map grid: {total.shape} vs {m.shape}")
                self._map_sums[key] = (total + m, count + 1)
            else:
                self._map_sums[key] = (m, 1)

    # ---- reading (the target pass) -------------------------------------------------------------------------
    def has(self, sample: int, step: int) -> bool:
        return (sample, step) in self._map_sums

    def states(self, layer: str, step: int, samples: list[int]) -> torch.Tensor:
        """(k, 2, tokens, channels): both CFG halves of ``layer``'s input at ``step`` for each of ``samples``."""
        return torch.stack([self._states[(s, step)][layer] for s in samples])

    def maps(self, sample: int, step: int) -> torch.Tensor:
        """The sample's item maps at ``step`` averaged over the mask layers, (items, h, w)."""
        if (sample, step) not in self._map_sums:
            raise KeyError(f"no record of sample {sample} at step {step}")
        total, count = self._map_sums[(sample, step)]
        return total / count

    # ---- housekeeping --------------------------------------------------------------------------------------
    def samples(self) -> set[int]:
        return {s for s, _ in self._map_sums}

    def keep(self, samples: set[int]) -> None:
        """Drop every record but those of ``samples`` (the references, once the ranking is known)."""
        self._states = {k: v for k, v in self._states.items() if k[0] in samples}
        self._map_sums = {k: v for k, v in self._map_sums.items() if k[0] in samples}

    def nbytes(self) -> int:
        """Bytes held: every state and map tensor."""
        states = sum(t.nbytes for layers in self._states.values() for t in layers.values())
        return states + sum(t.nbytes for t, _ in self._map_sums.values())
