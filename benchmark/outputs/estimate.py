"""`gadbench estimate`: how long an experiment will take, from an efficiency table.

For each method: query images = the sum over its cells of the target's test images (counted from
the data when it is here, else the published size `test_images` of configs/datasets.yaml);
inference = query images / the method's best throughput; training = models x the measured
training time, where models = sources (x shot counts for methods with one model per k);
evaluation (methods with maps) = the cells' test megapixels (from the images' headers, else the
published `test_megapixels`) x the evaluation cost per megapixel that `gadbench bench` measured on
the device (maps to the original size, exact pixel metrics, bootstrap histograms). The figures
come from `gadbench bench` rows of one device, or from the figures the NAGL paper reports for its
GPU (configs/paper_efficiency.yaml: NAGL, InCTRL and ResAD only; no evaluation cost). It ignores
data loading and reference sets (small: tools/timing/grid_cost.py measures them), and it counts
one backbone pass per query of every cell, although the feature cache shares those passes across
the settings and seeds of a target: for frozen-backbone methods it is an upper bound.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from benchmark.config import CONFIG_DIR, load_yaml
from benchmark.data import read_dataset
from benchmark.data.images import image_size
from benchmark.errors import GadbenchError
from benchmark.run.experiment import Experiment

PAPER_EFFICIENCY = CONFIG_DIR / "paper_efficiency.yaml"


def figures_from_bench(frame: pd.DataFrame, device: str) -> tuple[dict[str, dict], str]:
    """{method: {images_per_second, training_seconds}} from the measured rows of one device."""
    rows = frame[(frame.status == "done") & ((frame.device == device) | (frame.device_name == device))]
    if rows.empty:
        known = sorted(set(frame.device) | set(frame.device_name)) if not frame.empty else []
        raise GadbenchError(f"no efficiency rows for device {device!r} (measured: {known}); run `gadbench bench --device {device}`")
    figures = {}
    for r in rows.itertuples():
        caveats = (["random weights"] if r.random_weights is True else []) + \
                  (["measured with config overrides"] if isinstance(r.overrides, dict) and r.overrides else [])
        evaluation = getattr(r, "evaluation_ms_per_mpx", None)
        figures[r.method] = {"images_per_second": r.throughput_best, "training_seconds": r.training_seconds,
                             "evaluation_ms_per_mpx": None if pd.isna(evaluation) else evaluation,
                             "caveat": ", ".join(caveats)}
    return figures, f"`gadbench bench` rows of {rows.device_name.iloc[0]}"


def figures_from_paper() -> tuple[dict[str, dict], str]:
    data = load_yaml(PAPER_EFFICIENCY)
    figures = {name: {"images_per_second": entry["fps"], "training_seconds": entry["training_hours"] * 3600}
               for name, entry in data["methods"].items()}
    return figures, data["source"]


def _data_here(spec) -> bool:
    return spec.root.exists() or spec.layout == "synthetic"


def test_images(experiment: Experiment, target: str) -> int | None:
    spec = experiment.datasets[target]
    if _data_here(spec):
        table = read_dataset(spec)
        return int((table.split == "test").sum())
    return spec.test_images


def test_megapixels(experiment: Experiment, target: str) -> float | None:
    """The target's test pixels in millions: from the images' headers when the data is here, else
    the documented `test_megapixels` of configs/datasets.yaml."""
    spec = experiment.datasets[target]
    if _data_here(spec):
        table = read_dataset(spec)
        return sum(h * w for h, w in map(image_size, table[table.split == "test"].path)) / 1e6
    return spec.test_megapixels


def _evaluation_seconds(experiment, cls, cells, figure: dict, megapixels: dict) -> tuple[float, str]:
    """Pixel metrics and maps at the original size: the cells' test megapixels x the measured
    evaluation cost per megapixel (none for image-level methods)."""
    if not cls.pixel_level:
        return 0.0, ""
    cost = figure.get("evaluation_ms_per_mpx")
    if cost is None:
        return 0.0, "evaluation not counted (no measured cost per megapixel: `gadbench bench` measures it)"
    for cell in cells:
        if cell.target not in megapixels:
            megapixels[cell.target] = test_megapixels(experiment, cell.target)
    missing = sorted({c.target for c in cells if megapixels[c.target] is None})
    seconds = sum(cost / 1e3 * megapixels[c.target] for c in cells if megapixels[c.target] is not None)
    return seconds, (f"evaluation not counted for {', '.join(missing)} (pixels unknown)" if missing else "")


def estimate(experiment: Experiment, figures: dict[str, dict]) -> pd.DataFrame:
    rows, megapixels = [], {}
    for method in experiment.methods:
        cls = method.adapter_class
        cells = [c for c in experiment.cells() if c.method.name == method.name]
        sizes = [test_images(experiment, c.target) for c in cells]
        figure = figures.get(method.name)
        if figure is None:
            rows.append({"method": method.name, "label": method.label, "cells": len(cells), "note": "no efficiency figure for it"})
            continue
        unknown = sorted({c.target for c, size in zip(cells, sizes) if size is None})
        counted = [c for c, size in zip(cells, sizes) if size is not None]
        images = sum(size for size in sizes if size is not None)
        models = 0
        if cls.trains_on_source:
            models = len({(c.source, cls.checkpoint_name(c.setting)) for c in counted})
        inference = images / figure["images_per_second"]
        training = models * (figure["training_seconds"] or 0.0)
        evaluation, unpriced = _evaluation_seconds(experiment, cls, counted, figure, megapixels)
        notes = ([f"not counted: {', '.join(unknown)} (test-split size unknown: prepare the data)"] if unknown else []) + \
            ([figure["caveat"]] if figure.get("caveat") else []) + ([unpriced] if unpriced else [])
        note = "; ".join(notes)
        rows.append({"method": method.name, "label": method.label, "cells": len(cells), "query_images": images,
                     "inference_hours": inference / 3600, "models": models, "training_hours": training / 3600,
                     "evaluation_hours": evaluation / 3600, "total_hours": (inference + training + evaluation) / 3600,
                     "note": note})
    return pd.DataFrame(rows)


def format_estimate(table: pd.DataFrame, experiment: Experiment, source: str) -> str:
    from tabulate import tabulate

    shown = table.reindex(columns=["label", "cells", "query_images", "inference_hours", "models", "training_hours",
                                   "evaluation_hours", "total_hours", "note"]).astype(object)
    shown["query_images"] = [f"{int(v)}" if pd.notna(v) else "" for v in shown["query_images"]]
    shown["models"] = [f"{int(v)}" if pd.notna(v) else "" for v in shown["models"]]
    total = table["total_hours"].sum() if "total_hours" in table else 0.0
    return (f"{experiment.name}: estimated from {source}\n"
            + tabulate(shown.fillna(""), headers=["method", "cells", "query images", "inference (h)", "models",
                                                   "training (h)", "evaluation (h)", "total (h)", "note"], floatfmt=".2f",
                     showindex=False)
            + f"\ntotal of the methods with figures: {total:.2f} h")


def load_bench_frame(results_root: Path) -> pd.DataFrame:
    from benchmark.outputs.efficiency_tables import efficiency_frame

    return efficiency_frame(results_root)
