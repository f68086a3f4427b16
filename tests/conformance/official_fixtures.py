"""Readers for the official-code fixtures in tests/fixtures/conformance/ (see PROVENANCE.md there)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "conformance" / "nagl"


@lru_cache(maxsize=None)
def _load(name: str) -> dict:
    return torch.load(FIXTURES / f"{name}.pt", weights_only=True)


def load(name: str) -> dict:
    """A fixture as a fresh dict (its tensors share storage: never modify them in place)."""
    return dict(_load(name))


def features(case: dict, role: str) -> torch.Tensor:
    """query / normal / abnormal features, stored exactly as int8 x feature_scale."""
    return case[f"{role}_int8"].float() * case["feature_scale"]


@lru_cache(maxsize=None)
def _official_weights() -> dict[str, torch.Tensor]:
    stored = _load("weights")
    state = {}
    for key in stored["keys"]:
        if key in stored["int8"]:
            state[key] = stored["int8"][key].float() * stored["int8_scale"][key]
        else:
            state[key] = stored["float32"][key].clone()
        assert tuple(state[key].shape) == tuple(stored["shapes"][key]), key
    return state


def official_weights() -> dict[str, torch.Tensor]:
    """The official state_dict (official key names and order), decoded."""
    return {k: v.clone() for k, v in _official_weights().items()}


def fake_official_category(tmp_path: Path) -> tuple[pd.DataFrame, Path]:
    """The fixture's fake MVTec category 'fakecat': 12 train/good files and 5 files in each of
    test/{good, crack, scratch}, masks in ground_truth/<type>/<stem>_mask.png. Returns the
    harness's sample table and the folder that manifest paths are relative to (the category)."""
    from benchmark.data.mvtec import read_mvtec

    root = tmp_path / "fake_root"
    category = root / "fakecat"
    pixels = np.zeros((8, 8, 3), dtype=np.uint8)
    mask = np.zeros((8, 8), dtype=np.uint8)
    mask[2:4, 2:4] = 255
    for index in range(12):
        pixels[0, 0, 0] = index  # distinct files (manifests record each file's sha256)
        _save(pixels, category / "train" / "good" / f"{index:03d}.png")
    for defect in ("good", "crack", "scratch"):
        for index in range(5):
            pixels[0, 0, 1], pixels[0, 0, 2] = index, len(defect)
            _save(pixels, category / "test" / defect / f"{index:03d}.png")
            if defect != "good":
                _save(mask, category / "ground_truth" / defect / f"{index:03d}_mask.png")
    return read_mvtec(root), category


def _save(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
