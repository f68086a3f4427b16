"""Normal-reference nearest neighbour (NAGL ablation (i)): how far each query patch is from the
closest patch of the k normal references, on frozen backbone features. Training-free."""

from __future__ import annotations

import numpy as np
import torch

from benchmark.api import ALL_NORMAL, NORMAL, FeatureAdapter, ImageBatch, Prediction, ReferenceSet
from benchmark.features.similarity import flatten_patches, normal_similarity, top_percent_mean


class NormalNNAdapter(FeatureAdapter):
    name = "normal_nn"
    supports = (NORMAL, ALL_NORMAL)  # with an abnormal reference it is ablation (i): nagl/ablation.py
    default_config = {"backbone": "dinov2_vits14", "input_size": 448, "top_percent": 1.0, "blur_sigma": 4.0,
                      "allow_random_weights": False}

    def set_references(self, category: str, normal: ReferenceSet, abnormal: ReferenceSet | None) -> None:
        self.normal_patches = flatten_patches(self.context.features.extract(self.backbone, normal))

    @torch.no_grad()
    def predict(self, batch: ImageBatch) -> Prediction:
        features = self.context.features.extract(self.backbone, batch)
        anomaly = 1 - normal_similarity(flatten_patches(features), self.normal_patches)
        scores = top_percent_mean(anomaly, self.config["top_percent"])
        return Prediction(scores.cpu().numpy().astype(np.float64), anomaly.reshape(-1, *features.shape[-2:]))
