"""dfusion-bench: prompt-image alignment of text-to-image diffusion models, RL fine-tuning, and D-Fusion."""

__version__ = "0.1.0"
