"""ELPV solar cells (Deitsch et al.), as shipped by the PyPI package `elpv-dataset`
(`pip install elpv-dataset`), in InCTRL's split: normal = defect probability 0, anomalous =
probability 1 (defect types 'mono' and 'poly' by cell type), the probabilities 1/3 and 2/3
left out; the normal cells split 75 / 25 into train / test with scikit-learn's
train_test_split(test_size=0.25, random_state=42), exactly as InCTRL's conversion script.
ELPV has no masks: every pixel metric is not applicable (NaN, shown as "–"), never 0.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from benchmark.data.samples import make_table
from benchmark.errors import GadbenchError

CATEGORY = "elpv"


def package_root() -> Path | None:
    spec = importlib.util.find_spec("elpv_dataset")
    return Path(spec.origin).parent / "data" if spec and spec.origin else None


def data_folder(root: Path | None) -> Path | None:
    """Where the files are: `root` when it holds labels.csv, else the installed package's data
    folder (outside the data root: manifests and cell files name paths relative to this)."""
    return Path(root) if root and Path(root).joinpath("labels.csv").is_file() else package_root()


def read_elpv(root: Path | None = None, category: str = CATEGORY) -> pd.DataFrame:
    """root: the folder with labels.csv and images/ (default: the installed package's data)."""
    root = data_folder(root)
    if root is None or not (root / "labels.csv").is_file():
        raise GadbenchError("ELPV: labels.csv not found; `pip install elpv-dataset` or point the dataset root at its data folder")
    labels = np.genfromtxt(root / "labels.csv", dtype=["|S19", "<f8", "|S4"], names=["path", "probability", "type"])
    names = np.char.decode(labels["path"])
    probabilities, types = labels["probability"], np.char.decode(labels["type"])
    normal = names[probabilities == 0]
    train, test, _, _ = train_test_split(normal, probabilities[probabilities == 0], test_size=0.25, random_state=42)
    rows = [{"path": str((root / n).resolve()), "category": category, "split": "train", "label": 0, "defect": "good", "mask": None} for n in train]
    rows += [{"path": str((root / n).resolve()), "category": category, "split": "test", "label": 0, "defect": "good", "mask": None} for n in test]
    for name, kind in zip(names[probabilities == 1], types[probabilities == 1]):
        rows.append({"path": str((root / name).resolve()), "category": category, "split": "test", "label": 1,
                     "defect": kind.strip(), "mask": None})
    return make_table(rows)
