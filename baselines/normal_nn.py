"""Normal-reference nearest neighbour (NAGL ablation (i)): how far each query patch is from the
closest patch of the k normal references, on frozen backbone features. Training-free."""

from __future__ import annotations

import numpy as np
import torch

from benchmark.adapter import NORMAL, Adapter, ImageBatch, Prediction, ReferenceSet
from benchmark.maps import to_image_maps
from benchmark.preprocessing import Preprocessing
from nagl.similarity import flatten_patches, normal_similarity, top_percent_mean


class NormalNNAdapter(Adapter):
    name = "normal_nn"
    supports = (NORMAL,)  # with an abnormal reference it is ablation (i): baselines/nn_ablation.py
    default_config = {"backbone": "dinov2_vits14", "input_size": 448, "top_percent": 1.0, "blur_sigma": 4.0,
                      "allow_random_weights": False}

    def preprocessing(self) -> Preprocessing:
        return Preprocessing.for_backbone(self.config["backbone"], self.config["input_size"], resize="squash",
                                          interpolation="bicubic")

    @property
    def backbone(self):
        return self.context.features.backbone(self.config["backbone"], self.config["input_size"],
                                              self.config["allow_random_weights"])

    def set_references(self, category: str, normal: ReferenceSet, abnormal: ReferenceSet | None) -> None:
        self.normal_patches = flatten_patches(self.context.features.extract(self.backbone, normal))

    @torch.no_grad()
    def predict(self, batch: ImageBatch) -> Prediction:
        features = self.context.features.extract(self.backbone, batch)
        grid = features.shape[-2:]
        anomaly = 1 - normal_similarity(flatten_patches(features), self.normal_patches)
        scores = top_percent_mean(anomaly, self.config["top_percent"])
        maps = to_image_maps(anomaly.reshape(-1, *grid), batch.original_sizes, self.config["blur_sigma"])
        return Prediction(scores.cpu().numpy().astype(np.float64), maps)

    def describe(self) -> dict:
        backbone = self.backbone.describe()
        return {"name": self.name, **backbone, "parameters_total": backbone["parameters"], "parameters_trainable": 0,
                "preprocessing": self.preprocessing().describe()}
