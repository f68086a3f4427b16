"""The pixel metrics accumulated image by image (benchmark/run/pixel_accumulator.py) against
scikit-learn and a brute-force AUPRO, on the cases where a sort-free count goes wrong: heavy
ties, ties across normal and defect pixels, constant maps, one-pixel defects, images without a
defect, negative scores and -0.0, and scores on both sides of a 16-bit bucket boundary; the torch
path against the numpy path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from benchmark.run.intervals import pixel_histograms
from benchmark.run.pixel_accumulator import PixelAccumulator
from benchmark.run.pixel_keys import ordered_keys
from test_metrics import plain_aupro


def accumulate(masks, maps, as_tensor=False, max_table_buckets=768):
    convert = (lambda a: torch.from_numpy(np.ascontiguousarray(a))) if as_tensor else (lambda a: a)
    pixels = PixelAccumulator(max_table_buckets=max_table_buckets)
    for mask, amap in zip(masks, maps):
        pixels.add(mask, convert(amap))
    pixels.finish()
    for amap in maps:
        pixels.add_second_pass(convert(amap))
    return pixels


def reference(masks, maps) -> dict:
    labels = np.concatenate([m.ravel() for m in masks])
    scores = np.concatenate([a.ravel() for a in maps]).astype(np.float64)
    precision, recall, _ = precision_recall_curve(labels, scores)
    with np.errstate(invalid="ignore"):
        f1 = np.nanmax(2 * precision * recall / (precision + recall))
    return {"pixel_auroc": roc_auc_score(labels, scores), "pixel_ap": average_precision_score(labels, scores),
            "pixel_f1_max": f1, "pixel_aupro": plain_aupro(masks, maps)}


def bucket_edge_scores(rng, shape):
    """float32 scores whose keys sit on both sides of a boundary between two 16-bit buckets."""
    edge = np.int32(0x3F000000)  # the key of 0.5: its bucket starts here
    keys = edge + rng.integers(-3, 3, shape).astype(np.int32)
    return keys.view(np.float32)


def cases():
    rng = np.random.default_rng(3)
    out = {}
    shapes = [(17, 23), (31, 12), (9, 40), (25, 25)]

    def masks(one_pixel=False):
        result = []
        for i, shape in enumerate(shapes):
            mask = np.zeros(shape, bool)
            if i % 2 == 0:
                if one_pixel:
                    mask[shape[0] // 2, shape[1] // 2] = True
                else:
                    mask[2:6, 3:9] = True
                    mask[-2:, -2:] = True  # a second region
            result.append(mask)
        return result

    out["random"] = (masks(), [rng.random(s).astype(np.float32) for s in shapes])
    out["heavy ties"] = (masks(), [(rng.integers(0, 4, s) / 4).astype(np.float32) for s in shapes])
    out["defect scores higher, tied"] = (masks(), [((rng.integers(0, 3, s) + 2 * m) / 8).astype(np.float32)
                                                   for s, m in zip(shapes, masks())])
    out["constant"] = (masks(), [np.full(s, 0.25, np.float32) for s in shapes])
    out["one-pixel defects"] = (masks(one_pixel=True), [rng.random(s).astype(np.float32) for s in shapes])
    out["negative and -0.0"] = (masks(), [np.where(rng.random(s) < 0.3, np.float32(-0.0),
                                                   rng.integers(-2, 3, s).astype(np.float32)) for s in shapes])
    out["bucket boundary"] = (masks(), [bucket_edge_scores(rng, s) for s in shapes])
    # defect pixels on the last key of a bucket, normal pixels on both sides of them and in the
    # next bucket, which holds no defect pixel
    edge = np.int32(0x3F000000)
    below_edge = []
    for shape, mask in zip(shapes, masks()):
        keys = np.where(mask, edge - 1, edge + rng.integers(-2, 2, shape)).astype(np.int32)
        below_edge.append(keys.view(np.float32))
    out["defect on a bucket's last key"] = (masks(), below_edge)
    # defect scores in buckets far apart (1e-3 and 1e3): counted bucket by bucket, not as one span
    far = []
    for shape, mask in zip(shapes, masks()):
        amap = rng.random(shape).astype(np.float32)
        amap[mask] = np.where(rng.random(int(mask.sum())) < 0.5, 1e-3, 1e3).astype(np.float32)
        far.append(amap)
    out["defects in distant buckets"] = (masks(), far)
    return out


@pytest.mark.parametrize("searched", [False, True], ids=["slot table", "binary search"])
@pytest.mark.parametrize("name", list(cases()))
def test_pixel_metrics_equal_scikit_learn_and_a_brute_force_aupro(name, searched):
    masks, maps = cases()[name]
    pixels = accumulate(masks, maps, max_table_buckets=0 if searched else 768)
    assert pixels.searched == (searched and pixels.shared.size > 0)
    got, want = pixels.metrics(), reference(masks, maps)
    for metric in ("pixel_auroc", "pixel_ap", "pixel_f1_max"):
        assert got[metric] == pytest.approx(want[metric], abs=1e-12), metric
    assert got["pixel_aupro"] == pytest.approx(want["pixel_aupro"], abs=1e-9)


@pytest.mark.parametrize("searched", [False, True], ids=["slot table", "binary search"])
@pytest.mark.parametrize("name", ["random", "heavy ties", "negative and -0.0", "bucket boundary", "defects in distant buckets"])
def test_the_torch_path_counts_as_the_numpy_path(name, searched):
    masks, maps = cases()[name]
    tables = 0 if searched else 768
    on_numpy = accumulate(masks, maps, max_table_buckets=tables)
    on_torch = accumulate(masks, maps, as_tensor=True, max_table_buckets=tables)
    assert on_torch.metrics() == on_numpy.metrics()
    np.testing.assert_array_equal(np.stack(on_torch.histograms), np.stack(on_numpy.histograms))


def test_distant_defect_buckets_take_the_bucket_by_bucket_path_and_close_ones_the_span():
    assert not accumulate(*cases()["defects in distant buckets"]).contiguous
    assert accumulate(*cases()["bucket boundary"]).contiguous


def test_threads_and_batches_count_as_one_image_at_a_time():
    masks, maps = cases()["random"]
    one = accumulate(masks, maps)
    many = PixelAccumulator()
    many.add_many(masks, maps)
    many.finish()
    many.second_pass(maps)
    assert many.metrics() == one.metrics()
    np.testing.assert_array_equal(np.stack(many.histograms), np.stack(one.histograms))



def _far_on_both_sides():
    """Defect scores in one bucket around 0.5; normal pixels far below (0.01) and far above (4.0)."""
    rng = np.random.default_rng(11)
    masks, maps = [], []
    for shape in [(12, 9), (7, 15), (10, 10)]:
        mask = np.zeros(shape, bool)
        mask[2:5, 3:7] = True
        amap = np.where(rng.random(shape) < 0.5, np.float32(0.01), np.float32(4.0))
        amap[mask] = (0.5 + rng.integers(0, 5, int(mask.sum())) * 1e-6).astype(np.float32)
        amap[0, :3] = amap[mask][:3]  # normal pixels tied with defect ones inside the span
        masks.append(mask)
        maps.append(amap.astype(np.float32))
    return masks, maps


@pytest.mark.parametrize("searched", [False, True], ids=["slot table", "binary search"])
@pytest.mark.parametrize("name", ["random", "heavy ties", "one-pixel defects", "defects in distant buckets", "far on both sides"])
def test_one_chunk_of_many_images_counts_as_scikit_learn(name, searched):
    """second_pass() in one thread: every image in one chunk, so the per-chunk sums (slot counts
    flushed several times, pixels by bucket or by side) add up over images, not just per image."""
    from unittest import mock

    masks, maps = _far_on_both_sides() if name == "far on both sides" else cases()[name]
    pixels = PixelAccumulator(max_table_buckets=0 if searched else 768)
    for mask, amap in zip(masks, maps):
        pixels.add(mask, amap)
    pixels.finish()
    with mock.patch("benchmark.run.pixel_accumulator.workers_for", return_value=1):
        pixels.second_pass(maps)
    got, want = pixels.metrics(), reference(masks, maps)
    for metric in ("pixel_auroc", "pixel_ap", "pixel_f1_max"):
        assert got[metric] == pytest.approx(want[metric], abs=1e-12), metric
    assert got["pixel_aupro"] == pytest.approx(want["pixel_aupro"], abs=1e-9)

def test_the_bootstrap_histograms_come_out_of_the_second_pass_as_before():
    masks, maps = cases()["random"]
    np.testing.assert_array_equal(np.stack(accumulate(masks, maps).histograms), pixel_histograms(masks, maps))


def test_keys_keep_the_order_of_the_floats_and_make_zeros_equal():
    values = np.array([-np.inf, -3.5, -1e-38, -0.0, 0.0, 1e-45, 0.5, 0.50000006, np.inf], dtype=np.float32)
    keys = ordered_keys(values).astype(np.int64)
    assert keys[3] == keys[4]  # -0.0 == +0.0
    assert np.all(np.diff(np.delete(keys, 3)) > 0)
    assert np.array_equal(ordered_keys(torch.from_numpy(values)).numpy(), ordered_keys(values))


def test_without_a_defect_or_without_a_normal_pixel_the_metrics_are_not_applicable():
    maps = [np.random.default_rng(0).random((8, 8)).astype(np.float32)]
    for masks in ([np.zeros((8, 8), bool)], [np.ones((8, 8), bool)]):
        metrics = accumulate(masks, maps).metrics()
        assert set(metrics) == {"pixel_auroc", "pixel_ap", "pixel_f1_max", "pixel_aupro"}
        assert all(np.isnan(v) for v in metrics.values())
    assert set(accumulate([], []).metrics()) == {"pixel_auroc", "pixel_ap", "pixel_f1_max", "pixel_aupro"}  # no image


def test_nan_and_a_size_mismatch_are_refused():
    pixels = PixelAccumulator()
    with pytest.raises(ValueError, match="NaN"):
        pixels.add(np.zeros((2, 2), bool), np.array([[0.1, np.nan], [0.2, 0.3]], np.float32))
    with pytest.raises(ValueError, match="differ in size"):
        pixels.add(np.zeros((2, 2), bool), np.zeros((3, 2), np.float32))


@pytest.mark.parametrize("blur_at, resize", [("original", "squash"), ("original", "shorter"), ("input", "squash"),
                                             ("input", "shorter")])
def test_maps_finished_on_the_device_equal_the_host_path(blur_at, resize):
    """On a GPU the maps stay on the device (on_device): the same operators, the same values; run
    here on the CPU through the device code path."""
    from benchmark.api import Preprocessing
    from benchmark.run.maps import maps_at_original

    preprocessing = Preprocessing(size=32, resize=resize, resize_to=40 if resize == "shorter" else None)
    maps = torch.rand(3, 8, 8)
    sizes = [(50, 70), (64, 64), (45, 30)]
    host, host_maxima = maps_at_original(maps, sizes, preprocessing, 2.0, blur_at)
    device, device_maxima = maps_at_original(maps, sizes, preprocessing, 2.0, blur_at, on_device=True)
    assert all(isinstance(m, torch.Tensor) for m in device)
    for got, want in zip(device, host):
        np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(device_maxima, host_maxima)


@pytest.mark.parametrize("searched", [False, True], ids=["slot table", "binary search"])
def test_normal_pixels_on_both_sides_of_a_contiguous_span_count_below_and_above_every_threshold(searched):
    """Defect scores in one bucket around 0.5; normal pixels far below (0.01) and far above (4.0)
    it, in buckets of their own, are counted by side, and the curve still equals scikit-learn's."""
    masks, maps = _far_on_both_sides()
    pixels = accumulate(masks, maps, max_table_buckets=0 if searched else 768)
    assert pixels.contiguous and pixels.searched == searched
    assert searched or (pixels.outside > 0).all()  # the table path counts the far pixels by side
    got, want = pixels.metrics(), reference(masks, maps)
    for metric in ("pixel_auroc", "pixel_ap", "pixel_f1_max"):
        assert got[metric] == pytest.approx(want[metric], abs=1e-12), metric


def test_the_second_pass_in_threads_continues_where_single_images_left_off():
    """second_pass() after add_second_pass() of the first image, split over three threads: every
    later image counted once, in order (its histogram at its own index)."""
    from unittest import mock

    masks, maps = cases()["random"]
    one = accumulate(masks, maps)
    mixed = PixelAccumulator()
    for mask, amap in zip(masks, maps):
        mixed.add(mask, amap)
    mixed.finish()
    mixed.add_second_pass(maps[0])
    with mock.patch("benchmark.run.pixel_accumulator.workers_for", return_value=3):
        mixed.second_pass(maps[1:])
    assert mixed.metrics() == one.metrics()
    np.testing.assert_array_equal(np.stack(mixed.histograms), np.stack(one.histograms))


def test_a_map_whose_minimum_is_minus_zero_ties_it_with_zero_and_integer_masks_count_as_boolean():
    """-0.0 == 0.0 for scikit-learn: a map that starts at -0.0 must not take the non-negative keys'
    shortcut (its sign bit would sort it below everything); masks of 0/1 integers are masks."""
    rng = np.random.default_rng(5)
    masks, maps = [], []
    for shape in [(6, 7), (5, 9)]:
        mask = np.zeros(shape, np.uint8)
        mask[1:3, 2:5] = 1
        amap = rng.choice(np.array([-0.0, 0.0, 0.25, 0.5], np.float32), shape)
        amap[mask == 1] = rng.choice(np.array([-0.0, 0.0, 0.5], np.float32), int(mask.sum()))
        amap[0, 0] = np.float32(-0.0)
        masks.append(mask)
        maps.append(amap)
    pixels = accumulate(masks, maps)
    got, want = pixels.metrics(), reference([m.astype(bool) for m in masks], maps)
    for metric in ("pixel_auroc", "pixel_ap", "pixel_f1_max"):
        assert got[metric] == pytest.approx(want[metric], abs=1e-12), metric
