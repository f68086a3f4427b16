"""nagl.similarity.max_cosine against one [N, M] product and its max, at the sizes the Lite0
methods search (ResAD's three levels, Normal-NN's patches), alternated 7 times in one process
(medians; the ratio is measured side by side). Checks that values and indices are identical. Run:

    .venv/bin/python tools/timing/nearest_neighbour.py
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F

from nagl.similarity import max_cosine

# (what, rows, bank rows, channels): a batch of 8 queries against 4 references
SIZES = [("ResAD level 1 (stride 4 at 224)", 8 * 3136, 4 * 3136, 24),
         ("ResAD level 2 (stride 8 at 224)", 8 * 784, 4 * 784, 40),
         ("Normal-NN / NAGL (stride 16 at 448)", 8 * 784, 4 * 784, 112)]


def one_product(rows: torch.Tensor, bank: torch.Tensor):
    return (F.normalize(rows, dim=-1) @ F.normalize(bank, dim=-1).T).max(dim=-1)


def main() -> None:
    torch.manual_seed(0)
    print(f"{torch.get_num_threads()} torch threads")
    for what, n, m, c in SIZES:
        rows, bank = torch.relu(torch.randn(n, c)), torch.relu(torch.randn(m, c))
        seconds = {"one product": [], "max_cosine": []}
        for _ in range(7):
            for name, function in (("one product", one_product), ("max_cosine", max_cosine)):
                start = time.perf_counter()
                function(rows, bank)
                seconds[name].append(time.perf_counter() - start)
        reference, blocked = one_product(rows, bank), max_cosine(rows, bank)
        same = torch.equal(reference.values, blocked[0]) and torch.equal(reference.indices, blocked[1])
        one, ours = (statistics.median(seconds[k]) for k in ("one product", "max_cosine"))
        print(f"{what}: {n} x {m} x {c}: one product {one * 1e3:6.0f} ms, max_cosine {ours * 1e3:6.0f} ms,"
              f" {one / ours:4.2f}x; values and indices {'identical' if same else 'DIFFER'}")


if __name__ == "__main__":
    main()
