"""What passes between the harness and a method: image batches, reference sets, predictions,
the training data a trained method is lent, and the run context."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import pandas as pd
import torch

# Reference settings an adapter can declare support for.
NORMAL = "normal"  # N^k: k normal references
NORMAL_ABNORMAL = "normal+abnormal"  # N^k+A^j: k normal plus j abnormal references with masks
ABNORMAL_ONLY = "abnormal-only"  # N0+A^j: no normal reference set (an empty one); normal patches come
#                                 from the abnormal references' own normal region (their mask 0)
ALL_NORMAL = "all-normal"  # Nall: every train/good image of the category as normal references
ZERO_SHOT = "zero-shot"


class ImageBatch:
    """Preprocessed images with what the harness knows about them.

    images: [B, 3, H, W] float tensor after the adapter's preprocessing. It may be given as a
        zero-argument callable: the pixels are then decoded on first access only, so a batch whose
        features all come from the feature cache never decodes an image.
    keys: one content key per image (image sha256 + preprocessing) for feature caches.
    original_sizes: (height, width) of each image as stored on disk; maps are scored there.
    samples: the rows of the sample table (path, category, split, label, defect, mask).
    """

    def __init__(self, images, keys: list[str], original_sizes: list[tuple[int, int]], samples: list[dict]):
        self._images = images
        self.keys, self.original_sizes, self.samples = list(keys), list(original_sizes), list(samples)

    @property
    def images(self) -> torch.Tensor:
        if callable(self._images):
            self._images = self._images()
        return self._images

    @property
    def decoded(self) -> bool:
        """Whether the pixels have been loaded (tests and benchmarks check the cache with it)."""
        return not callable(self._images)

    def __len__(self) -> int:
        return len(self.keys)


class ReferenceSet(ImageBatch):
    """Reference images; abnormal references also carry their masks in model space [n, H, W]."""

    def __init__(self, images, keys, original_sizes, samples, masks: torch.Tensor | None = None):
        super().__init__(images, keys, original_sizes, samples)
        self.masks = masks

    @classmethod
    def from_batch(cls, batch: ImageBatch, masks: torch.Tensor | None = None) -> "ReferenceSet":
        """The same images (decoded or not) as references."""
        return cls(batch._images, batch.keys, batch.original_sizes, batch.samples, masks)


@dataclass
class Prediction:
    """image_scores: [B] (None: the maximum of each post-processed map at the model input, as
    ResAD scores); anomaly_maps: [B, h, w] at the method's own resolution (its patch grid or its
    input), or None for an image-level method. The harness brings maps back to each image's
    original size, blurring where the adapter's `map_blur_at` says."""

    image_scores: np.ndarray | None
    anomaly_maps: torch.Tensor | np.ndarray | None = None


class SampleReader(Protocol):
    """How the harness reads images and masks from disk (benchmark/data/batches.py implements it)."""

    def load_batch(self, rows, preprocessing) -> ImageBatch: ...

    def model_space_mask(self, sample: dict, original_size: tuple[int, int], preprocessing,
                         mask_threshold: int) -> torch.Tensor: ...

    def load_image(self, path: str): ...


@dataclass
class TrainingData:
    """A source domain as a trained method sees it, lent by the harness: the sample table
    (path, category, split, label, defect, mask) and how to read its images and masks. Batches
    carry content keys, so features of frozen backbones come from the feature cache."""

    name: str
    table: pd.DataFrame
    mask_threshold: int
    reader: SampleReader

    def batch(self, rows, preprocessing) -> ImageBatch:
        """The rows' images in `preprocessing`, decoded only when `batch.images` is read."""
        return self.reader.load_batch(rows, preprocessing)

    def mask(self, sample: dict, original_size: tuple[int, int], preprocessing) -> torch.Tensor:
        """One sample's {0, 1} mask [size, size] through the images' geometry (zeros when normal)."""
        return self.reader.model_space_mask(sample, original_size, preprocessing, self.mask_threshold)

    def masks(self, batch: ImageBatch, preprocessing) -> torch.Tensor:
        """[B, size, size] masks of a batch, through the same geometry as its images."""
        return torch.stack([self.mask(s, size, preprocessing) for s, size in zip(batch.samples, batch.original_sizes)])

    def image(self, path: str):
        """One image, decoded (RGB PIL)."""
        return self.reader.load_image(path)


@dataclass
class RunContext:
    """What the harness lends an adapter: the device, the weights folder, the frozen-feature
    service (backbones, their preprocessing and weights, the feature cache, shared frozen
    models), a work folder, and the readable class names text prompts use."""

    device: torch.device
    weights: Any  # benchmark.features.weights.WeightStore
    features: Any  # benchmark.features.service.FeatureService
    workdir: Path
    allow_download: bool = False
    # (category folder, style) -> the object name a prompt uses (benchmark/data/class_names.py)
    class_name: Callable[[str, str], str] = lambda category, style: category
    extra: dict = field(default_factory=dict)
