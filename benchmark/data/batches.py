"""Rows of a sample table -> ImageBatch / ReferenceSet, decoding pixels only when they are used.

Keys (file sha256 + preprocessing) and original sizes (read from the image header) are known
without decoding; the pixels are decoded and preprocessed on first access of `batch.images`. With
a warm feature cache a batch is therefore never decoded, which keeps a rerun close to free.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from benchmark.api import ImageBatch, Preprocessing, ReferenceSet, TrainingData
from benchmark.data.images import file_sha256, image_size, load_image, load_mask


def image_key(path: str, preprocessing: Preprocessing) -> str:
    """The content key of one image as a method sees it: what feature caches are keyed by."""
    return f"{file_sha256(path)}:{preprocessing.key}"


def load_batch(rows: pd.DataFrame | list[dict], preprocessing: Preprocessing) -> ImageBatch:
    records = rows.to_dict("records") if isinstance(rows, pd.DataFrame) else list(rows)
    keys = [image_key(r["path"], preprocessing) for r in records]
    sizes = [image_size(r["path"]) for r in records]

    def decode() -> torch.Tensor:
        if not records:
            return torch.zeros(0, 3, preprocessing.size, preprocessing.size)
        return torch.stack([preprocessing.image(load_image(r["path"])) for r in records])

    return ImageBatch(decode, keys, sizes, records)


def model_space_masks(batch: ImageBatch, preprocessing: Preprocessing, mask_threshold: int) -> torch.Tensor:
    """[B, size, size] masks through the same geometry as the images (all-normal when no mask)."""
    return torch.stack([FileReader.model_space_mask(r, size, preprocessing, mask_threshold)
                        for r, size in zip(batch.samples, batch.original_sizes)])


def load_references(rows: pd.DataFrame, preprocessing: Preprocessing, mask_threshold: int, with_masks: bool) -> ReferenceSet:
    """References; abnormal ones also carry their masks, through the same geometry as the images."""
    batch = load_batch(rows, preprocessing)
    masks = model_space_masks(batch, preprocessing, mask_threshold) if with_masks else None
    return ReferenceSet.from_batch(batch, masks)


def original_masks(batch: ImageBatch, mask_threshold: int) -> list[np.ndarray]:
    """Boolean masks at each image's stored size: what pixel metrics are computed on."""
    return [load_mask(r.get("mask"), size, mask_threshold) for r, size in zip(batch.samples, batch.original_sizes)]


class FileReader:
    """The harness's SampleReader (benchmark/api/records.py): images and masks from disk."""

    load_batch = staticmethod(load_batch)
    load_image = staticmethod(load_image)

    @staticmethod
    def model_space_mask(sample: dict, original_size: tuple[int, int], preprocessing: Preprocessing,
                         mask_threshold: int) -> torch.Tensor:
        return preprocessing.mask(load_mask(sample.get("mask"), original_size, mask_threshold))


def training_data(name: str, table: pd.DataFrame, mask_threshold: int = 127) -> TrainingData:
    """A data set as a trained method is lent it."""
    return TrainingData(name, table, mask_threshold, FileReader())
