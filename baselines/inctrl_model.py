"""InCTRL's learned parts and scores (Zhu & Pang, CVPR 2024). Pure torch.

Given frozen CLIP outputs (the image embedding and the patch tokens of blocks 7, 9, 11):
  patch residual map  per block, each query patch's min over all reference patches of
                      (1 - cos) / 2, averaged over the blocks; fine-grained score = its max
  image residual      adapter(mean of the references' embeddings) - adapter(query embedding),
                      scored by a small head (the 'in-context residual' on the class embedding)
  text prior          softmax(100 * cos(query, [normal prompts, anomalous prompts]))[anomalous]
  holistic score      a head over (text prior + image residual score + patch residual map)
  final score         (holistic + fine-grained) / 2
The official code reshapes [blocks, B, patches, C] with reshape(B, blocks, ...), which mixes
images when B > 1; batch_layout('per-image') keeps each query with its own tokens, so scores do
not depend on B, and batch_layout('code') reproduces the reshape (tests/conformance).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ResidualAdapter(nn.Module):
    """Two bias-free linear layers with ReLU after each (no skip connection, as the code)."""

    def __init__(self, dim: int, reduction: int = 4):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(dim, dim // reduction, bias=False), nn.ReLU(),
                                nn.Linear(dim // reduction, dim, bias=False), nn.ReLU())

    def forward(self, x):
        return self.fc(x)


class ScoringHead(nn.Module):
    """Linear-ReLU-BN, Linear-ReLU-BN, Linear, sigmoid (the code's TransformerBasicHead)."""

    def __init__(self, dim_in: int):
        super().__init__()
        self.projection1, self.bn2 = nn.Linear(dim_in, 128), nn.BatchNorm1d(128)
        self.projection2, self.bn3 = nn.Linear(128, 64), nn.BatchNorm1d(64)
        self.projection3 = nn.Linear(64, 1)

    def forward(self, x):
        x = self.bn2(F.relu(self.projection1(x)))
        x = self.bn3(F.relu(self.projection2(x)))
        return torch.sigmoid(self.projection3(x)).squeeze(-1)


BATCH_LAYOUTS = ("per-image", "code")


def batch_layout(query_blocks: list[torch.Tensor], reference_blocks: list[torch.Tensor],
                 reference_embeddings: torch.Tensor, shot: int, layout: str):
    """Pair each query with its references' tokens. query_blocks: per block [B, P, C];
    reference_blocks: per block [shot * B, P, C] and reference_embeddings [shot * B, D], shot-major
    as the code's `inputs[1:]` (reference s of query i at s * B + i).

    Returns queries [B, blocks, P, C], references [B, blocks, shot * P, C] and reference
    embeddings [B, shot, D]. 'per-image' gives each query its own references. 'code' reproduces
    the official reshapes (`Fp_list.reshape(b, 3, 225, -1)` of a [3, b, 225, C] stack and the
    like), which hand query i the tokens of other images whenever B > 1: why the code tests with
    batch 1, and what its training batches of 16 actually learned from."""
    blocks, batch = len(query_blocks), query_blocks[0].shape[0]
    patches = query_blocks[0].shape[1]
    queries, references = torch.stack(query_blocks), torch.stack(reference_blocks)  # [blocks, B, P, C], [blocks, shot*B, P, C]
    if layout == "code":
        return (queries.reshape(batch, blocks, patches, -1), references.reshape(batch, blocks, patches * shot, -1),
                reference_embeddings.reshape(batch, shot, -1))
    if layout != "per-image":
        raise ValueError(f"batch layout must be one of {BATCH_LAYOUTS}, not {layout!r}")
    references = references.reshape(blocks, shot, batch, patches, -1).permute(2, 0, 1, 3, 4)
    return (queries.transpose(0, 1), references.reshape(batch, blocks, shot * patches, -1),
            reference_embeddings.reshape(shot, batch, -1).transpose(0, 1))


def patch_residual_map(queries: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """queries [B, blocks, P, C] and each query's reference tokens [B, blocks, R, C] -> [B, P]:
    per block, each query patch's min over the reference patches of (1 - cos) / 2, then the mean
    over the blocks."""
    cosine = F.normalize(queries, dim=-1) @ F.normalize(references, dim=-1).transpose(-1, -2)
    return (0.5 * (1 - cosine)).amin(dim=-1).mean(dim=1)


def text_prior(image_embedding: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
    """[B, D] and the normalised [normal, anomalous] prompt means [2, D] -> P(anomalous) [B]."""
    return (100 * F.normalize(image_embedding, dim=-1) @ text_features.T).softmax(dim=-1)[:, 1]


class InCTRLHeads(nn.Module):
    def __init__(self, embed_dim: int, num_patches: int):
        super().__init__()
        self.adapter = ResidualAdapter(embed_dim)
        self.diff_head = ScoringHead(num_patches)
        self.diff_head_ref = ScoringHead(embed_dim)

    def forward(self, query_embedding: torch.Tensor, reference_embeddings: torch.Tensor,
                residual_map: torch.Tensor, prior: torch.Tensor) -> dict[str, torch.Tensor]:
        """query_embedding [B, D]; reference_embeddings [K, D] (shared) or [B, K, D];
        residual_map [B, P]; prior [B]."""
        references = self.adapter(reference_embeddings).mean(dim=-2)
        image_residual = references - self.adapter(query_embedding)
        image_score = self.diff_head_ref(image_residual)
        holistic = self.diff_head(prior[:, None] + image_score[:, None] + residual_map)
        fine = residual_map.amax(dim=-1)
        return {"final": (holistic + fine) / 2, "image_residual_score": image_score}
