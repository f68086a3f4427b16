"""Dataset readers. Every layout becomes one sample table with the columns SAMPLE_COLUMNS:

path (absolute), category, split ('train' | 'test'), label (0 normal, 1 anomalous),
defect ('good' for normal images), mask (absolute path, or None for normal images).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from benchmark.errors import GadbenchError, closest

from benchmark.data.samples import make_table

# layout -> "module:function(root, **options) -> DataFrame"
READERS = {
    "mvtec": "benchmark.data.mvtec:read_mvtec",
    "visa": "benchmark.data.visa:read_visa",
    "magnetic_tile": "benchmark.data.magnetic_tile:read_magnetic_tile",
    "synthetic": "benchmark.data.synthetic:read_synthetic",
    "elpv": "benchmark.data.elpv:read_elpv",
}


@dataclass
class DatasetSpec:
    """One entry of configs/datasets.yaml, with its root resolved against the data root."""

    name: str
    layout: str
    root: Path
    display: str = ""
    mask_threshold: int = 127  # mask pixel is anomalous if value > threshold
    options: dict = field(default_factory=dict)
    # keep at most this many images per (category, split, defect), the first by sorted path:
    # a deterministic subsample for CI-sized configurations (None: everything)
    max_per_group: int | None = None
    # published size of the test split, for run-time estimates when the data is not here
    test_images: int | None = None
    # published test pixels in millions, for the evaluation share of run-time estimates
    test_megapixels: float | None = None

    @property
    def label(self) -> str:
        return self.display or self.name

    @property
    def files_root(self) -> Path:
        """The folder the sample table's paths are relative to in manifests and cell files: the
        root, except for ELPV read from its installed package (outside the data root)."""
        if self.layout == "elpv":
            from benchmark.data.elpv import data_folder

            return data_folder(self.root) or self.root
        return self.root




def read_dataset(spec: DatasetSpec) -> pd.DataFrame:
    """Read any layout into a validated sample table."""
    if spec.layout not in READERS:
        raise GadbenchError(f"dataset {spec.name!r}: unknown layout {spec.layout!r}{closest(spec.layout, READERS)}")
    if not spec.root.exists() and spec.layout not in ("synthetic", "elpv"):
        raise GadbenchError(
            f"dataset {spec.name!r}: data root {spec.root} does not exist; set DATA_ROOT or --data-root to the folder that holds it"
        )
    module_name, _, function_name = READERS[spec.layout].partition(":")
    reader = getattr(importlib.import_module(module_name), function_name)
    table = reader(spec.root, **spec.options)
    if spec.max_per_group:
        table = (table.sort_values("path").groupby(["category", "split", "defect"], sort=False).head(spec.max_per_group)
                 .pipe(lambda t: make_table(t.to_dict("records"))))
    if table.empty:
        raise GadbenchError(f"dataset {spec.name!r}: no images found under {spec.root}; check the layout ({spec.layout})")
    return table


def check_category(table: pd.DataFrame, dataset: str, category: str) -> None:
    """The minimum a category needs to be a target: normal train images and a test split."""
    rows = table[table.category == category]
    if rows.empty:
        raise GadbenchError(f"dataset {dataset!r}: no category {category!r}{closest(category, table.category.unique())}")
    if not ((rows.split == "train") & (rows.label == 0)).any():
        raise GadbenchError(f"dataset {dataset!r}, category {category!r}: no train/good images; normal references come from there")
    if not (rows.split == "test").any():
        raise GadbenchError(f"dataset {dataset!r}, category {category!r}: empty test set; nothing to score")
