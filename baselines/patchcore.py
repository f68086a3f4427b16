"""PatchCore (Roth et al., CVPR 2022) as a few-shot baseline: the memory bank holds the patches of
the k normal references only.

Defaults = the official code (amazon-science/patchcore-inspection; baselines/patchcore_model.py
says what each recipe does): WideResNet-50-2, layer2 + layer3, 3 x 3 neighbourhoods pooled to
1024-d per layer and again to 1024-d (`feature_aggregation: official`), squared L2 distances (its
faiss index), 1-NN, image score = max patch score, map upsampled bilinearly to the 224 crop and
blurred with sigma 4 there, resize 256 + centre crop 224. The map is then put back where the crop
came from in the original image (the cut-away border scores as the map's minimum), so PatchCore is
scored on the same pixels as every other method. Few-shot: `coreset_ratio: 1.0` keeps every
reference patch (a k-shot bank is small); the code's full-shot default is 0.1 with its approximate
greedy sampler. anomalib's recipe is a set of switches: feature_aggregation concat, coreset_sampler
anomalib, distance l2, image_score reweighted (docs/protocol.md).
"""

from __future__ import annotations

import numpy as np
import torch

from baselines.patchcore_model import (approximate_greedy_indices, concat_embedding, coreset_size, flatten_patches,
                                       kcenter_greedy, mean_knn_score, nearest_distances, official_embedding,
                                       reweighted_image_scores)
from benchmark.api import ALL_NORMAL, NORMAL, FeatureAdapter, GadbenchError, ImageBatch, Prediction, ReferenceSet

CHOICES = {"feature_aggregation": ("official", "concat"), "coreset_sampler": ("official-approximate", "anomalib"),
           "distance": ("squared_l2", "l2"), "image_score": ("max", "reweighted")}


class PatchCoreAdapter(FeatureAdapter):
    name = "patchcore"
    supports = (NORMAL, ALL_NORMAL)  # Nall: full-shot PatchCore, its own setting
    map_blur_at = "input"  # the code's RescaleSegmentor: upsample to the 224 crop, blur there
    size_key = "crop"
    default_config = {
        "backbone": "wide_resnet50_2_imagenet",
        "layers": [2, 3],  # timm feature indices: for ResNets 2 = layer2, 3 = layer3
        "resize": 256,
        "crop": 224,
        "neighbourhood": 3,
        "feature_aggregation": "official",  # concat: anomalib's 1536-d concatenation
        "embed_dimension": 1024,  # the code's pretrain_embed_dimension = target_embed_dimension
        "coreset_ratio": 1.0,  # the code's full-shot default: 0.1
        "coreset_sampler": "official-approximate",  # anomalib: KCenterGreedy
        "num_neighbors": 1,  # patch score = mean (squared) distance to this many nearest bank rows
        "distance": "squared_l2",  # l2: the paper and anomalib
        "image_score": "max",  # reweighted: the paper's equation, as anomalib (reweight_neighbors 9)
        "reweight_neighbors": 9,
        "blur_sigma": 4.0,
        "allow_random_weights": False,
    }

    def __init__(self, config, context):
        super().__init__(config, context)
        for key, allowed in CHOICES.items():
            if self.config[key] not in allowed:
                raise GadbenchError(f"patchcore: {key} must be one of {allowed}, not {self.config[key]!r}")
        if not 0 < self.config["coreset_ratio"] <= 1:
            raise GadbenchError("patchcore: coreset_ratio must be in (0, 1]")
        self.patch_bank: torch.Tensor | None = None  # every reference patch, before the coreset
        self.memory_bank: torch.Tensor | None = None

    def geometry(self) -> dict:
        return {"resize": "shorter", "resize_to": self.config["resize"], "interpolation": "bilinear"}

    def embed(self, batch: ImageBatch) -> torch.Tensor:
        levels = self.context.features.extract_layers(self.backbone, batch)
        if self.config["feature_aggregation"] == "official":
            return official_embedding(levels, self.config["neighbourhood"], self.config["embed_dimension"])
        return concat_embedding(levels, self.config["neighbourhood"])

    def subsample(self, patches: torch.Tensor) -> torch.Tensor:
        if self.config["coreset_ratio"] >= 1:
            return patches
        count = coreset_size(len(patches), self.config["coreset_ratio"])
        if self.config["coreset_sampler"] == "anomalib":
            return kcenter_greedy(patches, count)
        return patches[torch.from_numpy(approximate_greedy_indices(patches, count))]

    @torch.no_grad()
    def set_references(self, category: str, normal: ReferenceSet, abnormal: ReferenceSet | None) -> None:
        self.patch_bank = flatten_patches(self.embed(normal))
        self.memory_bank = self.subsample(self.patch_bank)

    @torch.no_grad()
    def scores(self, batch: ImageBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Patch scores [B, h, w] and image scores [B]."""
        embedding = self.embed(batch)
        b, _, h, w = embedding.shape
        queries = flatten_patches(embedding)
        distances, indices = nearest_distances(queries, self.memory_bank, self.config["num_neighbors"])
        patch_scores = mean_knn_score(distances, self.config["distance"] == "squared_l2").reshape(b, h * w)
        if self.config["image_score"] == "reweighted":
            image_scores = reweighted_image_scores(patch_scores, indices[:, 0].reshape(b, h * w), queries.reshape(b, h * w, -1),
                                                   self.memory_bank, self.config["reweight_neighbors"])
        else:
            image_scores = patch_scores.amax(dim=1)
        return patch_scores.reshape(b, h, w), image_scores

    def predict(self, batch: ImageBatch) -> Prediction:
        patch_scores, image_scores = self.scores(batch)
        return Prediction(image_scores.cpu().numpy().astype(np.float64), patch_scores)

    def describe_method(self) -> dict:
        return {**{key: self.config[key] for key in CHOICES}, "coreset_ratio": self.config["coreset_ratio"]}
