"""Cell result files: one JSON per cell, written atomically (temp file + rename)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from benchmark.atomic import atomic_file
from benchmark.run.experiment import Cell, Experiment

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


def recorded_cells(experiment: Experiment, results_root: Path) -> list[tuple[Cell, dict | None]]:
    """The grid as the cell files record it: (cell, its record or None), in the YAML's order.
    A cell found on disk is taken as written (a training-free method's one cell per target
    is stored under source 'any'); only for a cell with no file does the adapter class say
    whether it belongs to the grid at all (its settings) and where it would be."""
    out, seen, planned = [], set(), None
    for method in experiment.methods:
        for source, target in experiment.pairs:
            for setting in experiment.settings:
                for seed in experiment.seeds:
                    record, cell = None, None
                    for src in (source, "*"):
                        candidate = Cell(method, src, target, setting, seed)
                        record = read_cell(cell_path(results_root, candidate, experiment.protocol))
                        if record and record.get("cell", {}).get("setting") == setting.label:
                            cell = candidate
                            break
                    if cell is None:  # nothing on disk: does the grid have this cell, and under which source?
                        planned = planned if planned is not None else {c.id: c for c in experiment.cells()}
                        cell = next((planned[i] for i in (Cell(method, s, target, setting, seed).id
                                                          for s in (source, "*")) if i in planned), None)
                        record = None
                    if cell is not None and cell.id not in seen:
                        seen.add(cell.id)
                        out.append((cell, record))
    return out
