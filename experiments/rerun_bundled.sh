#!/usr/bin/env bash
# Re-runs every committed result that README quotes, in README's order (about 2 h on 2 CPU cores;
# `planner` alone is most of it, and the `planner_p4` study ran on an H200 in 9 min).
#
#   bash experiments/rerun_bundled.sh                 # everything below
#   bash experiments/rerun_bundled.sh main sweep      # a subset of: main planner planner_p4 train_p4 sweep
#                                                     #   variants bench figure1 visualize finetune timm
#                                                     #   scaling compile
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
R=experiments/results
STEPS=all
[ $# -gt 0 ] && STEPS=" $* "
want() { [ "$STEPS" = all ] || [[ "$STEPS" == *" $1 "* ]]; }

if want main; then
  "$BIN/tofu-jax" --out-dir runs/main 2>/dev/null | tee "$R/main/stdout.txt"
  cp runs/main/{results.json,comparison.png,tofu_schedule.json,profile.json} "$R/main/"
fi
if want planner; then
  "$BIN/python" -m experiments.planner_study --out "$R/planner_bundled" 2>/dev/null \
    | grep -v "probed" | tee "$R/planner_bundled_stdout.txt"
fi
if want train_p4; then
  "$BIN/python" -m experiments.train_patch4 --workdir runs/train_p4 | tee "$R/models/fmnist_p4_stdout.txt"
fi
if want planner_p4; then
  "$BIN/python" -m experiments.planner_study --checkpoint "$R/models/fmnist_p4.npz" --out "$R/planner_p4" \
    --batch-size 1000 --bench-batch 1000 --bench-runs 10 2>/dev/null | grep -v "probed\|local search" \
    | tee "$R/planner_p4_stdout.txt"
fi
if want sweep; then
  "$BIN/python" -m experiments.sweep --num-examples 0 --budgets 0 0.4 0.6 --planner per_block \
    --skip-ablations --out "$R/sweep" 2>/dev/null | tee "$R/sweep_stdout.txt"
fi
if want variants; then
  "$BIN/python" -m experiments.bench --batches 64 --runs 7 --variants --out "$R/bench_variants" 2>/dev/null \
    | tee "$R/bench_variants_stdout.txt"
fi
if want bench; then
  "$BIN/python" -m experiments.bench --batches 64 256 --out "$R/bench_cpu" 2>/dev/null | tee "$R/bench_stdout.txt"
fi
if want figure1; then
  "$BIN/python" -m experiments.figure1 2>/dev/null | tee "$R/figure1_stdout.txt"
fi
if want visualize; then
  "$BIN/tofu-jax" visualize --index 0 --planner per_block --budget 0.5 --out "$R/visualize/tokens_50.png"
fi
if want finetune; then
  # Flips only, as in the bundled model's training (`--crop-pad 0`).
  for b in 0.4 0.6; do
    rm -rf "runs/ft_$b"
    "$BIN/tofu-jax" finetune --budget "$b" --planner per_block --steps 80 --train-batch 64 --crop-pad 0 \
      --out-dir "runs/ft_$b" 2>/dev/null | tee "$R/finetune_$b.txt"
    cp "runs/ft_$b/finetune.json" "$R/finetune_$b.json"
  done
fi
if want timm; then
  "$BIN/python" -m experiments.bench_timm 2>/dev/null | tee "$R/bench_timm_stdout.txt"
fi
if want scaling; then
  "$BIN/python" experiments/scaling_cpu.py 2>/dev/null | tee "$R/scaling_cpu_stdout.txt"
fi
if want compile; then
  "$BIN/python" -m experiments.compile_time 2>/dev/null | tee "$R/compile_time_stdout.txt"
fi
