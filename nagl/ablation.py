"""The nearest-neighbour rows of NAGL's ablation (paper Table: (i)-(iii)), training-free.

  normal           (i)   1 - s_n: far from every normal-reference patch
  abnormal         (ii)  s_a': close to an anomalous patch of the abnormal reference, max over its
                         anomalous patches of (1 + cos) / 2
  normal+abnormal  (iii) (s_a' + 1 - s_n) / 2: both, without NAGL's learned modules
Image score = mean of the top 1 % patches; map bilinear to the image, blur sigma 4 (as NAGL).
With j abnormal references s_a' takes the anomalous patches of all of them; with none of the
normal kind (N0) s_n takes the abnormal references' normal patches (mask 0), as NAGL's code does.
"""

from __future__ import annotations

import numpy as np
import torch

from nagl.normal_nn import NormalNNAdapter
from benchmark.api import ABNORMAL_ONLY, ALL_NORMAL, NORMAL_ABNORMAL, GadbenchError, ImageBatch, Prediction, ReferenceSet
from benchmark.features.similarity import flatten_patches, normal_similarity, top_percent_mean
from nagl.model import cosine_to_unit, downsample_mask

VARIANTS = ("normal", "abnormal", "normal+abnormal")


class NNAblationAdapter(NormalNNAdapter):
    name = "nn_ablation"
    supports = (NORMAL_ABNORMAL, ABNORMAL_ONLY, ALL_NORMAL)
    default_config = {**NormalNNAdapter.default_config, "variant": "normal+abnormal", "mask_downsample": "any-pixel"}

    def __init__(self, config, context):
        super().__init__(config, context)
        if self.config["variant"] not in VARIANTS:
            raise GadbenchError(f"nn_ablation: variant must be one of {VARIANTS}, not {self.config['variant']!r}")

    def set_references(self, category: str, normal: ReferenceSet, abnormal: ReferenceSet | None) -> None:
        if abnormal is None:
            raise GadbenchError("nn_ablation needs abnormal references (settings N<k>+A<j>, N0+A<j>)")
        maps = self.context.features.extract(self.backbone, abnormal)
        patches = flatten_patches(maps).reshape(-1, maps.shape[1])
        anomalous = downsample_mask(abnormal.masks.to(maps.device), tuple(maps.shape[-2:]), self.config["mask_downsample"]).flatten() > 0
        paths = ", ".join(sample.get("path", "?") for sample in abnormal.samples)
        if not anomalous.any():
            raise GadbenchError(f"{paths}: abnormal reference mask has no anomalous patch")
        self.abnormal_patches = patches[anomalous]
        if len(normal):
            super().set_references(category, normal, abnormal)
        elif anomalous.all():
            raise GadbenchError(f"{paths}: N0 takes the normal patches from the abnormal references, and they have none")
        else:  # N0
            self.normal_patches = patches[~anomalous][None]

    @torch.no_grad()
    def predict(self, batch: ImageBatch) -> Prediction:
        features = self.context.features.extract(self.backbone, batch)
        grid = features.shape[-2:]
        query = flatten_patches(features)
        distance_to_normal = 1 - normal_similarity(query, self.normal_patches)
        closeness_to_abnormal = cosine_to_unit(query, self.abnormal_patches[None].expand(len(batch), -1, -1)).amax(dim=-1)
        patch_scores = {"normal": distance_to_normal, "abnormal": closeness_to_abnormal,
                        "normal+abnormal": (closeness_to_abnormal + distance_to_normal) / 2}[self.config["variant"]]
        scores = top_percent_mean(patch_scores, self.config["top_percent"])
        return Prediction(scores.cpu().numpy().astype(np.float64), patch_scores.reshape(-1, *grid))
