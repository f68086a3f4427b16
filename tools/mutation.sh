#!/usr/bin/env bash
# Mutation testing of the formula files (issue 13): every formula in nagl/, the baselines' scoring,
# benchmark/run/metrics.py and the reference selection must be pinned by a fast test. Runs mutmut on a
# scratch copy of the working tree (the repository itself is never touched) against the fast tests
# that exercise these files, and writes its results to results/mutation/.
#   tools/mutation.sh [FILE.py ...]     default: every formula file below; needs `pip install mutmut`
#   MUTATION_DIR=D keeps the scratch copy in D; run again with MUTATION_DIR=D MUTATION_RECHECK=1 after
#   adding tests: the tree is copied over it, changed files are mutated again and the survivors rerun
# Statements that raise or log are not mutated (messages are not formulas). Torch runs one thread
# per worker: mutmut forks workers, and a forked OpenMP pool deadlocks.
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/ensure_venv.sh
python -c "import mutmut" 2>/dev/null || { echo "mutation.sh: mutmut is not installed: pip install mutmut" >&2; exit 1; }
files=("$@")
if [ ${#files[@]} -eq 0 ]; then
  files=(nagl/model.py benchmark/features/similarity.py nagl/train.py baselines/patchcore_model.py baselines/inctrl_model.py
         baselines/resad_model.py nagl/ablation.py nagl/normal_nn.py benchmark/run/metrics.py
         benchmark/data/references.py benchmark/data/reference_rules.py benchmark/data/settings.py
         benchmark/features/pos_embed.py benchmark/run/maps.py benchmark/run/pixel_accumulator.py
         benchmark/run/coverage.py baselines/winclip.py benchmark/run/experiment.py benchmark/run/sweeps.py
         benchmark/config.py)
fi
repo="$PWD"
out="$repo/results/mutation"
mkdir -p "$out"
scratch="${MUTATION_DIR:-$(mktemp -d)}"
mkdir -p "$scratch"
git ls-files -z | xargs -0 -I{} cp --parents {} "$scratch"
cd "$scratch"
{
  echo "[mutmut]"
  echo "source_paths ="; for d in nagl/ baselines/ benchmark/; do echo "    $d"; done
  echo "only_mutate ="; for f in "${files[@]}"; do echo "    $f"; done
  echo "also_copy ="; for d in configs/ examples/ results/ docs/ tools/ README.md; do echo "    $d"; done
  echo "do_not_mutate_patterns ="; for p in '^\s*raise ' 'Error\(' 'log\(' 'warnings\.warn'; do echo "    $p"; done
  echo "pytest_add_cli_args ="; for a in -p no:cacheprovider -x -q -m "not slow"; do echo "    $a"; done
  echo "pytest_add_cli_args_test_selection ="
  for t in tests/conformance tests/test_nagl.py tests/test_metrics.py tests/test_references.py tests/test_scoring.py \
           tests/test_formulas.py tests/test_pixel_accumulator.py tests/test_sweeps.py tests/test_config_keys.py \
           tests/test_defaults.py tests/test_baselines.py tests/test_reference_settings.py tests/test_resad_losses.py \
           tests/test_reference_rules.py; do echo "    $t"; done
  echo "process_isolation = forkserver"
} > setup.cfg
OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python -m mutmut run --max-children "${MUTATION_JOBS:-2}" || true
# mutmut keeps a scratch copy's verdicts unless the selected test files above change (then it starts
# over): a recheck reuses the kills only when new tests went into files already listed
if [ -n "${MUTATION_RECHECK:-}" ]; then  # a run resumed in MUTATION_DIR after new tests: its survivors again
  mapfile -t again < <(python -m mutmut results 2>/dev/null | awk -F': ' '/: (survived|no tests|timeout)$/ {gsub(/ /, "", $1); print $1}')
  [ ${#again[@]} -eq 0 ] || OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python -m mutmut run --max-children "${MUTATION_JOBS:-2}" "${again[@]}" || true
fi
python -m mutmut results --all true > "$out/all.txt" 2>&1 || true
python "$repo/tools/mutation_summary.py" "$out/all.txt" | tee "$out/summary.md"
echo "mutation.sh: results in $out/all.txt; mutants kept in $scratch (mutmut show NAME there)"
