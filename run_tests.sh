#!/usr/bin/env bash
# Set up .venv if needed, run the test suite, then the AUROC regression gate: the CI-sized
# experiments are run (finished cells are reused) and compared with results/golden/ by
# `gadbench check`. Extra arguments go to pytest. GADBENCH_SKIP_GATE=1 runs the tests only.
# The tests run in one pytest-xdist worker per core, a test file to a worker, one torch thread
# each, the slow files first (tests/conftest.py): on 2 cores 229 s instead of 356 s in one process
# (.venv in place); GADBENCH_TEST_WORKERS=0 runs them in this process.
set -euo pipefail
cd "$(dirname "$0")"
source tools/ensure_venv.sh
OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python -m pytest -n "${GADBENCH_TEST_WORKERS:-auto}" --dist loadfile --no-loadscope-reorder "$@"
if [ -n "${GADBENCH_SKIP_GATE:-}" ]; then
  exit 0
fi
gate=(configs/experiments/ci_mini.yaml)
if [ -d ../shared/data ]; then
  gate+=(configs/experiments/real_shared_ci.yaml)
else
  echo "gadbench gate: ../shared/data is absent (a fresh clone): real_shared_ci is not checked"
fi
for experiment in "${gate[@]}"; do
  gadbench run --experiment "$experiment" --results results/ci --no-progress
done
# without an experiment, `check` is the gate itself: every experiment with a golden file whose
# data is here, in one process
gadbench check --results results/ci
