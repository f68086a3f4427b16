"""A worked example of an adapter in its own module (docs/adding-an-adapter.md).

Mean-patch distance: the k normal references' frozen features are averaged position by position
(a "mean normal image" in feature space); a query patch's anomaly is its L2 distance to the mean
at the same position, plus to the closest mean patch anywhere (so small misalignments are
forgiven). Training-free, normal references only. It is deliberately small: every line is what a
method owns; data, references, seeds, caching, metrics and files are the runner's.

Run it without touching the package:

    gadbench run --adapter examples/mean_patch_distance.py:MeanPatchDistance
"""

from __future__ import annotations

import numpy as np
import torch

from benchmark.adapter import NORMAL, Adapter, ImageBatch, Prediction, ReferenceSet
from benchmark.maps import to_image_maps
from benchmark.preprocessing import Preprocessing


class MeanPatchDistance(Adapter):
    name = "mean_patch_distance"
    supports = (NORMAL,)            # add NORMAL_ABNORMAL to also receive one abnormal reference with its mask
    trains_on_source = False        # True would make the runner call fit_source() once per source
    default_config = {"backbone": "lite0_imagenet", "input_size": 224, "blur_sigma": 4.0}

    def preprocessing(self) -> Preprocessing:
        # the runner resizes and normalises with this (the backbone's own mean and std)
        return Preprocessing.for_backbone(self.config["backbone"], self.config["input_size"])

    @property
    def backbone(self):
        # frozen timm backbone from configs/backbones.yaml; built once per process and cached
        return self.context.features.backbone(self.config["backbone"], self.config["input_size"])

    def set_references(self, category: str, normal: ReferenceSet, abnormal: ReferenceSet | None) -> None:
        features = self.context.features.extract(self.backbone, normal)      # [k, C, h, w], cached
        self.mean_normal = features.mean(0)                                  # [C, h, w]

    @torch.no_grad()
    def predict(self, batch: ImageBatch) -> Prediction:
        features = self.context.features.extract(self.backbone, batch)       # [B, C, h, w]
        same_position = (features - self.mean_normal).norm(dim=1)            # [B, h, w]
        b, c, h, w = features.shape
        anywhere = torch.cdist(features.flatten(2).transpose(1, 2), self.mean_normal.flatten(1).T[None].expand(b, -1, -1))
        anomaly = same_position + anywhere.min(-1).values.reshape(b, h, w)
        maps = to_image_maps(anomaly, batch.original_sizes, self.config["blur_sigma"])  # original size, blurred
        return Prediction(anomaly.flatten(1).amax(1).cpu().numpy().astype(np.float64), maps)

    def describe(self) -> dict:
        backbone = self.backbone.describe()     # name, weights sha256, parameters: written into every row
        return {"name": self.name, **backbone, "parameters_total": backbone["parameters"], "parameters_trainable": 0,
                "preprocessing": self.preprocessing().describe()}
