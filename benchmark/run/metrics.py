"""Image and pixel metrics: AUROC, AP, F1-max, and AUPRO up to FPR 0.3 (normalised by 0.3).

All four come from one sort of the scores and the curve's corners at every distinct threshold
(Curve), so they equal scikit-learn's roc_auc_score / average_precision_score exactly (up to
float rounding) and a threshold-by-threshold AUPRO; 40 M pixels take about a second
(tools/timing/metric_speed.py). A metric that is undefined (one class only, no defect
regions) is NaN, which the tables print as not applicable, never as 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

AUPRO_FPR_LIMIT = 0.3
# 8-connected defect regions, as the official MVTec AD evaluation labels them
REGION_STRUCTURE = np.ones((3, 3), dtype=bool)


@dataclass
class Curve:
    """The ROC / PR curve at the thresholds that matter: the distinct scores that at least one
    positive has, from the highest down. Between two of them only negatives enter, which moves
    the curves along a straight segment (ROC, PRO) or lowers precision at a constant recall (PR),
    so these points give every metric exactly.

    tp, fp: positives / negatives scoring >= the threshold; fp_above: negatives scoring > it;
    new_tp: positives exactly at it; extra: cumulative weights the positives carry (PRO)."""

    tp: np.ndarray
    new_tp: np.ndarray
    fp: np.ndarray
    fp_above: np.ndarray
    extra: list[np.ndarray]
    positives: int
    negatives: int

    def auroc(self) -> float:
        fpr, tpr = self.staircase(self.tp / self.positives, 1.0)
        return float(np.trapezoid(np.r_[0.0, tpr], np.r_[0.0, fpr]))

    def average_precision(self) -> float:
        return float(np.sum(self.new_tp / self.positives * self.tp / (self.tp + self.fp)))

    def f1_max(self) -> float:
        return float(np.max(2 * self.tp / (self.tp + self.fp + self.positives)))

    def staircase(self, y: np.ndarray, y_end: float) -> tuple[np.ndarray, np.ndarray]:
        """(FPR, y) through every corner of the curve: for each threshold the point just before
        its own samples enter (the negatives above it, y of the threshold before) and the point
        after; then FPR 1 at the end."""
        before = np.r_[0.0, y[:-1]]
        fpr = np.stack([self.fp_above, self.fp], axis=1).ravel() / self.negatives
        return np.r_[fpr, 1.0], np.r_[np.stack([before, y], axis=1).ravel(), y_end]


def _curve(scores: np.ndarray, labels: np.ndarray, *positive_weights: np.ndarray) -> Curve:
    """Only the scores are sorted, with numpy's vectorised sort (an argsort of 40 M pixels is ~10x
    slower); the positives' distinct scores are then located in them by binary search.
    positive_weights are given for the positives only, in the order of scores[labels]."""
    labels = labels.astype(bool, copy=False)
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN: an adapter returned an undefined score or anomaly map")
    values = np.sort(scores)
    distinct, inverse, counts = np.unique(scores[labels], return_inverse=True, return_counts=True)
    distinct, counts = distinct[::-1], counts[::-1]  # highest threshold first
    inverse = distinct.size - 1 - inverse.ravel()
    at_or_above = values.size - np.searchsorted(values, distinct, side="left")
    above = values.size - np.searchsorted(values, distinct, side="right")
    tp = np.cumsum(counts).astype(np.float64)
    extra = [np.cumsum(np.bincount(inverse, weights=w, minlength=distinct.size)) for w in positive_weights]
    return Curve(tp=tp, new_tp=counts.astype(np.float64), fp=(at_or_above - tp), fp_above=(above - (tp - counts)),
                 extra=extra, positives=int(labels.sum()), negatives=int(labels.size - labels.sum()))


def auroc(labels, scores) -> float:
    """ROC AUC of any labelled scores (images or flattened pixels); NaN with one class only."""
    labels = np.asarray(labels).ravel().astype(bool)
    if labels.all() or not labels.any():  # one class only (an empty array has no positive)
        return math.nan
    return _curve(np.asarray(scores).ravel(), labels).auroc()


def image_metrics(labels, scores) -> dict:
    labels = np.asarray(labels, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    if labels.size == 0 or labels.min() == labels.max():
        return {"image_auroc": math.nan, "image_ap": math.nan, "image_f1_max": math.nan}
    curve = _curve(scores, labels)
    return {"image_auroc": curve.auroc(), "image_ap": curve.average_precision(), "image_f1_max": curve.f1_max()}


def region_weights(masks: list[np.ndarray]) -> np.ndarray:
    """For every defect pixel (in the order of the masks' defect pixels, image after image):
    1 / (number of regions * size of its region). Summed over the pixels above a threshold this
    is the mean per-region overlap (PRO) at that threshold; normal pixels carry no weight."""
    labelled = [ndimage.label(mask, structure=REGION_STRUCTURE) for mask in masks]
    total_regions = sum(count for _, count in labelled)
    out = []
    for mask, (regions, count) in zip(masks, labelled):
        if count:
            sizes = np.bincount(regions.ravel())
            per_region = np.zeros_like(sizes, dtype=np.float64)
            per_region[1:] = 1.0 / (total_regions * sizes[1:])
            out.append(per_region[regions[np.asarray(mask, dtype=bool)]])
    return np.concatenate(out) if out else np.zeros(0)


def aupro_from_curve(fpr: np.ndarray, pro: np.ndarray, limit: float = AUPRO_FPR_LIMIT) -> float:
    """Area under PRO(FPR) from 0 to `limit`, linearly interpolated at the limit, divided by it."""
    fpr = np.r_[0.0, fpr]
    pro = np.r_[0.0, pro]
    inside = fpr <= limit
    x, y = fpr[inside], pro[inside]
    if x[-1] < limit and inside.sum() < fpr.size:
        nxt = inside.sum()
        t = (limit - fpr[nxt - 1]) / (fpr[nxt] - fpr[nxt - 1])
        x = np.r_[x, limit]
        y = np.r_[y, pro[nxt - 1] + t * (pro[nxt] - pro[nxt - 1])]
    return float(min(1.0, np.trapezoid(y, x) / limit))


def pixel_metrics(masks: list[np.ndarray], maps: list[np.ndarray]) -> dict:
    """masks: boolean [h, w] per image; maps: float [h, w] per image, same sizes."""
    nan = {"pixel_auroc": math.nan, "pixel_ap": math.nan, "pixel_f1_max": math.nan, "pixel_aupro": math.nan}
    if not masks:
        return nan
    for mask, amap in zip(masks, maps):
        if mask.shape != amap.shape:
            raise ValueError(f"anomaly map {amap.shape} and mask {mask.shape} differ in size")
    labels = np.concatenate([m.ravel() for m in masks]).astype(bool, copy=False)
    # float32 maps are sorted as float32 (no value changes; half the memory traffic)
    dtype = np.float32 if all(a.dtype == np.float32 for a in maps) else np.float64
    scores = np.concatenate([np.asarray(a, dtype=dtype).ravel() for a in maps])
    if labels.all() or not labels.any():
        return nan
    curve = _curve(scores, labels, region_weights(masks))
    aupro = aupro_from_curve(*curve.staircase(curve.extra[0], curve.extra[0][-1]))  # a defect pixel makes a region
    return {"pixel_auroc": curve.auroc(), "pixel_ap": curve.average_precision(), "pixel_f1_max": curve.f1_max(),
            "pixel_aupro": aupro}


METRIC_NAMES = ["image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "pixel_ap", "pixel_f1_max", "pixel_aupro"]
