"""Cell result files: one JSON per cell, written atomically (temp file + rename)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from benchmark.atomic import atomic_file
from benchmark.experiment import Cell

DONE, FAILED, SKIPPED = "done", "failed", "skipped"


def cell_path(results_root: Path, cell: Cell, protocol: str) -> Path:
    pair = f"{cell.source}__{cell.target}".replace("*", "any")
    return Path(results_root) / "runs" / protocol / cell.method.name / pair / cell.setting.label / f"seed{cell.seed}.json"


def _clean(value):
    """JSON-safe: NaN -> None, numpy scalars -> Python."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def write_json_atomic(data: dict, path: Path) -> None:
    with atomic_file(path) as temp, open(temp, "w") as out:
        json.dump(_clean(data), out, indent=1, sort_keys=True, allow_nan=False)
        out.flush()
        os.fsync(out.fileno())


def read_cell(path: Path) -> dict | None:
    """A cell file, or None if absent. A file that does not parse counts as absent (it is redone)."""
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
