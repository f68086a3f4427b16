"""The maps of the report's qualitative figure: chosen anomalous test images scored again by each
method of an experiment, from its finished cells' checkpoints and references, through the same
engine as the run (features come from the cache; a model is never trained again here)."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import torch

from benchmark.errors import MissingWeights
from benchmark.run.engine import evaluate_plan
from benchmark.run.experiment import Experiment
from benchmark.run.record import NOT_APPLICABLE, CellRecord
from benchmark.run.results import read_record


def own_setting(experiment: Experiment, method_name: str, k: int, frame: pd.DataFrame) -> str | None:
    """The setting a method is shown in at k: N^k+A^1 if it ran there, else N^k."""
    ran = frame[(frame.method == method_name) & (frame.k == k) & (frame.status != NOT_APPLICABLE)]
    for abnormal in (1, 0):
        settings = ran[ran.abnormal == abnormal].setting.unique()
        if len(settings):
            return settings[0]
    return None


def _unavailable(record: CellRecord | None) -> str | None:
    """Why a method has no maps for this cell (None: it has)."""
    if record is None or not record.done:
        return record.why_not if record else "not run"
    if record.checkpoint and not Path(record.checkpoint).exists():
        return "checkpoint missing: rerun the cell"  # the report never trains a model again
    return None


def qualitative_maps(runner, experiment: Experiment, frame: pd.DataFrame, k: int, images_per_category: int, seed: int = 0):
    """[(target, category, image row, {method label: map or reason})] for the chosen images."""
    panels = []
    for target in sorted({t for _, t in experiment.pairs}):
        source = next(s for s, t in experiment.pairs if t == target)
        spec = experiment.datasets[target]
        categories = sorted(runner.data.table(target).category.unique())
        chosen: dict[str, pd.DataFrame] = {}  # the first method's plan picks the images for all
        maps = {c: [{} for _ in range(images_per_category)] for c in categories}
        for method in experiment.methods:
            setting_label = own_setting(experiment, method.name, k, frame)
            if setting_label is None:
                continue
            cell = next((c for c in experiment.cells() if c.method.name == method.name and c.target == target
                         and c.setting.label == setting_label and c.seed == seed and c.source in (source, "*")), None)
            record = read_record(runner.path(cell)) if cell else None
            reason = _unavailable(record)
            if reason is None:
                try:
                    adapter, _ = runner.adapter_for(cell)
                except MissingWeights as error:
                    reason = str(error)
            if reason is not None:
                for slot in (slot for category in categories for slot in maps[category]):
                    slot[method.label] = reason
                continue
            for category in categories:
                for position, amap in _category_maps(runner, adapter, cell, category, chosen, images_per_category):
                    maps[category][position][method.label] = amap
        for category, rows in chosen.items():
            for slot, (_, row) in zip(maps[category], rows.iterrows()):
                panels.append((target, category, row, slot, spec.mask_threshold))
    return panels


def _category_maps(runner, adapter, cell, category: str, chosen: dict, images_per_category: int):
    """(position among the chosen images, map or reason), scored by the engine as the run scored them."""
    spec = runner.experiment.datasets[cell.target]
    _, plan = runner.data.plan(cell, category)
    if category not in chosen:
        queries = pd.concat([g.queries for g in plan.groups])
        chosen[category] = queries[queries.label == 1].sort_values("path").head(images_per_category).reset_index(drop=True)
    wanted = chosen[category]
    result = evaluate_plan(adapter, category, plan, files_root=spec.files_root, mask_threshold=spec.mask_threshold,
                           k_abnormal=cell.setting.k_abnormal, only=set(wanted.path), with_metrics=False)
    by_path = {p: m.cpu().numpy() if torch.is_tensor(m) else m for p, m in zip(result.paths, result.maps)}  # GPU maps: to the host
    for position, path in zip(wanted.index, wanted.path):
        yield position, by_path.get(os.path.relpath(path, spec.files_root), "image-level method: no map")
