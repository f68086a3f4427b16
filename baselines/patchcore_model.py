"""PatchCore's scoring (Roth et al., CVPR 2022) on given feature maps. Pure torch + numpy.

Two recipes, checked against their sources in tests/conformance:
  official  amazon-science/patchcore-inspection: each layer's 3 x 3 neighbourhood unfolded and
            adaptively average-pooled to `embed_dimension` values (MeanMapper), the coarser layers
            upsampled bilinearly to the first, the layers' vectors concatenated and pooled again
            to `embed_dimension` (Aggregator); approximate greedy coreset (10 random starts, a
            random 128-d linear projection); faiss IndexFlatL2 distances, which are SQUARED L2;
            image score = max patch score.
  anomalib  anomalib 2.7's PatchcoreModel: 3 x 3 average pooling, coarser layers upsampled
            bilinearly and concatenated (1536-d for WideResNet-50 layers 2 + 3); KCenterGreedy
            coreset; L2 distances; image score reweighted by the nearest neighbour's own
            neighbourhood (the paper's equation; num_neighbors 9).
"""

from __future__ import annotations

from functools import partial
from unittest import mock

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from benchmark.features.similarity import row_chunk


def concat_embedding(levels: list[torch.Tensor], neighbourhood: int) -> torch.Tensor:
    """anomalib: average each level over a neighbourhood window (zero padding counts), upsample
    the coarser levels to the first one, concatenate. [B, sum(C), h, w]."""
    pooled = [F.avg_pool2d(level, neighbourhood, stride=1, padding=neighbourhood // 2) for level in levels]
    size = pooled[0].shape[-2:]
    resized = [pooled[0]] + [F.interpolate(p, size=size, mode="bilinear", align_corners=False) for p in pooled[1:]]
    return torch.cat(resized, dim=1)


def official_embedding(levels: list[torch.Tensor], neighbourhood: int, dimension: int) -> torch.Tensor:
    """patchcore-inspection: per level, each position's unfolded neighbourhood [C x n x n] is
    average-pooled to `dimension` values; levels upsampled to the first level's grid; the levels'
    vectors concatenated and pooled to `dimension` again. [B, dimension, h, w].

    The code upsamples the unfolded values before pooling them; both steps are linear and act on
    different axes, so pooling first (as here, n x n x fewer values to upsample) is the same."""
    size = levels[0].shape[-2:]
    mapped = []
    for level in levels:
        b, c, h, w = level.shape
        unfolded = F.unfold(level, neighbourhood, padding=neighbourhood // 2)  # [B, C*n*n, h*w], channel-major
        pooled = F.adaptive_avg_pool1d(unfolded.transpose(1, 2).reshape(b * h * w, 1, -1), dimension)
        pooled = pooled.reshape(b, h, w, dimension).permute(0, 3, 1, 2)
        if pooled.shape[-2:] != size:
            pooled = F.interpolate(pooled, size=size, mode="bilinear", align_corners=False)
        mapped.append(pooled)
    b, _, h, w = mapped[0].shape
    stacked = torch.cat(mapped, dim=1).permute(0, 2, 3, 1).reshape(b * h * w, 1, -1)
    return F.adaptive_avg_pool1d(stacked, dimension).reshape(b, h, w, dimension).permute(0, 3, 1, 2)


def flatten_patches(embedding: torch.Tensor) -> torch.Tensor:
    """[B, D, h, w] -> [B * h * w, D], image after image, row-major positions."""
    return embedding.permute(0, 2, 3, 1).reshape(-1, embedding.shape[1])


def coreset_size(bank_size: int, ratio: float) -> int:
    """int(ratio * n) as both the code and anomalib, but never an empty bank."""
    return min(bank_size, max(1, int(bank_size * ratio)))


def _pairwise_l2(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The code's batchwise Euclidean distances (expanded square, clamped at 0)."""
    squared = -2 * a @ b.T + (a * a).sum(1, keepdim=True) + (b * b).sum(1)[None]
    return squared.clamp(min=0).sqrt()


def approximate_greedy_indices(bank: torch.Tensor, count: int, starts: int = 10, projection: int = 128) -> np.ndarray:
    """The code's ApproximateGreedyCoresetSampler: project to `projection` dims with a freshly
    initialised bias-free nn.Linear (torch's global RNG), take `starts` random start points
    (numpy's global RNG), then repeatedly pick the row farthest from everything chosen. The RNG
    is consumed in the code's order, so equal seeds give the code's choice."""
    features = bank
    if bank.shape[1] != projection:
        with torch.no_grad():
            features = torch.nn.Linear(bank.shape[1], projection, bias=False).to(bank.device)(bank)
    start = np.random.choice(len(features), int(np.clip(starts, None, len(features))), replace=False).tolist()
    with torch.no_grad():
        distance = _pairwise_l2(features, features[start]).mean(dim=-1, keepdim=True)
        chosen = []
        for _ in range(count):
            index = int(torch.argmax(distance).item())
            chosen.append(index)
            distance = torch.minimum(distance, _pairwise_l2(features, features[index:index + 1]))
    return np.asarray(chosen, dtype=np.int64)


def kcenter_greedy(bank: torch.Tensor, count: int) -> torch.Tensor:
    """anomalib's KCenterGreedy (one random start, sparse random projection), `count` rows."""
    from anomalib.models.components.sampling import k_center_greedy

    # KCenterGreedy keeps int(n * ratio) rows; asking for (count + 0.5) / n yields exactly `count`.
    # Its own progress bar would print once per category: silence it.
    with mock.patch.object(k_center_greedy, "tqdm", partial(tqdm, disable=True)):
        return k_center_greedy.KCenterGreedy(embedding=bank, sampling_ratio=(count + 0.5) / len(bank)).sample_coreset()


def nearest_distances(queries: torch.Tensor, bank: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """L2 distances [N, k] to the k nearest bank rows, ascending, and their indices (the first
    on ties when k = 1). As torch.cdist computes them for more than 25 rows and faiss's
    IndexFlatL2 does, from ||b||^2 - 2 q.b (+ ||q||^2, added after the search: it moves a row,
    not its order) and clamped at 0 before the root; but block by block into one reused buffer,
    so the [N, M] matrix is never written whole (tools/timing/nearest_neighbour.py)."""
    k = min(k, len(bank))
    step = row_chunk(len(queries), len(bank), queries.device)
    bank_norms, block = bank.pow(2).sum(dim=1), queries.new_empty(step, len(bank))
    values = queries.new_empty(len(queries), k)
    indices = torch.empty(len(queries), k, dtype=torch.long, device=queries.device)
    for start in range(0, len(queries), step):
        chunk = queries[start:start + step]
        partial = torch.addmm(bank_norms, chunk, bank.T, alpha=-2, out=block[:len(chunk)])
        out = (values[start:start + step], indices[start:start + step])
        if k == 1:
            torch.min(partial, dim=1, keepdim=True, out=out)
        else:
            torch.topk(partial, k, dim=1, largest=False, out=out)
    values += queries.pow(2).sum(dim=1, keepdim=True)
    return values.clamp_min_(0).sqrt_(), indices


def reweighted_image_scores(patch_scores: torch.Tensor, nearest_index: torch.Tensor, embedding: torch.Tensor,
                            bank: torch.Tensor, neighbours: int) -> torch.Tensor:
    """The paper's image score (anomalib's compute_anomaly_score): the largest patch score s*,
    weighted by 1 - softmax over the distances from that patch to its nearest bank row m* and to
    m*'s `neighbours` - 1 nearest bank rows. patch_scores / nearest_index: [B, P]; embedding
    [B, P, D]. A weight of 1 - 1/neighbours for a patch whose neighbourhood is uniform."""
    rows = torch.arange(len(patch_scores))
    worst = patch_scores.argmax(dim=1)
    score = patch_scores[rows, worst]
    features = embedding[rows, worst]
    nearest = bank[nearest_index[rows, worst]]
    _, support = nearest_distances(nearest, bank, neighbours)
    distances = torch.linalg.vector_norm(features[:, None] - bank[support], dim=-1)
    return (1 - distances.softmax(dim=1)[:, 0]) * score


def mean_knn_score(distances: torch.Tensor, squared: bool) -> torch.Tensor:
    """The code's NearestNeighbourScorer: mean over the k nearest of the (squared) distances."""
    return (distances.pow(2) if squared else distances).mean(dim=1)
