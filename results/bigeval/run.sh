#!/bin/bash
# Large-sample train-split evaluation of the base model and of grid runs' final (epoch 8) adapters:
# the first 8 train prompts x 48 fixed seeds (the grid's own evaluation uses the first 8 of these seeds).
# usage: results/bigeval/run.sh TEMPLATE NAME...   (NAME = base, or a results/grid run folder name)
# then:  python results/bigeval/table.py TEMPLATE
set -euo pipefail
t=$1
shift
for n in "$@"; do
  if [ "$n" = base ]; then src=(--model dfusion_bench/world/pipeline); else src=(--run "results/grid/$n" --epoch 8); fi
  OMP_NUM_THREADS=1 dfusion eval "${src[@]}" --template "$t" --split train --prompts 8 --samples-per-prompt 48 \
    --out "results/bigeval/$t-$n" --overwrite
  rm -f "results/bigeval/$t-$n/grid.png"  # 384 images; not kept
done
