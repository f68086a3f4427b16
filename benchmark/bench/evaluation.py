"""What the harness's evaluation costs per megapixel on a device: maps brought to the original
size (benchmark/run/maps.py) and the exact pixel metrics with their bootstrap histograms
(benchmark/run/pixel_accumulator.py), on synthetic VisA-size maps (1500 x 1000; the cost of a
category's slot table is spread over 12 images here, over hundreds in a real category, so this
errs high). Method-independent:
`gadbench bench` measures it once per run and every row of the run carries it;
`gadbench estimate` multiplies it by the test pixels of each target."""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch
from scipy import ndimage

from benchmark.api import Preprocessing
from benchmark.bench.measure import _sync
from benchmark.run.maps import maps_at_original
from benchmark.run.pixel_accumulator import PixelAccumulator

HEIGHT, WIDTH, GRID = 1000, 1500, 32


def synthetic_category(images: int, height: int = HEIGHT, width: int = WIDTH, seed: int = 0):
    """(patch maps [n, 32, 32] float32, masks at the original size) of one synthetic category:
    smooth noise around 0.5 and a bump on 0-2 elliptic defects (about 0.3 % of the pixels) that
    overlaps it (pixel AUROC about 0.95). Deterministic; tools/timing/evaluation_scale.py too."""
    rng = np.random.default_rng(seed)
    yy, xx = np.ogrid[:height, :width]
    grids, masks = [], []
    for index in range(images):
        mask = np.zeros((height, width), bool)
        for _ in range(index % 3):
            cy, cx = rng.integers(height // 8, height - height // 8), rng.integers(width // 8, width - width // 8)
            ry, rx = rng.integers(height // 80, height // 20), rng.integers(width // 80, width // 20)
            mask |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        noise = ndimage.gaussian_filter(rng.standard_normal((GRID, GRID)), 1.5)
        pooled = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(mask[None].astype(np.float32)), GRID)[0]
        grids.append((0.5 + 0.3 * noise + 0.25 * pooled.numpy()).astype(np.float32))
        masks.append(mask)
    return torch.from_numpy(np.stack(grids)), masks


def evaluate(grids: torch.Tensor, masks: list[np.ndarray], device: torch.device) -> dict:
    maps, _ = maps_at_original(grids, [(HEIGHT, WIDTH)] * len(masks), Preprocessing(size=448), 4.0)
    pixels = PixelAccumulator()
    pixels.add_many(masks, maps)
    pixels.finish()
    pixels.second_pass(maps)
    _sync(device)
    return pixels.metrics()


def evaluation_ms_per_mpx(device: torch.device, images: int = 12, repeats: int = 3) -> float:
    """Median over `repeats` of the seconds per megapixel (in ms) of evaluating `images` maps,
    after one untimed run."""
    grids, masks = synthetic_category(images)
    grids = grids.to(device)
    evaluate(grids, masks, device)
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        evaluate(grids, masks, device)
        seconds.append(time.perf_counter() - started)
    return 1e3 * statistics.median(seconds) / (images * HEIGHT * WIDTH / 1e6)
