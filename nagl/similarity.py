"""Nearest-neighbour similarity maps shared by NAGL and its ablation variants. Pure torch."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def flatten_patches(features: torch.Tensor) -> torch.Tensor:
    """[B, C, h, w] -> [B, h*w, C]."""
    return features.flatten(2).transpose(1, 2)


def row_chunk(rows: int, columns: int, device: torch.device) -> int:
    """How many rows of a [rows, columns] similarity or distance matrix to compute at once. On the
    CPU about 2 MB: a chunk that stays in cache is reduced (max, argmax, top-k) several times
    faster than a whole matrix written to memory and read back, and every row's values are the
    same either way. On a GPU up to 2^28 values at once. Never fewer than 32 rows, so that
    torch.cdist takes its matrix-product path whenever the whole matrix would."""
    budget = (1 << 28) if device.type == "cuda" else (1 << 19)
    return min(rows, max(32, budget // max(1, columns)))


def max_cosine(rows: torch.Tensor, bank: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each of rows [N, C]: the largest cosine to a row of bank [M, C], and that row's index
    (the first one on ties)."""
    unit_bank = F.normalize(bank, dim=-1).T
    step = row_chunk(len(rows), len(bank), rows.device)
    parts = [(F.normalize(rows[start:start + step], dim=-1) @ unit_bank).max(dim=-1) for start in range(0, len(rows), step)]
    return torch.cat([part.values for part in parts]), torch.cat([part.indices for part in parts])


def normal_similarity(query: torch.Tensor, normal_refs: torch.Tensor) -> torch.Tensor:
    """s_n: for each query patch, max over all patches of all normal references of (1 + cos) / 2.

    query: [B, N, C]; normal_refs: [K, N', C] (shared by the batch). Returns [B, N] in [0, 1].
    """
    best, _ = max_cosine(query.reshape(-1, query.shape[-1]), normal_refs.reshape(-1, normal_refs.shape[-1]))
    return ((1 + best) / 2).reshape(query.shape[:2])


def top_percent_mean(patch_scores: torch.Tensor, percent: float = 1.0) -> torch.Tensor:
    """Image score: mean of the top `percent` % patches ([B, N] -> [B]); 1024 patches -> 10."""
    count = max(1, int(math.floor(patch_scores.shape[-1] * percent / 100)))
    return patch_scores.topk(count, dim=-1).values.mean(dim=-1)
