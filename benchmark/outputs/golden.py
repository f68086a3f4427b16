"""The AUROC regression gate: expected image and pixel AUROC per (method, pair, setting), averaged
over the experiment's seeds, in results/golden/<experiment>.json, with a tolerance."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from benchmark.api.atomic import write_text
from benchmark.errors import GadbenchError
from benchmark.run.experiment import Experiment
from benchmark.run.record import DONE, NOT_APPLICABLE
from benchmark.outputs.tables import collect

GATED_METRICS = ("image_auroc", "pixel_auroc")


def current_values(experiment: Experiment, results_root: Path) -> tuple[dict, list[str]]:
    """{cell group key: {metric: mean over seeds}} and the groups with unfinished cells."""
    frame = collect(experiment, results_root)
    if experiment.rehearsal or experiment.limit or frame.rehearsal.any() or frame.limit.notna().any():
        raise GadbenchError(f"{experiment.name}: rehearsal or --limit cells measure nothing; the regression gate"
                            " neither checks them nor writes them to results/golden")
    values, unfinished = {}, []
    for (method, source, target, setting), cells in frame.groupby(["method", "source", "target", "setting"], sort=True):
        key = f"{method} | {source} -> {target} | {setting}"
        if (cells.status == NOT_APPLICABLE).all():  # the method cannot run the setting: nothing to gate
            continue
        if (cells.status != DONE).any():
            if not (cells.status == "skipped").all():  # missing weights are not a regression
                unfinished.append(f"{key}: {', '.join(sorted(set(cells.status)))}")
            continue
        values[key] = {m: (None if cells[m].isna().all() else round(float(cells[m].mean()), 6)) for m in GATED_METRICS}
        values[key]["seeds"] = int(len(cells))
    return values, unfinished


def gate_experiments(golden_root: Path) -> list[Path]:
    """The experiments the gate anchors: one per golden file (configs/experiments/<name>.yaml)."""
    from benchmark.config import CONFIG_DIR

    return [CONFIG_DIR / "experiments" / f"{path.stem}.yaml" for path in sorted(Path(golden_root).glob("*.json"))]


def golden_path(experiment: Experiment, golden_root: Path) -> Path:
    return Path(golden_root) / f"{experiment.name}.json"


def update(experiment: Experiment, results_root: Path, golden_root: Path, tolerance: float) -> Path:
    values, unfinished = current_values(experiment, results_root)
    if unfinished:
        raise SystemExit("gadbench: error: cannot write golden values while cells are unfinished: " + "; ".join(unfinished))
    path = golden_path(experiment, golden_root)
    write_text(json.dumps({"experiment": experiment.name, "tolerance": tolerance, "cells": values}, indent=1, sort_keys=True) + "\n", path)
    return path


def check(experiment: Experiment, results_root: Path, golden_root: Path, tolerance: float | None = None) -> list[str]:
    """Every difference beyond the tolerance, as one line each (empty: the gate passes)."""
    path = golden_path(experiment, golden_root)
    values, unfinished = current_values(experiment, results_root)  # refuses rehearsal cells first
    if not path.is_file():
        return [f"{path}: no golden values; run `gadbench check --update -e {experiment.path}` on purpose"]
    golden = json.loads(path.read_text())
    tolerance = golden["tolerance"] if tolerance is None else tolerance
    problems = [f"unfinished: {line}" for line in unfinished]
    for key, expected in sorted(golden["cells"].items()):
        if key not in values:
            problems.append(f"missing: {key} (expected {expected})")
            continue
        for metric in GATED_METRICS:
            want, got = expected.get(metric), values[key].get(metric)
            if want is None and got is None:
                continue
            if want is None or got is None or not np.isfinite(got) or abs(got - want) > tolerance:
                problems.append(f"moved: {key} {metric} {want} -> {got} (tolerance {tolerance})")
    for key in sorted(set(values) - set(golden["cells"])):
        problems.append(f"new: {key} has no golden value; update the golden file on purpose")
    return problems
