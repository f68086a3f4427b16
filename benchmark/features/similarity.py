"""Nearest-neighbour similarity maps shared by NAGL and its ablation variants. Pure torch."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def flatten_patches(features: torch.Tensor) -> torch.Tensor:
    """[B, C, h, w] -> [B, h*w, C]."""
    return features.flatten(2).transpose(1, 2)


def row_chunk(rows: int, columns: int, device: torch.device) -> int:
    """How many rows of a [rows, columns] similarity matrix to compute at once: on the CPU about
    4 MB (2^20 values), a block that stays in cache; on a GPU up to 2^28 values. At least one row."""
    budget = (1 << 28) if device.type == "cuda" else (1 << 20)
    return min(rows, max(1, budget // max(1, columns)))


def max_cosine(rows: torch.Tensor, bank: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each of rows [N, C]: the largest cosine to a row of bank [M, C], and that row's index
    (the first one on ties). The same values and indices as one [N, M] product and its max, about
    twice as fast on a CPU for ResAD's first level (25,088 x 12,544 x 24: 0.43 s instead of
    0.93 s, tools/timing/nearest_neighbour.py): the product is taken block by block into one
    reused buffer, so the matrix is never written to memory and read back, and no block is a
    fresh allocation (fresh pages cost as much as the arithmetic at 24 channels). For frozen
    features: products written into a buffer record no gradient (torch refuses inputs that need one)."""
    unit_rows, unit_bank = F.normalize(rows, dim=-1), F.normalize(bank, dim=-1).T
    step = row_chunk(len(rows), len(bank), rows.device)
    block = rows.new_empty(step, len(bank))
    values = rows.new_empty(len(rows))
    indices = torch.empty(len(rows), dtype=torch.long, device=rows.device)
    for start in range(0, len(rows), step):
        chunk = unit_rows[start:start + step]
        similarity = torch.mm(chunk, unit_bank, out=block[:len(chunk)])
        torch.max(similarity, dim=1, out=(values[start:start + step], indices[start:start + step]))
    return values, indices


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
