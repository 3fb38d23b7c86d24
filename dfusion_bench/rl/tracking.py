"""Per-epoch metrics, losses and sample grids sent to the experiment trackers users already have (TensorBoard,
Weights & Biases, MLflow, ...) through accelerate's tracker API.

The run folder's curves and tables stay the record (no server needed); ``--log-with NAME`` sends the same rows to a
tracker as well. Nothing here is needed, or imported, when no tracker is asked for.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from dfusion_bench.errors import UserError

#: accelerate's tracker names (``accelerate.utils.LoggerType``), each needing its own package.
TRACKERS = ("tensorboard", "wandb", "mlflow", "comet_ml", "aim", "clearml", "dvclive", "swanlab", "trackio")


def check_available(names: tuple[str, ...]) -> None:
    """Refuse a tracker whose package is not installed, in one line naming the package to install."""
    import accelerate.utils

    for name in names:
        if not getattr(accelerate.utils, f"is_{name}_available")():
            raise UserError(f"--log-with {name}: its package is not installed; pip install {name.replace('_', '-')}")


def scalars(row: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The finite numbers of a (nested) log row, flattened to ``prefix/key/subkey`` names."""
    out: dict[str, float] = {}
    for key, value in row.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(scalars(value, name))
        elif isinstance(value, bool):
            out[name] = float(value)
        elif isinstance(value, int | float) and math.isfinite(value):
            out[name] = float(value)
    return out


def hyperparameters(config: Mapping[str, Any]) -> dict[str, Any]:
    """The run's configuration as the flat str/number/bool values trackers accept (tuples and None as text)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            out.update({f"{key}.{k}": v for k, v in hyperparameters(value).items()})
        elif isinstance(value, bool | int | float | str):
            out[key] = value
        else:
            out[key] = str(value)
    return out


def log_image(accelerator, name: str, image: np.ndarray, step: int) -> None:
    """Send one (H, W, 3) uint8 image to every tracker that takes images."""
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.log_images({name: image[None]}, step=step, dataformats="NHWC")
        elif hasattr(tracker, "log_images"):
            tracker.log_images({name: [image]}, step=step)
