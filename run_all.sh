#!/usr/bin/env bash
# Reproduce the tables. Without DATA_ROOT: the embedded mini experiment on synthetic data
# (generated on first use). With DATA_ROOT: the paper's grid (configs/experiments/main.yaml).
# Extra arguments go to `gadbench run` (for example --device cuda --jobs 2). Ends by writing
# results/report.md (tables and figures) for what it ran.
set -euo pipefail
cd "$(dirname "$0")"
source tools/ensure_venv.sh
if [ -z "${DATA_ROOT:-}" ]; then
  experiments=(configs/experiments/mini.yaml configs/experiments/ablation_mini.yaml)
else
  experiments=(configs/experiments/main.yaml configs/experiments/ablation.yaml)
fi
status=0
report_args=()
for experiment in "${experiments[@]}"; do
  gadbench run --experiment "$experiment" "$@" || status=$?
  gadbench tables --experiment "$experiment"
  report_args+=(--experiment "$experiment")
done
gadbench report "${report_args[@]}"
exit $status
