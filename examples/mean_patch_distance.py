"""A worked example of an adapter in its own module (docs/adding-an-adapter.md).

Mean-patch distance: the k normal references' frozen features are averaged position by position
(a "mean normal image" in feature space); a query patch's anomaly is its L2 distance to the mean
at the same position, plus to the closest mean patch anywhere (a small misalignment is forgiven).
Training-free, normal references only. Run it without touching the package:

    gadbench run --adapter examples/mean_patch_distance.py:MeanPatchDistance
"""

import torch

from benchmark.api import NORMAL, FeatureAdapter, Prediction


class MeanPatchDistance(FeatureAdapter):
    name = "mean_patch_distance"
    supports = (NORMAL,)  # add NORMAL_ABNORMAL to also receive j abnormal references with their masks
    default_config = {"backbone": "lite0_imagenet", "input_size": 224, "blur_sigma": 4.0}

    def set_references(self, category, normal, abnormal):
        self.mean_normal = self.context.features.extract(self.backbone, normal).mean(0)  # [C, h, w]

    @torch.no_grad()
    def predict(self, batch):
        features = self.context.features.extract(self.backbone, batch)  # [B, C, h, w], cached
        b, _, h, w = features.shape
        patches, means = features.flatten(2).transpose(1, 2), self.mean_normal.flatten(1).T
        anomaly = (features - self.mean_normal).norm(dim=1) + torch.cdist(patches, means[None]).amin(-1).reshape(b, h, w)
        return Prediction(anomaly.flatten(1).amax(1), anomaly)  # image scores [B], maps on the patch grid
