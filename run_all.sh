#!/usr/bin/env bash
# Reproduce the tables. Without DATA_ROOT: the embedded mini experiments on synthetic data
# (generated on first use) and the embedded efficiency bench. With DATA_ROOT: the paper's grid
# (configs/experiments/main.yaml, ablation.yaml) and its efficiency bench (efficiency_paper.yaml),
# which runs first.
# Extra arguments go to `gadbench run` and `gadbench bench` where they apply (for example
# --device cuda). Writes results/tables/<experiment>/{main,medical,ablation,efficiency}.{csv,tex}
# and ends with results/report.md (tables and figures) for what it ran.
# Before a long run on rented hardware: `gadbench rehearse` (docs/reproducing.md).
set -euo pipefail
cd "$(dirname "$0")"
source tools/ensure_venv.sh
if [ -z "${DATA_ROOT:-}" ]; then
  experiments=(configs/experiments/mini.yaml configs/experiments/ablation_mini.yaml)
  bench=configs/experiments/efficiency.yaml
else
  experiments=(configs/experiments/main.yaml configs/experiments/ablation.yaml)
  bench=configs/experiments/efficiency_paper.yaml
fi
device=()
for ((i = 1; i <= $#; i++)); do  # the bench takes --device from the run's arguments
  if [ "${!i}" = "--device" ] && [ $i -lt $# ]; then j=$((i + 1)); device=(--device "${!j}"); fi
  case "${!i}" in --device=*) device=("${!i}") ;; esac
done
status=0
report_args=()
# The bench first: it trains each method once from scratch (that is what it times) and hands those
# checkpoints to the grid (--checkpoints), which finds them by their identity hash instead of
# training the same models again.
gadbench bench --experiment "$bench" --checkpoints results/checkpoints "${device[@]}" || status=$?
for experiment in "${experiments[@]}"; do
  gadbench run --experiment "$experiment" "$@" || status=$?
  gadbench tables --experiment "$experiment"
  report_args+=(--experiment "$experiment")
done
gadbench report "${report_args[@]}"
exit $status
