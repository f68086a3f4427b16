"""Bootstrap replicates of a cell's image and pixel AUROC: what intervals and paired tests use.

The resampling unit is the test image, stratified by label within each category (normal and
anomalous images are resampled separately, so every replicate has both classes), with RESAMPLES
draws from an RNG keyed by (BOOTSTRAP_SEED, category, reference seed, label). A replicate of the
cell's value is the mean over categories of the replicate AUROCs, as the cell's value is the
mean over categories. Pixel AUROC is resampled by image too, never by pixel (pixels of one image
are not independent): each image contributes its histograms of normal and defect pixel scores
on PIXEL_BINS equal-width bins over the category's score range, so a replicate's pixel AUROC is
that of the quantised maps (the point estimate in the tables stays the exact one).

Two methods scored on the same queries (same data set, setting and reference seed) draw the
same resamples, in the same image order (by path), so their replicates are paired: their
difference is a paired bootstrap of the AUROC difference (benchmark/outputs/significance.py).
"""

from __future__ import annotations

import zlib

import numpy as np

RESAMPLES = 1000
BOOTSTRAP_SEED = 0
PIXEL_BINS = 1000
LEVEL = 0.95
DESCRIPTION = (f"percentile bootstrap, {RESAMPLES} resamples of the test images stratified by label within each"
               f" category (seed {BOOTSTRAP_SEED}); pixel AUROC resampled by image on maps quantised to {PIXEL_BINS} levels")


def resample_weights(labels: np.ndarray, category: str, reference_seed: int, resamples: int = RESAMPLES) -> np.ndarray:
    """[resamples, n] how often each image (in the given order) is drawn in each replicate."""
    labels = np.asarray(labels).astype(int)
    weights = np.zeros((resamples, labels.size))
    for label in (0, 1):
        members = np.flatnonzero(labels == label)
        if members.size == 0:
            continue
        rng = np.random.default_rng([BOOTSTRAP_SEED, zlib.crc32(category.encode()), int(reference_seed), label])
        draws = rng.integers(0, members.size, (resamples, members.size))
        counts = np.bincount((draws + members.size * np.arange(resamples)[:, None]).ravel(), minlength=resamples * members.size)
        weights[:, members] = counts.reshape(resamples, members.size)
    return weights


def weighted_auroc(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUROC (Mann-Whitney: P(anomalous > normal) + 0.5 P(tie)) of each row of weights [R, n]."""
    labels, scores = np.asarray(labels).astype(bool), np.asarray(scores, dtype=np.float64)
    positive, negative = scores[labels], scores[~labels]
    if positive.size == 0 or negative.size == 0:
        return np.full(len(weights), np.nan)
    wins = (positive[:, None] > negative[None, :]) + 0.5 * (positive[:, None] == negative[None, :])  # [P, N]
    w_pos, w_neg = weights[:, labels], weights[:, ~labels]
    return np.einsum("rp,pn,rn->r", w_pos, wins, w_neg) / (w_pos.sum(1) * w_neg.sum(1))


def pixel_histograms(masks: list[np.ndarray], maps: list[np.ndarray], bins: int = PIXEL_BINS) -> np.ndarray:
    """[n, 2, bins]: per image, the counts of its normal (0) and defect (1) pixels' scores on
    equal-width bins over the range of all the category's maps."""
    low = min(float(m.min()) for m in maps)
    high = max(float(m.max()) for m in maps)
    scale = bins / (high - low) if high > low else 0.0
    out = np.zeros((len(maps), 2, bins))
    for i, (mask, score) in enumerate(zip(masks, maps)):
        level = np.minimum(((np.asarray(score, dtype=np.float64) - low) * scale).astype(np.int64), bins - 1)
        # one pass: normal pixels count in [0, bins), defect pixels in [bins, 2 bins)
        out[i] = np.bincount((level + bins * np.asarray(mask, dtype=bool)).ravel(), minlength=2 * bins).reshape(2, bins)
    return out


def histogram_auroc(histograms: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Pixel AUROC of each replicate from per-image histograms [n, 2, bins] and weights [R, n]."""
    negative = weights @ histograms[:, 0]  # [R, bins]
    positive = weights @ histograms[:, 1]
    below = np.cumsum(negative, axis=1) - negative  # negatives strictly below each bin
    with np.errstate(invalid="ignore", divide="ignore"):
        return (positive * (below + 0.5 * negative)).sum(1) / (positive.sum(1) * negative.sum(1))


def category_replicates(category: str, reference_seed: int, paths: list[str], labels: list[int], scores: list[float],
                        histograms: np.ndarray | None = None) -> dict[str, np.ndarray | None]:
    """Image (and pixel, given histograms in the same order as paths) AUROC replicates [RESAMPLES]."""
    order = np.argsort(np.asarray(paths, dtype=object), kind="stable")  # by path: the same for every method
    labels_sorted = np.asarray(labels)[order]
    weights = resample_weights(labels_sorted, category, reference_seed)
    out = {"image_auroc": weighted_auroc(labels_sorted, np.asarray(scores)[order], weights), "pixel_auroc": None}
    if histograms is not None:
        out["pixel_auroc"] = histogram_auroc(np.asarray(histograms)[order], weights)
    return out


def cell_replicates(per_category: dict[str, dict[str, np.ndarray | None]]) -> dict[str, np.ndarray | None]:
    """The cell's replicates: per replicate, the mean over categories (those where it is defined)."""
    out = {}
    for metric in ("image_auroc", "pixel_auroc"):
        stacked = [r[metric] for r in per_category.values() if r[metric] is not None and np.isfinite(r[metric]).all()]
        out[metric] = np.mean(stacked, axis=0) if stacked else None
    return out


def interval(replicates: np.ndarray | None, level: float = LEVEL) -> tuple[float, float] | None:
    """The percentile interval of replicates (None when there are none)."""
    if replicates is None or len(replicates) == 0:
        return None
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(np.asarray(replicates, dtype=np.float64), [tail, 100 - tail])
    return float(low), float(high)
