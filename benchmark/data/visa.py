"""VisA: the original layout with split_csv/1cls.csv, or the same split re-laid as MVTec layout.

Original: <root>/split_csv/1cls.csv (columns object, split, label, image, mask; paths relative to
the root, label 'normal' | 'anomaly'). VisA masks store small class ids, so any value > 0 is a
defect (datasets.yaml sets mask_threshold: 0). Both layouts give the same table up to the paths.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from benchmark.data.samples import make_table
from benchmark.data.mvtec import read_mvtec
from benchmark.errors import GadbenchError

SPLIT_CSV = Path("split_csv") / "1cls.csv"
DEFECT = "bad"  # VisA has no defect types; the MVTec-style re-lay names the one type 'bad'


def read_visa_original(root: Path, categories: list[str] | None = None) -> pd.DataFrame:
    csv_path = root / SPLIT_CSV
    split = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    needed = {"object", "split", "label", "image", "mask"}
    if not needed <= set(split.columns):
        raise GadbenchError(f"{csv_path}: needs the columns {sorted(needed)}, has {list(split.columns)}")
    if categories:
        split = split[split["object"].isin(categories)]
    rows = []
    for record in split.itertuples(index=False):
        anomalous = record.label.strip().lower() == "anomaly"
        if record.split not in ("train", "test"):
            raise GadbenchError(f"{csv_path}: split {record.split!r} for {record.image}; expected train or test")
        if record.split == "train" and anomalous:
            continue
        image = root / record.image
        mask = root / record.mask if anomalous and record.mask else None
        if anomalous and (mask is None or not mask.is_file()):
            raise GadbenchError(f"{image}: anomalous image without its mask {mask}; restore it or remove the row from {csv_path}")
        rows.append(
            {
                "path": str(image.resolve()),
                "category": record.object,
                "split": record.split,
                "label": int(anomalous),
                "defect": DEFECT if anomalous else "good",
                "mask": str(mask.resolve()) if mask else None,
            }
        )
    return make_table(rows)


def read_visa(root: Path, categories: list[str] | None = None) -> pd.DataFrame:
    root = Path(root)
    if (root / SPLIT_CSV).is_file():
        return read_visa_original(root, categories)
    return read_mvtec(root, categories)
