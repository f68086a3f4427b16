"""What the harness's evaluation costs per megapixel on a device: maps brought to the original
size (benchmark/run/maps.py) and the exact pixel metrics with their bootstrap histograms
(benchmark/run/pixel_accumulator.py), on synthetic VisA-size maps (1500 x 1000). Method-independent:
`gadbench bench` measures it once per run and every row of the run carries it;
`gadbench estimate` multiplies it by the test pixels of each target."""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch

from benchmark.api import Preprocessing
from benchmark.bench.measure import _sync
from benchmark.run.maps import maps_at_original
from benchmark.run.pixel_accumulator import PixelAccumulator

HEIGHT, WIDTH, GRID = 1000, 1500, 32


def synthetic_maps(images: int, device: torch.device, seed: int = 0) -> tuple[torch.Tensor, list[np.ndarray]]:
    """Patch-grid maps [n, 32, 32] on the device and masks at 1000 x 1500 (one defect on every
    other image), deterministic."""
    generator = torch.Generator().manual_seed(seed)
    grids = torch.rand(images, GRID, GRID, generator=generator)
    yy, xx = np.ogrid[:HEIGHT, :WIDTH]
    masks = []
    for index in range(images):
        mask = np.zeros((HEIGHT, WIDTH), bool)
        if index % 2:
            mask |= ((yy - 300 - 40 * index) / 80) ** 2 + ((xx - 700) / 120) ** 2 <= 1
            grids[index, 8:12, 14:18] += 0.5
        masks.append(mask)
    return grids.to(device), masks


def evaluate(grids: torch.Tensor, masks: list[np.ndarray], device: torch.device) -> dict:
    maps, _ = maps_at_original(grids, [(HEIGHT, WIDTH)] * len(masks), Preprocessing(size=448), 4.0)
    pixels = PixelAccumulator()
    pixels.add_many(masks, maps)
    pixels.finish()
    pixels.second_pass(maps)
    _sync(device)
    return pixels.metrics()


def evaluation_ms_per_mpx(device: torch.device, images: int = 8, repeats: int = 3) -> float:
    """Median over `repeats` of the seconds per megapixel (in ms) of evaluating `images` maps,
    after one untimed run."""
    grids, masks = synthetic_maps(images, device)
    evaluate(grids, masks, device)
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        evaluate(grids, masks, device)
        seconds.append(time.perf_counter() - started)
    return 1e3 * statistics.median(seconds) / (images * HEIGHT * WIDTH / 1e6)
