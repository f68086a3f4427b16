"""Evaluation at the paper's image sizes: each stage per megapixel, and the peak extra memory.

Builds a VisA-size category (default 500 images of 1500 x 1000) and an MVTec-size one (100 of
1024 x 1024): per image a 32 x 32 patch map (benchmark/bench/evaluation.py:synthetic_category:
smooth noise, a bump on 0-2 elliptic defects, pixel AUROC about 0.95), brought to the original
size by the harness (benchmark/run/maps.py, blur sigma 4 at the original: NAGL's path). Then, in one run, it times:
  maps        maps_at_original, patch grid -> original size;
  metrics     the exact pixel metrics image by image (benchmark/run/pixel_accumulator.py: pass 1,
              the defect keys' sort, pass 2's shared-bucket counts, the curve);
  histograms  the bootstrap histograms, which come out of pass 2;
  previous    the global-sort implementation (metrics.pixel_metrics + intervals.pixel_histograms)
              and scikit-learn's roc_auc_score, on the first `--compare` images (both are slow);
and prints ms per megapixel, their ratios, the largest difference between the implementations,
and the peak memory the metrics and histograms take beyond the maps (tracemalloc: numpy's
allocations). Last, the hard case: signed scores near zero, whose keys spread over many exponents,
where pass 2 has no slot table and sorts each image's shared pixels instead. Run:

    .venv/bin/python tools/timing/evaluation_scale.py [--images 500] [--compare 20]
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np
import torch
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from benchmark.api import Preprocessing
from benchmark.bench.evaluation import synthetic_category as category
from benchmark.run.intervals import pixel_histograms
from benchmark.run.maps import maps_at_original
from benchmark.run.metrics import pixel_metrics
from benchmark.run.pixel_accumulator import PixelAccumulator

def timed(function):
    start = time.perf_counter()
    value = function()
    return time.perf_counter() - start, value


def accumulate(masks, maps, histograms: bool) -> PixelAccumulator:
    pixels = PixelAccumulator()
    for start in range(0, len(maps), 8):  # as the engine adds them: batch by batch, as they are scored
        pixels.add_many(masks[start:start + 8], maps[start:start + 8])
    pixels.finish()
    pixels.second_pass(maps, with_histogram=histograms)
    pixels.metrics()
    return pixels


def report(name: str, images: int, height: int, width: int, compare: int) -> None:
    grids, masks = category(images, height, width)
    megapixels = images * height * width / 1e6
    preprocessing = Preprocessing(size=448)
    seconds_maps, (maps, _) = timed(lambda: maps_at_original(grids, [(height, width)] * images, preprocessing, 4.0))
    seconds_metrics, pixels = timed(lambda: accumulate(masks, maps, histograms=False))
    tracemalloc.start()
    seconds_both, pixels = timed(lambda: accumulate(masks, maps, histograms=True))
    peak = tracemalloc.get_traced_memory()[1] - sum(h.nbytes for h in pixels.histograms)
    tracemalloc.stop()
    seconds_histograms = max(seconds_both - seconds_metrics, 0.0)
    ours = pixels.metrics()

    per = lambda seconds, mpx=megapixels: 1e3 * seconds / mpx  # noqa: E731
    print(f"\n{name}: {images} images of {width} x {height} ({megapixels:.0f} Mpx)")
    print(f"  maps to the original size  {per(seconds_maps):6.1f} ms/Mpx")
    print(f"  pixel metrics (exact)      {per(seconds_metrics):6.1f} ms/Mpx")
    print(f"  bootstrap histograms       {per(seconds_histograms):6.1f} ms/Mpx")
    print(f"  whole evaluation           {per(seconds_maps + seconds_both):6.1f} ms/Mpx")
    print(f"  peak memory beyond the maps: {peak / 2**20:.0f} MiB (the maps: {sum(m.nbytes for m in maps) / 2**20:.0f} MiB);"
          f" {pixels.shared.size} shared buckets")

    few_masks, few_maps = masks[:compare], maps[:compare]
    few_mpx = compare * height * width / 1e6
    seconds_new, subset = timed(lambda: accumulate(few_masks, few_maps, histograms=True))
    seconds_old, old = timed(lambda: (pixel_metrics(few_masks, few_maps), pixel_histograms(few_masks, few_maps)))
    labels = np.concatenate([m.ravel() for m in few_masks])
    scores = np.concatenate([m.ravel() for m in few_maps])
    seconds_sklearn, sklearn_auroc = timed(lambda: roc_auc_score(labels, scores))
    new = subset.metrics()
    difference = max(abs(new[k] - old[0][k]) for k in new)
    same_histograms = np.array_equal(np.stack(subset.histograms), old[1])
    print(f"  on the first {compare} images ({few_mpx:.0f} Mpx), metrics + histograms: this {per(seconds_new, few_mpx):.1f},"
          f" previous (global sort) {per(seconds_old, few_mpx):.1f} ({seconds_old / seconds_new:.1f}x),"
          f" scikit-learn AUROC alone {per(seconds_sklearn, few_mpx):.1f} ms/Mpx ({seconds_sklearn / seconds_new:.1f}x)")
    print(f"  largest difference to the previous metrics {difference:.1e}, to scikit-learn's AUROC"
          f" {abs(new['pixel_auroc'] - sklearn_auroc):.1e}; bootstrap histograms identical: {same_histograms}")
    print(f"  pixel AUROC {ours['pixel_auroc']:.6f}, AUPRO {ours['pixel_aupro']:.6f} (whole category)")


def signed_noise_category(images: int, height: int, width: int, seed: int = 1):
    """The hard case: signed scores near zero at full resolution (Gaussian-filtered noise, a faint
    bump on each defect), whose keys spread over many exponents: many shared buckets."""
    rng = np.random.default_rng(seed)
    yy, xx = np.ogrid[:height, :width]
    masks, maps = [], []
    for index in range(images):
        mask = np.zeros((height, width), bool)
        if index % 2:
            mask |= ((yy - height // 2) / 40) ** 2 + ((xx - width // 2) / 60) ** 2 <= 1
        noise = ndimage.gaussian_filter(rng.standard_normal((height, width)).astype(np.float32), 4)
        maps.append((noise + 0.05 * ndimage.gaussian_filter(mask.astype(np.float32), 3)).astype(np.float32))
        masks.append(mask)
    return masks, maps


def report_hard_case(images: int) -> None:
    masks, maps = signed_noise_category(images, 1000, 1500)
    megapixels = images * 1.5
    seconds_new, pixels = timed(lambda: accumulate(masks, maps, histograms=True))
    seconds_old, old = timed(lambda: (pixel_metrics(masks, maps), pixel_histograms(masks, maps)))
    difference = max(abs(pixels.metrics()[k] - old[0][k]) for k in old[0])
    print(f"\nsigned scores near zero: {images} images of 1500 x 1000; {pixels.shared.size} shared buckets"
          f" ({'no slot table: pixels sorted per image' if pixels.searched else 'slot table'})")
    print(f"  metrics + histograms: this {1e3 * seconds_new / megapixels:.1f}, previous (global sort)"
          f" {1e3 * seconds_old / megapixels:.1f} ms/Mpx; largest difference {difference:.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=500, help="images of the VisA-size category")
    parser.add_argument("--compare", type=int, default=20, help="images timed with the previous implementation too")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    report("VisA-size", args.images, 1000, 1500, args.compare)
    report("MVTec-size", max(1, args.images // 5), 1024, 1024, args.compare)
    report_hard_case(args.compare)


if __name__ == "__main__":
    main()
