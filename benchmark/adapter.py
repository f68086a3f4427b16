"""The adapter contract: what the runner gives a method and what it expects back.

The runner owns data, references, seeds, preprocessing, caching, timing and metrics. An adapter
owns only its method: it turns (references, query images) into (image scores, anomaly maps) and,
for trained methods, learns on the source domain first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch

from benchmark.data.preprocessing import Preprocessing

# Reference settings an adapter can declare support for.
NORMAL = "normal"  # N^k: k normal references
NORMAL_ABNORMAL = "normal+abnormal"  # N^k+A^j: k normal plus j abnormal references with masks
ZERO_SHOT = "zero-shot"


class ImageBatch:
    """Preprocessed images with what the runner knows about them.

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
    original size (benchmark/run/maps.py), blurring where the adapter's `map_blur_at` says."""

    image_scores: np.ndarray | None
    anomaly_maps: torch.Tensor | np.ndarray | None = None


@dataclass
class Domain:
    """A data set as training sees it: its sample table and how to read its masks."""

    name: str
    table: pd.DataFrame
    mask_threshold: int = 127


@dataclass
class RunContext:
    """What the runner lends an adapter: device, weights, feature extraction, a work folder."""

    device: torch.device
    weights: Any  # benchmark.features.weights.WeightStore
    features: Any  # benchmark.features.FeatureService
    workdir: Path
    allow_download: bool = False
    extra: dict = field(default_factory=dict)


class Adapter:
    """Base class for every method. Subclasses set the class attributes and override the hooks."""

    name: ClassVar[str] = "adapter"
    # part of every cell's key: bump it when the method's results change without a config change
    version: ClassVar[int] = 1
    supports: ClassVar[tuple[str, ...]] = (NORMAL,)
    trains_on_source: ClassVar[bool] = False
    # for run-time estimates: whether fit_source trains one model per k (NAGL, InCTRL) or one for all k
    model_per_k: ClassVar[bool] = False
    pixel_level: ClassVar[bool] = True
    # where the harness blurs a map with the config's `blur_sigma`: at the image's 'original' size
    # (the map resized straight there: NAGL's dists2map) or at the model 'input' (upsampled to it,
    # blurred, then put back on the image: PatchCore's segmentor, ResAD, WinCLIP)
    map_blur_at: ClassVar[str] = "original"
    default_config: ClassVar[dict] = {}
    # merged into the config by `gadbench rehearse`: the shortest schedule that still takes every
    # code path of training (benchmark/run/rehearsal.py)
    rehearsal_config: ClassVar[dict] = {}

    def __init__(self, config: dict | None, context: RunContext):
        self.config = {**self.default_config, **(config or {})}
        self.context = context

    # --- what the runner asks of every method -------------------------------------------
    def preprocessing(self) -> Preprocessing:
        """How the runner must prepare images (size, resize mode, crop, mean, std)."""
        raise NotImplementedError

    def fit_source(self, source: Domain, seed: int, workdir: Path, setting=None, target: Domain | None = None) -> Path | None:
        """Train once on the source domain for this setting (e.g. one model per k); return the
        checkpoint (same config -> same file). `target` is given only to adapters whose
        uses_target_for_training() is True (the official NAGL checkpoint choice), and rows say so."""
        return None

    def uses_target_for_training(self) -> bool:
        return False

    def set_references(self, category: str, normal: ReferenceSet, abnormal: ReferenceSet | None) -> None:
        """Called once per (target category, setting, seed, abnormal reference group)."""
        raise NotImplementedError

    def predict(self, batch: ImageBatch) -> Prediction:
        raise NotImplementedError

    def describe(self) -> dict:
        """Parameter counts, backbone, weights checksum, preprocessing: written into every row."""
        return {"name": self.name, "preprocessing": self.preprocessing().describe()}

    def merged_training_config(self, known: set[str]) -> dict:
        """The `training:` block over the class defaults, with unknown keys refused by name."""
        from benchmark.errors import GadbenchError, closest

        merged = {**self.default_config.get("training", {}), **(self.config.get("training") or {})}
        for key in merged:
            if key not in known:
                raise GadbenchError(f"{self.name}: unknown training key {key!r}{closest(key, known)}")
        return merged

    def required_weights(self) -> list:
        """The weight files this configuration loads (benchmark.features.weights.WeightFile), for
        `gadbench weights`. The default covers adapters with a `backbone` key from configs/backbones.yaml."""
        from benchmark.config import backbone_entry
        from benchmark.features.weights import WeightFile

        if "backbone" not in self.config or self.config.get("allow_random_weights"):
            return []
        name = self.config["backbone"]
        return [WeightFile.from_config(name, backbone_entry(name)["weights"])]
