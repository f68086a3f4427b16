"""Cell result files: one JSON per cell, written atomically (temp file + rename)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Callable

import numpy as np

from benchmark.api.atomic import atomic_file
from benchmark.run.experiment import Cell, Experiment
from benchmark.run.record import CellIdentity, CellRecord


def cell_path(results_root: Path, cell: Cell, runs_folder: str) -> Path:
    """results/runs/<protocol folder (Experiment.runs_folder)>/<method>/<source>__<target>/<setting>/seed<s>.json"""
    pair = f"{cell.source}__{cell.target}".replace("*", "any")
    return Path(results_root) / "runs" / runs_folder / cell.method.name / pair / cell.setting.label / f"seed{cell.seed}.json"


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


def read_cell(path: Path, report: Callable[[str], None] | None = None) -> dict | None:
    """A cell file, or None if absent. A file that does not parse (a disk fault, an edit) counts as
    absent, so that it is computed again; `report` is told so, in one line that names it."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        if report is not None:
            report(f"{path}: cannot be read ({type(error).__name__}: {error}); the cell is computed again")
        return None


def read_record(path: Path, report: Callable[[str], None] | None = None) -> CellRecord | None:
    """A cell file as a CellRecord, or None if absent or unreadable (it is then redone)."""
    data = read_cell(path, report)
    return CellRecord.from_json(data, path) if data else None


def recorded_cells(experiment: Experiment, results_root: Path) -> list[tuple[Cell, CellRecord | None]]:
    """The grid as the cell files on disk record it: (cell, its record or None), in the YAML's
    order. The files are found by globbing each method's folder and kept when the cell they
    record belongs to this grid (its pair, or any source for a training-free method; its
    settings and seeds); the YAML adds only order, labels and the cells with no file."""
    settings = {s.label: s for s in experiment.settings}
    pairs, targets, seeds = set(experiment.pairs), {t for _, t in experiment.pairs}, set(experiment.seeds)
    found = {}
    for method in experiment.methods:
        folder = Path(results_root) / "runs" / experiment.runs_folder / method.name
        for path in sorted(folder.glob("*/*/seed*.json")):
            record = read_record(path)
            if record is None:
                continue
            recorded = record.cell
            belongs = (recorded.target in targets) if recorded.source == "*" else ((recorded.source, recorded.target) in pairs)
            if belongs and recorded.setting in settings and recorded.seed in seeds:
                cell = Cell(method, recorded.source, recorded.target, settings[recorded.setting], recorded.seed)
                found.setdefault(cell.id, (cell, record))
    grid = experiment.grid()
    order = {cell.id: index for index, (cell, _) in enumerate(grid)}
    rows = list(found.values()) + [(cell, None if why_not is None else not_applicable(cell, why_not, experiment))
                                   for cell, why_not in grid if cell.id not in found]
    return sorted(rows, key=lambda row: order.get(row[0].id, len(order)))


def cell_identity(cell: Cell, experiment: Experiment) -> CellIdentity:
    adapter_class = cell.method.adapter_class
    return CellIdentity(method=cell.method.name, method_label=cell.method.label, adapter=cell.method.adapter,
                        source=cell.source, target=cell.target, setting=cell.setting.label, k=cell.setting.k_normal,
                        abnormal=cell.setting.k_abnormal, seed=cell.seed, reference_seed=cell.seed,
                        trains_on_source=adapter_class.trains_on_source, pixel_level=adapter_class.pixel_level,
                        experiment=experiment.name)


def not_applicable(cell: Cell, reason: str, experiment: Experiment) -> CellRecord:
    record = CellRecord.not_applicable(cell_identity(cell, experiment), experiment.protocol, reason)
    record.limit, record.rehearsal = experiment.limit, experiment.rehearsal  # its row is marked as the others
    return record
