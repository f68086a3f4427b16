"""Pixel-metric speed on a category of the largest size: N images at S x S (default 200 at 448).

Prints the harness's pixel AUROC and AUPRO (benchmark/run/metrics.py: one vectorised sort of the
scores) beside scikit-learn's roc_auc_score and a plain AUPRO on the same arrays (argsort of every
pixel, per-pixel cumulative false-positive rate and per-region overlap, as the MVTec AD evaluation
code computes it), with their values and the largest difference. Run:

    .venv/bin/python tools/timing/metric_speed.py [--images 200] [--size 448]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from benchmark.run.metrics import REGION_STRUCTURE, aupro_from_curve, pixel_metrics


def synthetic_category(images: int, size: int, seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Half the images carry 1-3 elliptic defects; maps are smooth noise plus a bump on each defect."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    masks, maps = [], []
    for i in range(images):
        mask = np.zeros((size, size), bool)
        if i % 2:
            for _ in range(rng.integers(1, 4)):
                cy, cx = rng.integers(size // 8, size - size // 8, 2)
                ry, rx = rng.integers(size // 40, size // 10, 2)
                mask |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        noise = ndimage.gaussian_filter(rng.standard_normal((size, size)).astype(np.float32), 4)
        maps.append((noise + 0.5 * ndimage.gaussian_filter(mask.astype(np.float32), 3)).astype(np.float32))
        masks.append(mask)
    return masks, maps


def plain_aupro(masks: list[np.ndarray], maps: list[np.ndarray]) -> float:
    """Every pixel in one argsort; FPR and mean per-region overlap accumulated pixel by pixel."""
    scores = np.concatenate([a.ravel() for a in maps]).astype(np.float64)
    weights, normal = [], []
    labelled = [ndimage.label(m, structure=REGION_STRUCTURE) for m in masks]
    regions_total = sum(count for _, count in labelled)
    for mask, (regions, count) in zip(masks, labelled):
        sizes = np.bincount(regions.ravel(), minlength=count + 1).astype(np.float64)
        per_region = np.r_[0.0, 1.0 / (regions_total * sizes[1:])]
        weights.append(per_region[regions].ravel())
        normal.append(~mask.ravel())
    weights, normal = np.concatenate(weights), np.concatenate(normal)
    order = np.argsort(-scores, kind="stable")
    ordered = scores[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(ordered)), ordered.size - 1]
    fpr = np.cumsum(normal[order])[last_of_tie] / normal.sum()
    pro = np.cumsum(weights[order])[last_of_tie]
    return aupro_from_curve(fpr, pro)


def timed(function, *args):
    start = time.perf_counter()
    value = function(*args)
    return value, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--size", type=int, default=448)
    args = parser.parse_args()
    masks, maps = synthetic_category(args.images, args.size)
    labels = np.concatenate([m.ravel() for m in masks])
    scores = np.concatenate([a.ravel() for a in maps])
    print(f"{args.images} images at {args.size} x {args.size}: {labels.size / 1e6:.1f} M pixels, "
          f"{labels.mean() * 100:.2f} % defect pixels")
    ours, ours_seconds = timed(pixel_metrics, masks, maps)
    sklearn_auroc, sklearn_seconds = timed(roc_auc_score, labels, scores)
    reference_aupro, plain_seconds = timed(plain_aupro, masks, maps)
    print(f"gadbench pixel_metrics (AUROC, AP, F1-max, AUPRO together): {ours_seconds:6.2f} s")
    print(f"scikit-learn roc_auc_score (AUROC only):                    {sklearn_seconds:6.2f} s")
    print(f"plain AUPRO (argsort of every pixel):                        {plain_seconds:6.2f} s")
    print(f"pixel AUROC  gadbench {ours['pixel_auroc']:.12f}  scikit-learn {sklearn_auroc:.12f}  "
          f"difference {abs(ours['pixel_auroc'] - sklearn_auroc):.1e}")
    print(f"pixel AUPRO  gadbench {ours['pixel_aupro']:.12f}  plain        {reference_aupro:.12f}  "
          f"difference {abs(ours['pixel_aupro'] - reference_aupro):.1e}")


if __name__ == "__main__":
    main()
