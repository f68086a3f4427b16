"""PatchCore (Roth et al., CVPR 2022) as a few-shot baseline: the memory bank holds the patches of
the k normal references only.

Recipe (the official code's defaults): WideResNet-50-2, layer2 + layer3, 3 x 3 neighbourhood
averaging, layer3 upsampled to layer2 and concatenated, greedy coreset of 10 %, 1-NN distance,
image score = max patch score, map upsampled to the input and blurred with sigma 4, resize 256 and
centre crop 224. The map is then put back where the crop came from in the original image (the
cut-away border scores as the map's minimum), so PatchCore is scored on the same pixels as every
other method. Differences from the official code, each a config key (docs/protocol.md):
  - features are concatenated (1536-d, as anomalib) instead of the official adaptive average
    pooling of each layer to 1024-d and of their concatenation to 1024-d;
  - coreset: anomalib's KCenterGreedy (one random start, sparse random projection) instead of the
    official approximate greedy sampler (10 starts, 128-d Gaussian projection);
  - `distance: l2` (the paper, anomalib) by default; `squared_l2` is what the official faiss
    IndexFlatL2 returns.
"""

from __future__ import annotations

import math
from functools import partial
from unittest import mock

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter
from tqdm.auto import tqdm

from benchmark.adapter import NORMAL, Adapter, ImageBatch, Prediction, ReferenceSet
from benchmark.errors import GadbenchError
from benchmark.preprocessing import Preprocessing


def patch_embedding(levels: list[torch.Tensor], neighbourhood: int) -> torch.Tensor:
    """Locally aware patch features: average each level over a neighbourhood x neighbourhood
    window, upsample the coarser levels to the first one, concatenate. [B, C, h, w]."""
    pooled = [F.avg_pool2d(level, neighbourhood, stride=1, padding=neighbourhood // 2) for level in levels]
    size = pooled[0].shape[-2:]
    resized = [pooled[0]] + [F.interpolate(p, size=size, mode="bilinear", align_corners=False) for p in pooled[1:]]
    return torch.cat(resized, dim=1)


def coreset_size(bank_size: int, ratio: float) -> int:
    return min(bank_size, math.ceil(ratio * bank_size))


def greedy_coreset(bank: torch.Tensor, ratio: float) -> torch.Tensor:
    """k-center greedy subsample of ceil(ratio * len(bank)) rows (anomalib's KCenterGreedy)."""
    from anomalib.models.components.sampling import k_center_greedy

    target = coreset_size(len(bank), ratio)
    if target >= len(bank):
        return bank
    # KCenterGreedy keeps int(n * ratio) rows; asking for (target + 0.5) / n yields exactly `target`.
    # Its own progress bar would print once per category: silence it.
    with mock.patch.object(k_center_greedy, "tqdm", partial(tqdm, disable=True)):
        sampler = k_center_greedy.KCenterGreedy(embedding=bank, sampling_ratio=(target + 0.5) / len(bank))
        return sampler.sample_coreset()


class PatchCoreAdapter(Adapter):
    name = "patchcore"
    supports = (NORMAL,)
    default_config = {
        "backbone": "wide_resnet50_2_imagenet",
        "layers": [2, 3],  # timm feature indices: for ResNets 2 = layer2, 3 = layer3
        "resize": 256,
        "crop": 224,
        "neighbourhood": 3,
        "coreset_ratio": 0.1,
        "num_neighbors": 1,  # patch score = mean distance to this many nearest bank entries
        "distance": "l2",  # or squared_l2 (the official faiss code)
        "blur_sigma": 4.0,
        "allow_random_weights": False,
    }

    def __init__(self, config, context):
        super().__init__(config, context)
        if self.config["distance"] not in ("l2", "squared_l2"):
            raise GadbenchError(f"patchcore: distance must be l2 or squared_l2, not {self.config['distance']!r}")
        if not 0 < self.config["coreset_ratio"] <= 1:
            raise GadbenchError("patchcore: coreset_ratio must be in (0, 1]")
        self.patch_bank: torch.Tensor | None = None  # every reference patch, before the coreset
        self.memory_bank: torch.Tensor | None = None

    def preprocessing(self) -> Preprocessing:
        return Preprocessing.for_backbone(self.config["backbone"], self.config["crop"], resize="shorter",
                                          resize_to=self.config["resize"], interpolation="bilinear")

    @property
    def backbone(self):
        return self.context.features.backbone(self.config["backbone"], self.config["crop"],
                                              self.config["allow_random_weights"], tuple(self.config["layers"]))

    def embed(self, batch: ImageBatch) -> torch.Tensor:
        return patch_embedding(self.context.features.extract_layers(self.backbone, batch), self.config["neighbourhood"])

    @torch.no_grad()
    def set_references(self, category: str, normal: ReferenceSet, abnormal: ReferenceSet | None) -> None:
        embedding = self.embed(normal)
        self.patch_bank = embedding.permute(0, 2, 3, 1).reshape(-1, embedding.shape[1])
        self.memory_bank = greedy_coreset(self.patch_bank, self.config["coreset_ratio"])

    @torch.no_grad()
    def patch_scores(self, batch: ImageBatch) -> torch.Tensor:
        embedding = self.embed(batch)
        b, c, h, w = embedding.shape
        queries = embedding.permute(0, 2, 3, 1).reshape(-1, c)
        distances = torch.cdist(queries, self.memory_bank)
        k = min(self.config["num_neighbors"], len(self.memory_bank))
        nearest = distances.topk(k, dim=1, largest=False).values
        if self.config["distance"] == "squared_l2":
            nearest = nearest.pow(2)
        return nearest.mean(dim=1).reshape(b, h, w)

    def predict(self, batch: ImageBatch) -> Prediction:
        scores = self.patch_scores(batch)
        image_scores = scores.flatten(1).amax(dim=1)
        size = self.config["crop"]
        upsampled = F.interpolate(scores[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0]
        preprocessing = self.preprocessing()
        maps = []
        for amap, original in zip(upsampled.cpu().numpy(), batch.original_sizes):
            blurred = gaussian_filter(amap, sigma=self.config["blur_sigma"]) if self.config["blur_sigma"] else amap
            maps.append(preprocessing.to_original(blurred, original))
        return Prediction(image_scores.cpu().numpy().astype(np.float64), maps)

    def describe(self) -> dict:
        backbone = self.backbone.describe()
        return {"name": self.name, **backbone, "parameters_total": backbone["parameters"], "parameters_trainable": 0,
                "preprocessing": self.preprocessing().describe()}
