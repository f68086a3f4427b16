"""The one evaluation routine: a method on one category's plan.

References are set once per query group (the clean protocol has one group; the official one a
group per abnormal reference), queries are predicted in batches, maps are brought back to the
original images by the harness (benchmark/run/maps.py), and the category's metrics computed. The
runner, the report's qualitative maps, the efficiency bench and the grid-cost script all go
through here, so they score the same way.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from benchmark.api import Adapter, ImageBatch, ReferenceSet
from benchmark.data.batches import load_batch, load_references, original_masks
from benchmark.data.references import Plan, QueryGroup
from benchmark.run.coverage import coverage_flags
from benchmark.run.intervals import PIXEL_BINS
from benchmark.run.maps import finish
from benchmark.run.metrics import image_metrics
from benchmark.run.pixel_accumulator import PixelAccumulator


def predict_at_original(adapter: Adapter, batch: ImageBatch) -> tuple[np.ndarray, list[np.ndarray] | None]:
    """Image scores [B] and maps at each image's original size (None for image-level methods)."""
    return finish(adapter, adapter.predict(batch), batch)


def references(adapter: Adapter, plan: Plan, group: QueryGroup, mask_threshold: int, k_abnormal: int,
               normal: ReferenceSet | None = None) -> tuple[ReferenceSet, ReferenceSet | None]:
    """The group's reference sets in the adapter's preprocessing (pass `normal` to reuse it). Under
    N0 the normal set is empty: the method takes normal patches from the abnormal references."""
    preprocessing = adapter.preprocessing()
    if normal is None:
        normal = load_references(plan.normal, preprocessing, mask_threshold, with_masks=False)
    abnormal = None
    if k_abnormal and group.abnormal:
        abnormal = load_references(pd.DataFrame(group.abnormal), preprocessing, mask_threshold, with_masks=True)
    return normal, abnormal


@dataclass
class CategoryResult:
    """Per query (in scoring order): path relative to the data set, label, image score; the maps
    when the method gives maps (the masks are read once, into the pixel metrics' first pass);
    the metrics; the seconds spent predicting."""

    paths: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    defects: list[str] = field(default_factory=list)  # '' for a normal query
    covered: list[bool | None] = field(default_factory=list)  # benchmark/run/coverage.py (None: normal)
    maps: list[np.ndarray] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    seconds: float = 0.0
    pixel_histograms: np.ndarray | None = None  # [n, 2, bins] for the pixel AUROC's bootstrap


def evaluate_plan(adapter: Adapter, category: str, plan: Plan, *, files_root, mask_threshold: int, k_abnormal: int,
                  batch_size: int = 8, only: set[str] | None = None, with_metrics: bool = True,
                  progress: bool = False) -> CategoryResult:
    """Score the plan's queries (or only those whose path is in `only`). Maps are kept, and the
    pixel metrics computed, for methods that give maps."""
    result, pixels = CategoryResult(), PixelAccumulator(PIXEL_BINS)
    preprocessing, normal = adapter.preprocessing(), None
    started = time.time()
    for group in plan.groups:
        queries = group.queries if only is None else group.queries[group.queries.path.isin(only)]
        if queries.empty:
            continue
        normal, abnormal = references(adapter, plan, group, mask_threshold, k_abnormal, normal)
        adapter.set_references(category, normal, abnormal)
        for begin in tqdm(range(0, len(queries), batch_size), desc=category, unit="batch", leave=False, disable=not progress):
            rows = queries.iloc[begin:begin + batch_size]
            batch = load_batch(rows, preprocessing)
            scores, maps = predict_at_original(adapter, batch)
            result.scores.extend(scores.tolist())
            result.labels.extend(int(v) for v in rows.label)
            result.paths.extend(os.path.relpath(p, files_root) for p in rows.path)
            result.defects.extend(d if label else "" for d, label in zip(rows.defect, rows.label))
            result.covered.extend(coverage_flags(rows.to_dict("records"), group.abnormal))
            if adapter.pixel_level and maps is not None:
                if with_metrics:  # pass 1 of the pixel metrics, while the batch's masks are at hand
                    pixels.add_many(original_masks(batch, mask_threshold), maps)
                result.maps.extend(maps)
    result.seconds = time.time() - started
    if with_metrics:
        result.metrics = {**image_metrics(result.labels, result.scores), **pixel_metrics_of(pixels, result.maps)}
        if result.maps and np.isfinite(result.metrics["pixel_auroc"]):
            result.pixel_histograms = np.stack(pixels.histograms)
    return result


def pixel_metrics_of(pixels: PixelAccumulator, maps: list) -> dict:
    """Pass 2 over the category's maps (the bootstrap histograms come out of it too), then the
    exact pixel metrics (benchmark/run/pixel_accumulator.py)."""
    if pixels.images:
        pixels.finish()
        pixels.second_pass(maps)
    return pixels.metrics()
