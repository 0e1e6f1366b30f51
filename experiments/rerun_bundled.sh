#!/usr/bin/env bash
# Re-runs every committed result that depends on the bundled model's weights, in the order README
# quotes them, after `experiments/train_default.py` has written a new tofu_jax/assets/fmnist_vit.npz.
# About 1 h on 2 CPU cores; the sweep is 35 min of it. Speed-only benchmarks (bench_cpu, cpu_kernels,
# scaling_cpu, export_latency) do not depend on the weights and are not re-run here.
#
#   bash experiments/rerun_bundled.sh            # everything below
#   bash experiments/rerun_bundled.sh main sweep # a subset: main figure1 visualize sweep finetune variants dit
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
R=experiments/results
STEPS=all
[ $# -gt 0 ] && STEPS=" $* "
want() { [ "$STEPS" = all ] || [[ "$STEPS" == *" $1 "* ]]; }

if want main; then
  "$BIN/tofu-jax" --out-dir runs/main 2>&1 | tee "$R/main/stdout.txt"
  cp runs/main/{results.json,comparison.png,tofu_schedule.json,profile.json} "$R/main/"
fi
if want figure1; then
  "$BIN/python" -m experiments.figure1 2>&1 | tee "$R/figure1_stdout.txt"
fi
if want visualize; then
  "$BIN/tofu-jax" visualize --index 0 --planner per_block --budget 0.5 --out "$R/visualize/tokens_50.png"
fi
if want sweep; then
  "$BIN/python" -m experiments.sweep --num-examples 0 --budgets 0 0.2 0.4 0.6 --planner per_block \
    --batch-size 64 --ablation-examples 2000 2>&1 | tee "$R/sweep_stdout.txt"
fi
if want finetune; then
  # Flips only, as in the bundled model's training (`--crop-pad 0`).
  for b in 0.4 0.5 none; do
    if [ "$b" = none ]; then sched=(--schedule "$R/schedule_none.json"); else sched=(--budget "$b"); fi
    rm -rf "runs/ft_$b"
    "$BIN/tofu-jax" finetune "${sched[@]}" --planner per_block --steps 80 --train-batch 64 --crop-pad 0 \
      --out-dir "runs/ft_$b" 2>&1 | tee "$R/finetune_$b.txt"
    cp "runs/ft_$b/finetune.json" "$R/finetune_$b.json"
  done
fi
if want variants; then
  "$BIN/python" -m experiments.bench --batches 64 --runs 7 --variants --out "$R/bench_variants" 2>&1 \
    | tee "$R/bench_variants_stdout.txt"
fi
if want dit; then
  # Re-scores the cached DiT samples with the new classifier (training and sampling are cached in
  # the workdir; without them this trains the DiT first, about 30 min).
  "$BIN/python" experiments/dit_fmnist.py --workdir "${DIT_WORKDIR:-/tmp/dit_fmnist_cpu}" --patch-size 4 \
    --width 96 --depth 4 --heads 4 --train-steps 3000 --lr 6e-4 --warmup 200 --ckpt-every 250 \
    --num-samples 1000 --sample-batch 250 --sample-steps 50 --r 4 12 --real-images 5000 2>&1 \
    | tee "$R/dit_fmnist_stdout.txt"
fi
