"""Frozen backbones from timm and feature extraction with a per-process cache.

The cache key is (backbone, weights sha256, preprocessing, image sha256): the same image seen by
several cells, settings, seeds or methods with the same backbone is passed through it once.
"""

from __future__ import annotations

from dataclasses import dataclass

import timm
import torch
from torch import nn

from benchmark.adapter import ImageBatch
from benchmark.config import backbone_entry
from benchmark.errors import GadbenchError
from benchmark.weights import RANDOM, WeightFile, WeightStore, lukemelas_to_timm_efficientnet


class FrozenBackbone(nn.Module):
    """A timm model that returns one [B, C, h, w] feature map.

    cnn: timm features_only output `feature_index`. vit: the last block's tokens after the final
    norm (timm forward_features), prefix tokens (CLS, registers) dropped, reshaped to the grid.
    """

    def __init__(self, model: nn.Module, kind: str):
        super().__init__()
        self.model, self.kind = model.eval(), kind
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.kind == "cnn":
            return self.model(images)[0]
        tokens = self.model.forward_features(images)[:, self.model.num_prefix_tokens:]
        h, w = self.model.patch_embed.dynamic_feat_size(images.shape[-2:]) if hasattr(
            self.model.patch_embed, "dynamic_feat_size") else self.model.patch_embed.grid_size
        return tokens.transpose(1, 2).reshape(images.shape[0], -1, h, w)


@dataclass
class BackboneHandle:
    name: str
    module: FrozenBackbone
    weights_sha256: str
    mean: tuple
    std: tuple
    timm_name: str

    @property
    def id(self) -> str:
        return f"{self.name}@{self.weights_sha256[:16]}"

    def describe(self) -> dict:
        return {"backbone": self.name, "timm_name": self.timm_name, "weights_sha256": self.weights_sha256,
                "random_weights": self.weights_sha256 == RANDOM,
                "parameters": sum(p.numel() for p in self.module.parameters())}


def build_backbone(name: str, store: WeightStore, input_size: int, allow_random: bool = False) -> BackboneHandle:
    entry = backbone_entry(name)
    kind = entry.get("kind", "cnn")
    if kind == "cnn":
        model = timm.create_model(entry["timm_name"], pretrained=False, features_only=True,
                                  out_indices=(entry.get("feature_index", 3),))
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
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise GadbenchError(f"weights {weight.file} do not fit {entry['timm_name']}: missing {missing[:3]}, unexpected {unexpected[:3]}")
    module = FrozenBackbone(model, kind)
    return BackboneHandle(name, module, sha256, tuple(entry["mean"]), tuple(entry["std"]), entry["timm_name"])


def _map_keys(key_map: str, state: dict, model: nn.Module, entry: dict) -> dict:
    if key_map == "none":
        return state
    if key_map == "lukemelas_efficientnet":
        depths = [len(stage) for stage in model.blocks]
        mapped = lukemelas_to_timm_efficientnet(state, depths)
        # features_only models have no head: keep only the keys the model has
        own = set(model.state_dict())
        return {k: v for k, v in mapped.items() if k in own}
    if key_map == "timm_vit_filter":
        from timm.models.vision_transformer import checkpoint_filter_fn

        return checkpoint_filter_fn(state, model)
    raise GadbenchError(f"configs/backbones.yaml: unknown key_map {key_map!r} for {entry['timm_name']}")


class FeatureService:
    """Builds backbones once per process and caches their features per image."""

    def __init__(self, store: WeightStore, device: torch.device, batch_size: int = 16):
        self.store, self.device, self.batch_size = store, device, batch_size
        self._backbones: dict[tuple, BackboneHandle] = {}
        self._cache: dict[tuple[str, str], torch.Tensor] = {}
        self.hits = 0
        self.misses = 0

    def backbone(self, name: str, input_size: int, allow_random: bool = False) -> BackboneHandle:
        key = (name, input_size, allow_random)
        if key not in self._backbones:
            handle = build_backbone(name, self.store, input_size, allow_random)
            handle.module.to(self.device)
            self._backbones[key] = handle
        return self._backbones[key]

    def extract(self, handle: BackboneHandle, batch: ImageBatch) -> torch.Tensor:
        """[B, C, h, w] features on the service's device, from the cache where possible."""
        missing = [i for i, key in enumerate(batch.keys) if (handle.id, key) not in self._cache]
        self.hits += len(batch) - len(missing)
        self.misses += len(missing)
        for start in range(0, len(missing), self.batch_size):
            chunk = missing[start:start + self.batch_size]
            images = batch.images[chunk].to(self.device)
            features = handle.module(images).float().cpu()
            for index, feature in zip(chunk, features):
                self._cache[(handle.id, batch.keys[index])] = feature
        return torch.stack([self._cache[(handle.id, key)] for key in batch.keys]).to(self.device)

    def counters(self) -> dict:
        return {"feature_cache_hits": self.hits, "feature_cache_misses": self.misses}
