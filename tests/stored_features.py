"""A stand-in for the harness's FeatureService that serves stored feature maps by image key, so
that an adapter can be run on the exact features an official-code fixture was computed from."""

from __future__ import annotations

import torch

from benchmark.api import ImageBatch, ReferenceSet, RunContext
from benchmark.features.service import FeatureService
from tests.contexts import run_context


class StoredFeatures:
    preprocessing = staticmethod(FeatureService.preprocessing)  # the catalogue's mean / std, as the harness

    def __init__(self, levels_by_key: dict[str, list[torch.Tensor]]):
        self.levels_by_key = levels_by_key

    def backbone(self, *args, **kwargs):
        return None

    def extract_layers(self, handle, batch: ImageBatch) -> list[torch.Tensor]:
        per_image = [self.levels_by_key[key] for key in batch.keys]
        return [torch.stack([levels[i] for levels in per_image]) for i in range(len(per_image[0]))]

    def extract(self, handle, batch: ImageBatch) -> torch.Tensor:
        return self.extract_layers(handle, batch)[0]


def stored_context(levels_by_key: dict[str, list[torch.Tensor]]) -> RunContext:
    return run_context(device=torch.device("cpu"), weights=None, features=StoredFeatures(levels_by_key), workdir=None)


def keyed_batch(keys: list[str], size: tuple[int, int], cls=ImageBatch) -> ImageBatch:
    """A batch that names its images only (the stored features are looked up by these keys)."""
    return cls(lambda: (_ for _ in ()).throw(AssertionError("pixels are never needed")), keys, [size] * len(keys),
               [{} for _ in keys])


def keyed_references(keys: list[str], size: tuple[int, int]) -> ReferenceSet:
    return keyed_batch(keys, size, ReferenceSet)


def scored(adapter, batch: ImageBatch):
    """The adapter's prediction as the harness scores it: image_scores [B] and anomaly_maps at
    each image's original size (benchmark/run/engine.py)."""
    from types import SimpleNamespace

    from benchmark.run.engine import predict_at_original

    scores, maps = predict_at_original(adapter, batch)
    return SimpleNamespace(image_scores=scores, anomaly_maps=maps)
