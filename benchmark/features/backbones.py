"""Frozen backbones from timm: architecture, local weights, the DINOv2 hub position resize."""

from __future__ import annotations

from dataclasses import dataclass

import timm
import torch
from torch import nn

from benchmark.config import backbone_entry
from benchmark.errors import GadbenchError
from benchmark.features.pos_embed import POS_EMBED_RESIZES, dinov2_hub_resize
from benchmark.features.weights import RANDOM, WeightFile, WeightStore, fixed_random_init, lukemelas_to_timm_efficientnet


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
    pos_embed: str | None = None  # ViTs: how the position embedding is resized (benchmark/features/pos_embed.py)

    @property
    def id(self) -> str:
        resize = f"/pos-{self.pos_embed}" if self.pos_embed else ""
        return f"{self.name}@{self.weights_sha256[:16]}/layers{','.join(map(str, self.layers))}{resize}"

    def describe(self) -> dict:
        return {"backbone": self.name, "timm_name": self.timm_name, "weights_sha256": self.weights_sha256,
                "layers": list(self.layers), "pos_embed_resize": self.pos_embed,
                "random_weights": self.weights_sha256 == RANDOM,
                "parameters": sum(p.numel() for p in self.module.parameters())}


def build_backbone(name: str, store: WeightStore, input_size: int, allow_random: bool = False,
                   layers: tuple[int, ...] | None = None) -> BackboneHandle:
    entry = backbone_entry(name)
    kind = entry.get("kind", "cnn")
    layers = tuple(layers) if layers else (entry.get("feature_index", 3),) if kind == "cnn" else (-1,)
    with fixed_random_init():  # weights a file does not overwrite (all of them with allow_random) are the same everywhere
        model, pos_embed = _create(name, entry, kind, input_size, layers)
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
    return BackboneHandle(name, module, sha256, tuple(entry["mean"]), tuple(entry["std"]), entry["timm_name"], layers,
                          pos_embed)


def _create(name: str, entry: dict, kind: str, input_size: int, layers: tuple[int, ...]) -> tuple[nn.Module, str | None]:
    """The timm architecture (random weights) and, for ViTs, how its position embedding is resized."""
    if kind == "cnn":
        return timm.create_model(entry["timm_name"], pretrained=False, features_only=True, out_indices=layers), None
    if kind != "vit":
        raise GadbenchError(f"configs/backbones.yaml: {name}.kind must be cnn or vit, not {kind!r}")
    pos_embed = entry.get("pos_embed", "timm")
    if pos_embed not in POS_EMBED_RESIZES:
        raise GadbenchError(f"configs/backbones.yaml: {name}.pos_embed must be one of {POS_EMBED_RESIZES}, not {pos_embed!r}")
    if pos_embed == "timm":  # timm resizes the checkpoint's grid once, at load
        return timm.create_model(entry["timm_name"], pretrained=False, img_size=input_size, num_classes=0), pos_embed
    # keep the checkpoint's grid; resize at run time as the DINOv2 hub model does
    model = timm.create_model(entry["timm_name"], pretrained=False, img_size=entry["pretrain_img_size"], num_classes=0,
                              dynamic_img_size=True)
    model._pos_embed = _dinov2_hub_pos_embed.__get__(model)
    return model, pos_embed


def _dinov2_hub_pos_embed(self, x: torch.Tensor) -> torch.Tensor:
    """Replaces timm's VisionTransformer._pos_embed (x: [B, h, w, C] patch embeddings with
    dynamic_img_size): prepend the class token, add the hub-resized position embedding."""
    batch, height, width, dim = x.shape
    tokens = torch.cat([self.cls_token.expand(batch, -1, -1), x.reshape(batch, -1, dim)], dim=1)
    return self.pos_drop(tokens + dinov2_hub_resize(self.pos_embed, (height, width), self.num_prefix_tokens))


def _map_keys(key_map: str, state: dict, model: nn.Module, entry: dict) -> dict:
    if key_map == "none":
        return state
    if key_map == "lukemelas_efficientnet":
        return lukemelas_to_timm_efficientnet(state, [len(stage) for stage in model.blocks])
    if key_map == "timm_vit_filter":
        from timm.models.vision_transformer import checkpoint_filter_fn

        return checkpoint_filter_fn(state, model)
    raise GadbenchError(f"configs/backbones.yaml: unknown key_map {key_map!r} for {entry['timm_name']}")
