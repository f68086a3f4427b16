import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from benchmark.run.metrics import image_metrics, pixel_metrics


def plain_aupro(masks, maps, limit=0.3, structure=np.ones((3, 3))):
    """Independent AUPRO: loop over every distinct threshold, per-region overlap, trapezoid to `limit`."""
    labels = np.concatenate([m.ravel() for m in masks])
    scores = np.concatenate([a.ravel() for a in maps])
    regions = []
    for mask, amap in zip(masks, maps):
        labelled, count = ndimage.label(mask, structure=structure)
        regions += [amap[labelled == r] for r in range(1, count + 1)]
    normal_scores = scores[labels == 0]
    points = [(0.0, 0.0)]
    for threshold in np.unique(scores)[::-1]:
        fpr = np.mean(normal_scores >= threshold)
        pro = np.mean([np.mean(region >= threshold) for region in regions])
        points.append((fpr, pro))
    fprs, pros = np.array(points).T
    keep = fprs <= limit
    x, y = list(fprs[keep]), list(pros[keep])
    if x[-1] < limit and (~keep).any():
        i = np.argmax(~keep)
        x.append(limit)
        y.append(pros[i - 1] + (limit - fprs[i - 1]) / (fprs[i] - fprs[i - 1]) * (pros[i] - pros[i - 1]))
    return np.trapezoid(y, x) / limit


@pytest.fixture
def rng():
    return np.random.default_rng(7)


def test_image_metrics_equal_sklearn_with_ties(rng):
    labels = rng.integers(0, 2, 300)
    scores = np.round(rng.normal(labels * 0.8, 1.0), 1)  # rounding makes many ties
    metrics = image_metrics(labels, scores)
    assert metrics["image_auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert metrics["image_ap"] == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    precision, recall, _ = precision_recall_curve(labels, scores)
    f1 = np.nanmax(2 * precision * recall / np.maximum(precision + recall, 1e-12))
    assert metrics["image_f1_max"] == pytest.approx(f1, abs=1e-12)


def test_one_class_is_not_applicable_not_zero():
    for labels in ([0, 0, 0], [1, 1, 1], [1], []):
        metrics = image_metrics(labels, [0.1, 0.5, 0.2][:len(labels)])
        assert set(metrics) == {"image_auroc", "image_ap", "image_f1_max"} and all(np.isnan(v) for v in metrics.values())


def _masks_and_maps(rng, n=4, size=24):
    masks, maps = [], []
    for i in range(n):
        mask = np.zeros((size, size), bool)
        if i % 2 == 0:
            y, x = rng.integers(2, size - 8, 2)
            mask[y:y + rng.integers(2, 7), x:x + rng.integers(2, 7)] = True
            mask[1:3, 1:3] = True  # a second, small region
        amap = rng.random((size, size)) * 0.7 + mask * rng.random((size, size)) * 0.6
        masks.append(mask)
        maps.append(np.round(amap, 2))
    return masks, maps


def test_pixel_metrics_equal_sklearn_and_a_plain_aupro(rng):
    masks, maps = _masks_and_maps(rng)
    metrics = pixel_metrics(masks, maps)
    labels = np.concatenate([m.ravel() for m in masks])
    scores = np.concatenate([a.ravel() for a in maps])
    assert metrics["pixel_auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert metrics["pixel_ap"] == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    assert metrics["pixel_aupro"] == pytest.approx(plain_aupro(masks, maps), abs=1e-9)
    assert 0 < metrics["pixel_aupro"] <= 1


def test_aupro_is_one_for_a_perfect_map_and_never_exceeds_one(rng):
    masks, _ = _masks_and_maps(rng)
    perfect = [m.astype(float) for m in masks]
    assert pixel_metrics(masks, perfect)["pixel_aupro"] == pytest.approx(1.0)
    assert pixel_metrics(masks, perfect)["pixel_auroc"] == pytest.approx(1.0)
    inverted = [1.0 - m for m in perfect]
    assert pixel_metrics(masks, inverted)["pixel_aupro"] == pytest.approx(0.0)


def test_pixel_metrics_reject_size_mismatch(rng):
    with pytest.raises(ValueError, match="differ in size"):
        pixel_metrics([np.zeros((4, 4), bool)], [np.zeros((5, 4))])


def test_a_nan_score_is_an_error_not_a_silent_rank():
    with pytest.raises(ValueError, match="NaN"):
        image_metrics([0, 1, 1], [0.1, np.nan, 0.3])


def test_float32_maps_give_the_float64_values(rng):
    masks, maps = _masks_and_maps(rng)
    as32 = pixel_metrics(masks, [m.astype(np.float32) for m in maps])
    as64 = pixel_metrics(masks, [m.astype(np.float32).astype(np.float64) for m in maps])
    assert as32 == pytest.approx(as64, abs=1e-12)


def test_pixel_f1_max_equals_sklearn_and_regions_join_diagonally(rng):
    """PRO's regions are 8-connected (the MVTec AD evaluation code's structure): two defect
    pixels that touch at a corner are one region, which the plain AUPRO above also counts so."""
    masks, maps = _masks_and_maps(rng)
    masks[1][10, 10] = masks[1][11, 11] = masks[1][12, 10] = True  # one region by corners, three by edges
    maps[1][10, 10], maps[1][11, 11], maps[1][12, 10] = 0.95, 0.05, 0.05
    metrics = pixel_metrics(masks, maps)
    labels = np.concatenate([m.ravel() for m in masks])
    scores = np.concatenate([a.ravel() for a in maps])
    precision, recall, _ = precision_recall_curve(labels, scores)
    assert metrics["pixel_f1_max"] == pytest.approx(np.nanmax(2 * precision * recall / np.maximum(precision + recall, 1e-12)),
                                                    abs=1e-12)
    assert metrics["pixel_aupro"] == pytest.approx(plain_aupro(masks, maps), abs=1e-9)
    assert metrics["pixel_aupro"] != pytest.approx(plain_aupro(masks, maps, structure=None), abs=1e-6)  # 4-connected


def test_pixel_metrics_without_both_classes_are_not_applicable():
    keys = {"pixel_auroc", "pixel_ap", "pixel_f1_max", "pixel_aupro"}
    for masks, maps in (([], []), ([np.zeros((3, 3), bool)], [np.ones((3, 3))]), ([np.ones((3, 3), bool)], [np.ones((3, 3))])):
        metrics = pixel_metrics(masks, maps)
        assert set(metrics) == keys and all(np.isnan(v) for v in metrics.values())


def test_float64_maps_are_ranked_in_float64():
    """Scores that differ below float32's resolution keep their order (no silent cast)."""
    mask = np.array([[True, False, False, False]])
    amap = np.array([[1.0 + 1e-12, 1.0, 0.5, 0.2]])
    assert pixel_metrics([mask], [amap])["pixel_auroc"] == 1.0  # as float32 the first two tie: 5/6


def test_auroc_takes_any_nonzero_label_as_anomalous():
    from benchmark.run.metrics import auroc

    assert auroc([0, 2, 0, 7], [0.1, 0.9, 0.2, 0.8]) == roc_auc_score([0, 1, 0, 1], [0.1, 0.9, 0.2, 0.8]) == 1.0
    assert auroc([0, 2, 0, 7], [0.9, 0.1, 0.2, 0.8]) == roc_auc_score([0, 1, 0, 1], [0.9, 0.1, 0.2, 0.8])


def test_region_weights_are_one_over_regions_times_region_size():
    from benchmark.run.metrics import region_weights

    first = np.zeros((4, 4), np.uint8)
    first[0, 0] = first[1, 1] = 1  # one region of 2 (corners touch)
    first[3, 1:4] = 1  # one region of 3
    second = np.zeros((2, 2), bool)
    second[1, 1] = True  # one region of 1
    weights = region_weights([first, np.zeros((3, 3), bool), second])
    # pixel order: the masks' defect pixels row by row, image after image
    assert weights.tolist() == pytest.approx([1 / 6, 1 / 6, 1 / 9, 1 / 9, 1 / 9, 1 / 3], abs=1e-15)
    assert region_weights([np.zeros((2, 2), bool)]).shape == (0,)


def test_aupro_interpolates_pro_linearly_at_the_limit_between_its_neighbours():
    """Points (0, 0), (0.1, 0.2), (0.2, 0.4), then PRO at 0.3 is halfway from 0.4 (FPR 0.2) to
    0.8 (FPR 0.4): 0.6; area 0.01 + 0.03 + 0.05 = 0.09, over the limit 0.3."""
    from benchmark.run.metrics import aupro_from_curve

    assert aupro_from_curve(np.array([0.1, 0.2, 0.4, 1.0]), np.array([0.2, 0.4, 0.8, 1.0]), 0.3) == pytest.approx(0.3, abs=1e-12)


def test_aupro_of_a_curve_that_ends_before_the_limit_is_its_area_so_far_over_the_limit():
    from benchmark.run.metrics import aupro_from_curve

    # (0, 0), (0.1, 0.5), (0.2, 1.0): 0.025 + 0.075 = 0.1, over 0.3; nothing is extrapolated
    assert aupro_from_curve(np.array([0.1, 0.2]), np.array([0.5, 1.0]), 0.3) == pytest.approx(0.1 / 0.3, abs=1e-12)


def test_a_perfect_pro_curve_scores_exactly_one_whatever_the_float_rounding():
    from benchmark.run.metrics import aupro_from_curve

    # trapezoid over FPR 0, 0.03, 0.3 at PRO 1 sums to 1.0000000000000002 x 0.3 in float64
    assert aupro_from_curve(np.array([0.0, 0.03, 0.3, 1.0]), np.ones(4), 0.3) == 1.0
