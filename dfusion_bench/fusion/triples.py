"""D-Fusion's pairing: per prompt, which samples are references and which are bases, and who pairs with whom.

Per prompt the N samples are ranked by score (best first; ties keep sample order). The top
``round(N * reference_fraction)`` are references, each used ``reference_uses`` times; the bases are the bottom
``n_refs * reference_uses`` samples, paired in rank order (best reference with the best bases). With the defaults
and N = 16: 4 references, 8 bases (the bottom half), 8 triples; the middle quarter is unused. A pair whose reference
does not score above its base carries no preference and is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Triple:
    """Indices into the sampled batch: the reference and the base (the target is re-denoised from the base's seed)."""

    reference: int
    base: int


def pairing_problem(samples_per_prompt: int, reference_fraction: float, reference_uses: int) -> str | None:
    """Why ``samples_per_prompt`` cannot be paired with this split, or None if it can."""
    n_refs = max(1, round(samples_per_prompt * reference_fraction))
    if n_refs * (1 + reference_uses) <= samples_per_prompt:
        return None
    need = next(n for n in range(1, 10_000) if max(1, round(n * reference_fraction)) * (1 + reference_uses) <= n)
    return (
        f"{samples_per_prompt} samples per prompt are too few for {n_refs} reference(s) used {reference_uses} times "
        f"each; use at least {need}"
    )


def select_triples(
    groups: list[list[int]], scores: np.ndarray, reference_fraction: float = 0.25, reference_uses: int = 2
) -> list[Triple]:
    """Triples for every prompt group (a list of sample indices per prompt)."""
    triples = []
    for group in groups:
        order = sorted(group, key=lambda i: (-float(scores[i]), group.index(i)))
        problem = pairing_problem(len(order), reference_fraction, reference_uses)
        if problem:
            raise ValueError(problem)
        n_refs = max(1, round(len(order) * reference_fraction))
        n_bases = n_refs * reference_uses
        refs, bases = order[:n_refs], order[len(order) - n_bases :]
        for k, base in enumerate(bases):
            ref = refs[k // reference_uses]
            if scores[ref] > scores[base]:
                triples.append(Triple(reference=ref, base=base))
    return triples
