"""benchmark.run.maps (one matrix per axis) against the same pipeline written one operation after
the other (interpolate, scipy's gaussian_filter, paste back), at the sizes the grids use,
alternated 7 times in one process (medians; the ratio is measured side by side). Prints the
largest difference between the two. Run:

    .venv/bin/python tools/timing/map_pipeline.py
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from alternate import alternate  # tools/timing/alternate.py, beside this script
from benchmark.api.preprocessing import Preprocessing
from benchmark.run.maps import maps_at_original

# (what, map side, preprocessing, original (height, width), where the blur is); 8 maps a batch
CASES = [("Normal-NN / NAGL on Lite0, synthetic 256 x 256", 28, Preprocessing(size=448), (256, 256), "original"),
         ("PatchCore on Lite0, synthetic 256 x 256", 28, Preprocessing(size=224, resize="shorter", resize_to=256), (256, 256), "input"),
         ("NAGL on DINOv2 at 448, MVTec 1024 x 1024", 32, Preprocessing(size=448), (1024, 1024), "original"),
         ("PatchCore on WideResNet-50, MVTec 1024 x 1024", 28, Preprocessing(size=224, resize="shorter", resize_to=256), (1024, 1024), "input")]


def one_step_at_a_time(maps: np.ndarray, size, preprocessing: Preprocessing, sigma: float, blur_at: str) -> list[np.ndarray]:
    out = []
    for amap in maps:
        if blur_at == "input" or (preprocessing.resize != "squash" and amap.shape != (preprocessing.size,) * 2):
            amap = F.interpolate(torch.from_numpy(amap)[None, None], size=(preprocessing.size,) * 2, mode="bilinear",
                                 align_corners=False)[0, 0].numpy()
        if blur_at == "input":
            out.append(preprocessing.to_original(gaussian_filter(amap, sigma), size))
        else:
            out.append(gaussian_filter(preprocessing.to_original(amap, size), sigma))
    return out


def main() -> None:
    print(f"{torch.get_num_threads()} torch threads")
    for what, side, preprocessing, size, blur_at in CASES:
        maps = np.random.default_rng(0).random((8, side, side), dtype=np.float32)
        functions = {"one step at a time": lambda: one_step_at_a_time(maps, size, preprocessing, 4.0, blur_at),
                     "per-axis matrices": lambda: maps_at_original(maps, [size] * 8, preprocessing, 4.0, blur_at)[0]}
        old, new = alternate(functions).values()
        difference = max(float(np.abs(a - b).max()) for a, b in zip(*(f() for f in functions.values())))
        print(f"{what}, blur at the {blur_at}: one step at a time {old * 1e3:6.1f} ms, per-axis matrices {new * 1e3:6.1f} ms"
              f" for 8 maps, {old / new:4.1f}x; largest difference {difference:.1e} (maps in [0, 1])")


if __name__ == "__main__":
    main()
