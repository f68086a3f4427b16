"""The sample table every reader returns (columns SAMPLE_COLUMNS), and the image files of a folder."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

SAMPLE_COLUMNS = ["path", "category", "split", "label", "defect", "mask"]
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


def make_table(rows: list[dict]) -> pd.DataFrame:
    table = pd.DataFrame(rows, columns=SAMPLE_COLUMNS)
    table["label"] = table["label"].astype(int)
    table["mask"] = table["mask"].astype(object).where(table["mask"].notna(), None)
    return table.sort_values(["category", "split", "label", "defect", "path"], kind="stable").reset_index(drop=True)


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
