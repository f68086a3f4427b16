"""Magnetic Tile surface defects (Huang et al. 2020), upstream layout:
MT_<Type>/Imgs/<name>.jpg with a same-size mask <name>.png beside it; MT_Free holds the
defect-free images.

The data set has no train/test split. The rule here, deterministic and independent of file order:
a MT_Free image goes to test/good when int(sha256(file name)[:8], 16) % 1000 < 1000 * test_fraction
(default 0.5), else to train/good. Every defect image is a test image. Four MT_Uneven masks are
empty: those images stay anomalous at image level and contribute no defect pixels.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd

from benchmark.data.samples import make_table
from benchmark.errors import GadbenchError

CATEGORY = "magnetic_tile"
FREE = "MT_Free"


def goes_to_test(file_name: str, test_fraction: float) -> bool:
    bucket = int(hashlib.sha256(file_name.encode()).hexdigest()[:8], 16) % 1000
    return bucket < round(1000 * test_fraction)


def read_magnetic_tile(root: Path, test_fraction: float = 0.5, category: str = CATEGORY) -> pd.DataFrame:
    root = Path(root)
    type_dirs = sorted(d for d in root.glob("MT_*") if (d / "Imgs").is_dir())
    if not any(d.name == FREE for d in type_dirs):
        raise GadbenchError(f"{root}: no {FREE}/Imgs folder; point the dataset root at the folder holding MT_*")
    rows = []
    for type_dir in type_dirs:
        is_free = type_dir.name == FREE
        defect = "good" if is_free else type_dir.name[len("MT_"):].lower()
        for image in sorted((type_dir / "Imgs").glob("*.jpg")):
            mask = image.with_suffix(".png")
            if not is_free and not mask.is_file():
                raise GadbenchError(f"{image}: defect image without its mask {mask.name}; restore it or remove the image")
            split = "test" if (not is_free or goes_to_test(image.name, test_fraction)) else "train"
            rows.append(
                {
                    "path": str(image.resolve()),
                    "category": category,
                    "split": split,
                    "label": 0 if is_free else 1,
                    "defect": defect,
                    "mask": None if is_free else str(mask.resolve()),
                }
            )
    return make_table(rows)
