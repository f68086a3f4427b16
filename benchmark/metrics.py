"""Image and pixel metrics: AUROC, AP, F1-max, and AUPRO up to FPR 0.3 (normalised by 0.3).

All four come from one descending sort of the scores, evaluated at every distinct threshold, so
they equal scikit-learn's roc_auc_score / average_precision_score exactly (up to float rounding)
and a threshold-by-threshold AUPRO. A metric that is undefined (one class only, no defect
regions) is NaN, which the tables print as not applicable, never as 0.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

AUPRO_FPR_LIMIT = 0.3
# 8-connected defect regions, as the official MVTec AD evaluation labels them
REGION_STRUCTURE = np.ones((3, 3), dtype=bool)


def _sorted_curve(scores: np.ndarray, labels: np.ndarray, *weights: np.ndarray):
    """Cumulative positives / negatives (and any extra weights) at each distinct threshold,
    thresholds taken from the highest score down."""
    order = np.argsort(-scores, kind="stable")
    ordered = scores[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(ordered)), ordered.size - 1]
    positives = np.cumsum(labels[order], dtype=np.float64)[last_of_tie]
    negatives = (last_of_tie + 1) - positives
    extra = [np.cumsum(w[order], dtype=np.float64)[last_of_tie] for w in weights]
    return positives, negatives, extra


def _auroc_ap_f1(positives: np.ndarray, negatives: np.ndarray) -> tuple[float, float, float]:
    total_pos, total_neg = positives[-1], negatives[-1]
    tpr = np.r_[0.0, positives / total_pos]
    fpr = np.r_[0.0, negatives / total_neg]
    auroc = float(np.trapezoid(tpr, fpr))
    precision = positives / (positives + negatives)
    recall = positives / total_pos
    ap = float(np.sum(np.diff(np.r_[0.0, recall]) * precision))
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = 2 * precision * recall / (precision + recall)
    f1_max = float(np.nanmax(f1)) if np.any(np.isfinite(f1)) else 0.0
    return auroc, ap, f1_max


def image_metrics(labels, scores) -> dict:
    labels = np.asarray(labels, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    if labels.size == 0 or labels.min() == labels.max():
        return {"image_auroc": math.nan, "image_ap": math.nan, "image_f1_max": math.nan}
    positives, negatives, _ = _sorted_curve(scores, labels)
    auroc, ap, f1 = _auroc_ap_f1(positives, negatives)
    return {"image_auroc": auroc, "image_ap": ap, "image_f1_max": f1}


def region_weights(masks: list[np.ndarray]) -> tuple[np.ndarray, int]:
    """Per pixel: 1 / (number of regions * size of its region), 0 on normal pixels. Summed over
    the pixels above a threshold this is the mean per-region overlap (PRO) at that threshold."""
    labelled = [ndimage.label(mask, structure=REGION_STRUCTURE) for mask in masks]
    total_regions = sum(count for _, count in labelled)
    out = []
    for regions, count in labelled:
        weights = np.zeros(regions.shape, dtype=np.float64)
        if count:
            sizes = np.bincount(regions.ravel())
            per_region = np.zeros_like(sizes, dtype=np.float64)
            per_region[1:] = 1.0 / (total_regions * sizes[1:])
            weights = per_region[regions]
        out.append(weights.ravel())
    return np.concatenate(out) if out else np.zeros(0), total_regions


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
    labels = np.concatenate([m.ravel() for m in masks]).astype(np.float64)
    scores = np.concatenate([a.ravel() for a in maps]).astype(np.float64)
    if labels.min() == labels.max():
        return nan
    weights, regions = region_weights(masks)
    positives, negatives, (pro,) = _sorted_curve(scores, labels, weights)
    auroc, ap, f1 = _auroc_ap_f1(positives, negatives)
    aupro = aupro_from_curve(negatives / negatives[-1], pro) if regions else math.nan
    return {"pixel_auroc": auroc, "pixel_ap": ap, "pixel_f1_max": f1, "pixel_aupro": aupro}


METRIC_NAMES = ["image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "pixel_ap", "pixel_f1_max", "pixel_aupro"]
