"""The lab: scripts that made the measurements under ``results/``, one module per experiment, apart from the library.

Each module is run from the repository root as ``python -m experiments.FOLDER.NAME ARGS`` (``FOLDER`` is the
``results/`` folder it writes to or reads, dashes as underscores), has a ``main(argv)``, and writes where it wrote
before unless told otherwise, so the committed outputs stay reproducible by the commands in the results' READMEs.
The package never imports from here (tests/test_layout.py); the experiments import the package like any user.

- ``budget_probe.table``: the budget probe's table (results/budget-probe)
- ``device_pg_kl.drive``, ``preview_h100.drive``: GPU-machine drivers of grid cells (see :mod:`experiments.drive`)
- ``fuse_drift.measure``: per-transition policy gradients of fused targets against their bases (results/fuse-drift)
- ``grid_x3.object_probe``, ``grid_x3.attention_probe``, ``grid_x3.fused_attention_probe``,
  ``grid_x3.update_direction_probe``: why dpo + fusion loses the second object (results/grid-x3; shared measures in
  :mod:`experiments.grid_x3.measures`)
- ``control.gradient_snr``: the signal-to-noise ratio of plain pg's per-sample gradient (results/control-snr)
- ``control.ceiling``: best-of-group fine-tuning with the diffusion loss, the positive control's ceiling
  (results/control)
- ``budget_probe/run.sh``: the budget probe's runs (results/budget-probe)
"""

from pathlib import Path

#: The repository root, and its results folder: the experiments' default inputs and outputs.
REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "results"
