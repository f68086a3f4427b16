# Sourced by run_tests.sh and run_all.sh: create .venv when missing (or when the pinned set
# changed), install torch first so pip never swaps it, then the project with constraints.txt.
set -euo pipefail
GADBENCH_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$GADBENCH_ROOT/.venv"
STAMP="$VENV/.gadbench-installed"
want="$(cat "$GADBENCH_ROOT/constraints.txt" "$GADBENCH_ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)"

if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
  py="${PYTHON:-}"
  if [ -z "$py" ]; then
    for candidate in python3.11 python3; do
      command -v "$candidate" >/dev/null 2>&1 && { py="$candidate"; break; }
    done
  fi
  [ -n "$py" ] || { echo "gadbench: no python3 found; install Python 3.11 and retry" >&2; exit 1; }
  echo "gadbench: setting up $VENV with $($py --version) (a few minutes, once; log: .venv/install.log)" >&2
  [ -x "$VENV/bin/python" ] || "$py" -m venv "$VENV"
  log="$VENV/install.log"
  torch_pin="$(grep -E '^torch==' "$GADBENCH_ROOT/constraints.txt")"
  vision_pin="$(grep -E '^torchvision==' "$GADBENCH_ROOT/constraints.txt")"
  # torch first, alone, so that nothing later can swap it; then the project under the pins.
  # --no-compile: pip would byte-compile every installed module (torch's CUDA build, sympy, ...);
  # Python compiles the ones a run imports on first import instead (about 50 s less set-up, 15 s
  # more on the first run, measured on 2 cores)
  if ! { "$VENV/bin/python" -m pip install --no-compile "$torch_pin" "$vision_pin" &&
         "$VENV/bin/python" -m pip install --no-compile -c "$GADBENCH_ROOT/constraints.txt" -e "$GADBENCH_ROOT[test]"; } >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    echo "gadbench: installing into $VENV failed (full log: $log)" >&2
    exit 1
  fi
  echo "$want" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
