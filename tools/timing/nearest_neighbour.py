"""The blocked nearest-neighbour searches against the one-matrix way, at the sizes the Lite0
methods search, alternated 7 times in one process (medians; the ratio is measured side by side):
benchmark.features.similarity.max_cosine against one [N, M] product and its max (ResAD's levels, Normal-NN's
patches; values and indices must be identical), and PatchCore's nearest_distances against
torch.cdist and topk (indices identical, distances equal to float rounding). Run:

    .venv/bin/python tools/timing/nearest_neighbour.py
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from alternate import alternate  # tools/timing/alternate.py, beside this script
from baselines.patchcore_model import nearest_distances
from benchmark.features.similarity import max_cosine

# (what, rows, bank rows, channels): a batch of 8 queries against 4 references
SIZES = [("ResAD level 1 (stride 4 at 224)", 8 * 3136, 4 * 3136, 24),
         ("ResAD level 2 (stride 8 at 224)", 8 * 784, 4 * 784, 40),
         ("Normal-NN / NAGL (stride 16 at 448)", 8 * 784, 4 * 784, 112)]


def one_product(rows: torch.Tensor, bank: torch.Tensor):
    return (F.normalize(rows, dim=-1) @ F.normalize(bank, dim=-1).T).max(dim=-1)


# PatchCore (Lite0, anomalib aggregation): a batch of 8 queries against the coreset of 4 references
L2_SIZES = [("PatchCore, k = 1", 8 * 784, 4 * 784 // 10, 152, 1), ("PatchCore, k = 1, no coreset", 8 * 784, 4 * 784, 152, 1),
            ("PatchCore, k = 9 (reweighting's support)", 8 * 784, 4 * 784 // 10, 152, 9)]


def cdist_topk(rows: torch.Tensor, bank: torch.Tensor, k: int):
    return torch.cdist(rows, bank).topk(k, dim=1, largest=False)


def main() -> None:
    torch.manual_seed(0)
    print(f"{torch.get_num_threads()} torch threads")
    for what, n, m, c in SIZES:
        rows, bank = torch.relu(torch.randn(n, c)), torch.relu(torch.randn(m, c))
        seconds = alternate({"one product": one_product, "max_cosine": max_cosine}, rows, bank)
        reference, blocked = one_product(rows, bank), max_cosine(rows, bank)
        same = torch.equal(reference.values, blocked[0]) and torch.equal(reference.indices, blocked[1])
        one, ours = seconds["one product"], seconds["max_cosine"]
        print(f"{what}: {n} x {m} x {c}: one product {one * 1e3:6.0f} ms, max_cosine {ours * 1e3:6.0f} ms,"
              f" {one / ours:4.2f}x; values and indices {'identical' if same else 'DIFFER'}")
    for what, n, m, c, k in L2_SIZES:
        rows, bank = torch.relu(torch.randn(n, c)), torch.relu(torch.randn(m, c))
        seconds = alternate({"cdist": cdist_topk, "blocked": nearest_distances}, rows, bank, k)
        reference, blocked = cdist_topk(rows, bank, k), nearest_distances(rows, bank, k)
        error = (reference.values - blocked[0]).abs().max().item()
        if torch.equal(reference.indices, blocked[1]):
            same = "identical"
        elif torch.equal(torch.cdist(rows, bank).gather(1, blocked[1]), reference.values):
            same = "the same up to the order of exactly tied distances"
        else:
            same = "DIFFER"
        print(f"{what}: {n} x {m} x {c}: cdist + topk {seconds['cdist'] * 1e3:6.0f} ms, nearest_distances"
              f" {seconds['blocked'] * 1e3:6.0f} ms, {seconds['cdist'] / seconds['blocked']:4.2f}x; indices"
              f" {same}, largest distance difference {error:.1e}")


if __name__ == "__main__":
    main()
