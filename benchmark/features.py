"""Frozen backbones from timm and feature extraction behind a two-tier cache.

The cache key is (backbone, weights sha256, layers, preprocessing, image sha256): the same image
seen by several cells, settings, seeds or methods with the same backbone is passed through it once,
and with the disk tier (benchmark/feature_cache.py) once across runs and processes.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import timm
import torch
from torch import nn

from benchmark.adapter import ImageBatch
from benchmark.config import backbone_entry
from benchmark.errors import GadbenchError
from benchmark.feature_cache import DiskFeatureCache
from benchmark.weights import RANDOM, WeightFile, WeightStore, lukemelas_to_timm_efficientnet


class FrozenBackbone(nn.Module):
    """A timm model that returns a list of [B, C, h, w] feature maps.

    cnn: the timm features_only outputs `layers` (feature indices; for ResNets 2 = layer2, 3 = layer3).
    vit: one map, the last block's tokens after the final norm (timm forward_features), prefix
    tokens (CLS, registers) dropped, reshaped to the patch grid.
    """

    def __init__(self, model: nn.Module, kind: str):
        super().__init__()
        self.model, self.kind = model.eval(), kind
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        if self.kind == "cnn":
            return list(self.model(images))
        tokens = self.model.forward_features(images)[:, self.model.num_prefix_tokens:]
        h, w = self.model.patch_embed.dynamic_feat_size(images.shape[-2:]) if hasattr(
            self.model.patch_embed, "dynamic_feat_size") else self.model.patch_embed.grid_size
        return [tokens.transpose(1, 2).reshape(images.shape[0], -1, h, w)]


@dataclass
class BackboneHandle:
    name: str
    module: FrozenBackbone
    weights_sha256: str
    mean: tuple
    std: tuple
    timm_name: str
    layers: tuple[int, ...] = ()

    @property
    def id(self) -> str:
        return f"{self.name}@{self.weights_sha256[:16]}/layers{','.join(map(str, self.layers))}"

    def describe(self) -> dict:
        return {"backbone": self.name, "timm_name": self.timm_name, "weights_sha256": self.weights_sha256,
                "layers": list(self.layers),
                "random_weights": self.weights_sha256 == RANDOM,
                "parameters": sum(p.numel() for p in self.module.parameters())}


def build_backbone(name: str, store: WeightStore, input_size: int, allow_random: bool = False,
                   layers: tuple[int, ...] | None = None) -> BackboneHandle:
    entry = backbone_entry(name)
    kind = entry.get("kind", "cnn")
    layers = tuple(layers) if layers else (entry.get("feature_index", 3),) if kind == "cnn" else (-1,)
    if kind == "cnn":
        model = timm.create_model(entry["timm_name"], pretrained=False, features_only=True, out_indices=layers)
    elif kind == "vit":
        model = timm.create_model(entry["timm_name"], pretrained=False, img_size=input_size, num_classes=0)
    else:
        raise GadbenchError(f"configs/backbones.yaml: {name}.kind must be cnn or vit, not {kind!r}")
    if allow_random:
        sha256 = RANDOM
    else:
        weight = WeightFile.from_config(name, entry["weights"])
        state, sha256 = store.load_state_dict(weight)
        state = _map_keys(weight.key_map, state, model, entry)
        if kind == "cnn":  # a features_only model has no classifier head: its weights are not needed
            state = {k: v for k, v in state.items() if k in model.state_dict()}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise GadbenchError(f"weights {weight.file} do not fit {entry['timm_name']}: missing {missing[:3]}, unexpected {unexpected[:3]}")
    module = FrozenBackbone(model, kind)
    return BackboneHandle(name, module, sha256, tuple(entry["mean"]), tuple(entry["std"]), entry["timm_name"], layers)


def _map_keys(key_map: str, state: dict, model: nn.Module, entry: dict) -> dict:
    if key_map == "none":
        return state
    if key_map == "lukemelas_efficientnet":
        return lukemelas_to_timm_efficientnet(state, [len(stage) for stage in model.blocks])
    if key_map == "timm_vit_filter":
        from timm.models.vision_transformer import checkpoint_filter_fn

        return checkpoint_filter_fn(state, model)
    raise GadbenchError(f"configs/backbones.yaml: unknown key_map {key_map!r} for {entry['timm_name']}")


class FeatureService:
    """Builds backbones once per process and serves their features per image from two tiers: an
    in-memory LRU (bounded by `memory_bytes`) and, when `disk` is given, a DiskFeatureCache shared
    by processes and runs. memory_bytes=0 and disk=None turn caching off (efficiency timing)."""

    def __init__(self, store: WeightStore, device: torch.device, batch_size: int = 16,
                 disk: DiskFeatureCache | None = None, memory_bytes: int = 2 << 30):
        self.store, self.device, self.batch_size = store, device, batch_size
        self.disk, self.memory_bytes = disk, memory_bytes
        self._backbones: dict[tuple, BackboneHandle] = {}
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

    def _remember(self, key: tuple[str, str], levels: list[torch.Tensor]) -> None:
        size = sum(level.numel() * level.element_size() for level in levels)
        if size > self.memory_bytes:
            return
        self._memory[key] = levels
        self._memory_used += size
        while self._memory_used > self.memory_bytes:
            _, evicted = self._memory.popitem(last=False)
            self._memory_used -= sum(level.numel() * level.element_size() for level in evicted)

    def _lookup(self, handle: BackboneHandle, key: str) -> list[torch.Tensor] | None:
        levels = self._memory.get((handle.id, key))
        if levels is not None:
            self._memory.move_to_end((handle.id, key))
            self.memory_hits += 1
            return levels
        levels = self.disk.get(handle.id, key) if self.disk is not None else None
        if levels is not None:
            self.disk_hits += 1
            self._remember((handle.id, key), levels)
        return levels

    def extract_layers(self, handle: BackboneHandle, batch: ImageBatch) -> list[torch.Tensor]:
        """One [B, C, h, w] map per layer, on the service's device, from the caches where possible.
        Only the images that miss both tiers are decoded and passed through the backbone."""
        per_image = [self._lookup(handle, key) for key in batch.keys]
        missing = [i for i, levels in enumerate(per_image) if levels is None]
        self.misses += len(missing)
        for start in range(0, len(missing), self.batch_size):
            chunk = missing[start:start + self.batch_size]
            levels = [level.float().cpu() for level in handle.module(batch.images[chunk].to(self.device))]
            for position, index in enumerate(chunk):
                per_image[index] = [level[position].clone() for level in levels]
                self._remember((handle.id, batch.keys[index]), per_image[index])
                if self.disk is not None:
                    self.disk.put(handle.id, batch.keys[index], per_image[index])
        return [torch.stack([maps[level] for maps in per_image]).to(self.device) for level in range(len(per_image[0]))]

    def extract(self, handle: BackboneHandle, batch: ImageBatch) -> torch.Tensor:
        """The first (for one-layer backbones, the only) feature map: [B, C, h, w]."""
        return self.extract_layers(handle, batch)[0]

    def counters(self) -> dict:
        return {"feature_cache_hits": self.memory_hits + self.disk_hits, "feature_cache_memory_hits": self.memory_hits,
                "feature_cache_disk_hits": self.disk_hits, "feature_cache_misses": self.misses}
