#!/bin/bash
# Budget probe: the grid's configuration for more epochs (GRID_CONFIG as it was for these runs: every denoising step
# trained unless the options add --exclude-last-steps, which GRID_CONFIG now does), evaluated only at epoch 0 and at
# the end, on the train split, with 48 fixed seeds per prompt (384 images; the grid's own runs use the first 8 of them).
# usage: experiments/budget_probe/run.sh METHOD fusion|no-fusion SUITE EPOCHS [TAG [MORE TRAIN OPTIONS...]]
# e.g.   experiments/budget_probe/run.sh ddpo no-fusion shapes-spatial 24
# then:  dfusion_bench.studies.grid.export_run copies the run here (see README.md in this folder).
set -euo pipefail
m=$1; f=$2; suite=$3; ep=$4; tag=${5:-}; shift $(( $# < 5 ? $# : 5 ))
OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python -m dfusion_bench train --method "$m" "--$f" --template "$suite" --seed 0 \
  --out "runs/budget-probe/$m-$f-$suite-e$ep$tag" --device cpu \
  --prompts 8 --samples-per-prompt 8 --epochs "$ep" --eval-every "$ep" --eval-samples-per-prompt 48 \
  --eval-splits train --inner-epochs 2 --train-batch-size 2 --timestep-fraction 0.5 --mask-resolution 16 "$@"
