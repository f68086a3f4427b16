"""Feature extraction behind a two-tier cache, and the frozen models a process shares.

The cache key is (backbone, weights sha256, layers, preprocessing, image sha256): the same image
seen by several cells, settings, seeds or methods with the same backbone is passed through it once,
and with the disk tier (benchmark/features/disk_cache.py) once across runs and processes.
"""

from __future__ import annotations

from collections import OrderedDict

import torch

from benchmark.api import ImageBatch, Preprocessing
from benchmark.config import backbone_entry
from benchmark.features.backbones import BackboneHandle, build_backbone
from benchmark.features.disk_cache import DiskFeatureCache
from benchmark.features.weights import WeightFile, WeightStore


# The frozen models of every service that shares them, for the whole process: a grid and the
# report after it (`gadbench rehearse`, `run` then `report` in one call) build a CLIP and encode its
# prompts once, not once per Runner (about a fifth of a rehearsal on 2 CPU cores).
_PROCESS_FROZEN: dict[tuple, object] = {}


class FeatureService:
    """Builds backbones once per process and serves their features per image from two tiers: an
    in-memory LRU (bounded by `memory_bytes`) and, when `disk` is given, a DiskFeatureCache shared
    by processes and runs. memory_bytes=0 and disk=None turn caching off (efficiency timing).
    share_frozen: frozen models (frozen_model) come from the process-wide table, built by any
    service that shares it; otherwise this service builds its own (the bench times them cold)."""

    def __init__(self, store: WeightStore, device: torch.device, batch_size: int = 16,
                 disk: DiskFeatureCache | None = None, memory_bytes: int = 2 << 30, share_frozen: bool = False):
        self.store, self.device, self.batch_size = store, device, batch_size
        self.disk, self.memory_bytes = disk, memory_bytes
        self._backbones: dict[tuple, BackboneHandle] = {}
        self._frozen: dict[tuple, object] = _PROCESS_FROZEN if share_frozen else {}
        self._memory: OrderedDict[tuple[str, str], list[torch.Tensor]] = OrderedDict()
        self._memory_used = 0
        self.memory_hits = self.disk_hits = self.misses = 0

    def backbone(self, name: str, input_size: int, allow_random: bool = False,
                 layers: tuple[int, ...] | None = None) -> BackboneHandle:
        key = (name, input_size, allow_random, tuple(layers or ()))
        if key not in self._backbones:
            handle = build_backbone(name, self.store, input_size, allow_random, layers)
            handle.module.to(self.device)
            self._backbones[key] = handle
        return self._backbones[key]

    @staticmethod
    def preprocessing(backbone: str, size: int, **geometry) -> Preprocessing:
        """The geometry a method asks for, with the mean / std its backbone was trained with."""
        entry = backbone_entry(backbone)
        return Preprocessing(size=size, mean=tuple(entry["mean"]), std=tuple(entry["std"]), **geometry)

    @staticmethod
    def required_weights(backbone: str) -> list[WeightFile]:
        """The weight file a backbone of configs/backbones.yaml loads (without building it)."""
        return [WeightFile.from_config(backbone, backbone_entry(backbone)["weights"])]

    def frozen_model(self, key: tuple, build):
        """A frozen model (a CLIP, with its text embeddings) built once and shared by every cell
        that asks for the same key (the key names everything the model depends on: architecture,
        weights file, device: ClipAdapter.shared_model); `build()` makes it on first use."""
        if key not in self._frozen:
            self._frozen[key] = build()
        return self._frozen[key]

    def _remember(self, key: tuple[str, str], levels: list[torch.Tensor]) -> None:
        size = sum(level.numel() * level.element_size() for level in levels)
        if size > self.memory_bytes:
            return
        self._memory[key] = levels
        self._memory_used += size
        while self._memory_used > self.memory_bytes:
            _, evicted = self._memory.popitem(last=False)
            self._memory_used -= sum(level.numel() * level.element_size() for level in evicted)

    def _lookup(self, model_id: str, key: str) -> list[torch.Tensor] | None:
        levels = self._memory.get((model_id, key))
        if levels is not None:
            self._memory.move_to_end((model_id, key))
            self.memory_hits += 1
            return levels
        levels = self.disk.get(model_id, key) if self.disk is not None else None
        if levels is not None:
            self.disk_hits += 1
            self._remember((model_id, key), levels)
        return levels

    def cached(self, model_id: str, batch: ImageBatch, encode) -> list[torch.Tensor]:
        """What `encode(images [n, 3, H, W]) -> list of [n, ...] tensors` gives for each image of
        the batch, stacked on the service's device, from the caches where possible: only the images
        that miss both tiers are decoded and encoded. `model_id` names the frozen model (its
        architecture, weights and whatever else changes its output)."""
        per_image = [self._lookup(model_id, key) for key in batch.keys]
        missing = [i for i, levels in enumerate(per_image) if levels is None]
        self.misses += len(missing)
        for start in range(0, len(missing), self.batch_size):
            chunk = missing[start:start + self.batch_size]
            levels = [level.float().cpu() for level in encode(batch.images[chunk].to(self.device))]
            for position, index in enumerate(chunk):
                per_image[index] = [level[position].clone() for level in levels]
                self._remember((model_id, batch.keys[index]), per_image[index])
                if self.disk is not None:
                    self.disk.put(model_id, batch.keys[index], per_image[index])
        return [torch.stack([maps[level] for maps in per_image]).to(self.device) for level in range(len(per_image[0]))]

    def extract_layers(self, handle: BackboneHandle, batch: ImageBatch) -> list[torch.Tensor]:
        """One [B, C, h, w] map per layer of a backbone, through the caches (see `cached`)."""
        return self.cached(handle.id, batch, handle.module)

    def extract(self, handle: BackboneHandle, batch: ImageBatch) -> torch.Tensor:
        """The first (for one-layer backbones, the only) feature map: [B, C, h, w]."""
        return self.extract_layers(handle, batch)[0]

    def counters(self) -> dict:
        return {"feature_cache_hits": self.memory_hits + self.disk_hits, "feature_cache_memory_hits": self.memory_hits,
                "feature_cache_disk_hits": self.disk_hits, "feature_cache_misses": self.misses}
