"""Seconds per image of each adapter's predict() on this machine, references set once.

Backbones whose weights are not here run with random weights: timing does not depend on the
values of the weights. Prints one line per adapter. Usage: python benchmarks/adapter_speed.py
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import torch

from benchmark import registry
from benchmark.adapter import ImageBatch, ReferenceSet, RunContext
from benchmark.errors import MissingWeights
from benchmark.experiment import load_method
from benchmark.features import FeatureService
from benchmark.weights import WeightStore


def time_method(name: str, images: int, repeats: int, device: torch.device) -> tuple[float, bool]:
    method = load_method(name, name)
    store = WeightStore()
    for random_weights in (False, True):
        config = {**method.config, "allow_random_weights": random_weights}
        features = FeatureService(store, device)
        adapter = registry.resolve(method.adapter)(config, RunContext(device, store, features, Path(".")))
        size = adapter.preprocessing().size
        make = lambda n, tag: (torch.randn(n, 3, size, size), [f"{tag}{i}" for i in range(n)], [(256, 256)] * n, [{}] * n)
        try:
            adapter.set_references("bottle", ReferenceSet(*make(1, "ref")), None)
            adapter.predict(ImageBatch(*make(1, "warm")))  # warm-up
            best = float("inf")
            for repeat in range(repeats):  # fresh image keys: no feature-cache hit is timed
                batch = ImageBatch(*make(images, f"q{repeat}-"))
                start = time.perf_counter()
                adapter.predict(batch)
                best = min(best, (time.perf_counter() - start) / images)
            return best, random_weights
        except MissingWeights:
            continue
    raise RuntimeError("unreachable")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--methods", nargs="+", default=["normal_nn_lite0", "patchcore_lite0", "patchcore", "winclip"])
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=FutureWarning)  # anomalib/timm import-time deprecations
    device = torch.device("cpu")
    print(f"device: cpu, {torch.get_num_threads()} threads, batch {args.images}, best of {args.repeats}")
    for name in args.methods:
        seconds, random_weights = time_method(name, args.images, args.repeats, device)
        note = " (random weights: the real file is not here)" if random_weights else ""
        print(f"{name:18s} {seconds:7.3f} s/image{note}")


if __name__ == "__main__":
    main()
