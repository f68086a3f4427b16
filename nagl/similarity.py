"""Nearest-neighbour similarity maps shared by NAGL and its ablation variants. Pure torch."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def flatten_patches(features: torch.Tensor) -> torch.Tensor:
    """[B, C, h, w] -> [B, h*w, C]."""
    return features.flatten(2).transpose(1, 2)


def normal_similarity(query: torch.Tensor, normal_refs: torch.Tensor) -> torch.Tensor:
    """s_n: for each query patch, max over all patches of all normal references of (1 + cos) / 2.

    query: [B, N, C]; normal_refs: [K, N', C] (shared by the batch). Returns [B, N] in [0, 1].
    """
    query = F.normalize(query, dim=-1)
    bank = F.normalize(normal_refs.reshape(-1, normal_refs.shape[-1]), dim=-1)
    best = torch.full(query.shape[:2], -1.0, device=query.device, dtype=query.dtype)
    # chunk the bank so that memory stays flat for many references
    for start in range(0, bank.shape[0], 8192):
        cosine = query @ bank[start:start + 8192].T
        best = torch.maximum(best, cosine.max(dim=-1).values)
    return (1 + best) / 2


def top_percent_mean(patch_scores: torch.Tensor, percent: float = 1.0) -> torch.Tensor:
    """Image score: mean of the top `percent` % patches ([B, N] -> [B]); 1024 patches -> 10."""
    count = max(1, int(math.floor(patch_scores.shape[-1] * percent / 100)))
    return patch_scores.topk(count, dim=-1).values.mean(dim=-1)
