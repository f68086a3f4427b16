import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from benchmark.run.maps import maps_at_original
from benchmark.api.preprocessing import Preprocessing
from benchmark.features.similarity import normal_similarity, top_percent_mean


def test_normal_similarity_is_one_for_a_query_identical_to_a_reference():
    refs = torch.randn(2, 50, 16)
    s_n = normal_similarity(refs[1:2], refs)
    assert torch.allclose(s_n, torch.ones_like(s_n), atol=1e-6)
    far = normal_similarity(torch.randn(1, 5, 16), refs)
    assert (far < 1).all() and (far >= 0).all()


def test_normal_similarity_matches_a_brute_force_maximum():
    query, refs = torch.randn(3, 20, 8), torch.randn(4, 30, 8)
    cosine = torch.nn.functional.cosine_similarity(query[:, :, None, :], refs.reshape(1, 1, -1, 8), dim=-1)
    assert torch.allclose(normal_similarity(query, refs), (1 + cosine.amax(-1)) / 2, atol=1e-6)


def test_max_cosine_over_blocks_matches_one_brute_force_product_with_ties_to_the_first_index():
    from benchmark.features.similarity import max_cosine, row_chunk

    rows, bank = torch.randn(150, 6), torch.randn(40_000, 6)
    bank[7_000] = bank[3_000]  # an exact tie: the first index wins, as torch's max over one product
    rows[5] = bank[3_000] * 2
    assert row_chunk(len(rows), len(bank), rows.device) < len(rows)  # several blocks, the last one partial
    values, indices = max_cosine(rows, bank)
    cosine = torch.nn.functional.cosine_similarity(rows[:, None, :], bank[None], dim=-1)
    assert torch.allclose(values, cosine.amax(-1), atol=1e-6)
    assert torch.equal(indices, cosine.argmax(-1)) and indices[5] == 3_000


def test_top_one_percent_picks_10_of_1024_patches():
    scores = torch.zeros(1, 1024)
    scores[0, :10] = 1.0
    scores[0, 10] = 0.5
    assert top_percent_mean(scores).item() == pytest.approx(1.0)  # exactly the 10 largest
    scores[0, 9] = 0.0
    assert top_percent_mean(scores).item() == pytest.approx(0.95)


@pytest.mark.parametrize("patches, percent, count", [(200, 5.0, 10), (300, 2.0, 6), (64, 1.0, 1), (1000, 0.5, 5)])
def test_top_percent_is_floor_of_n_times_percent_over_100_and_at_least_one(patches, percent, count):
    scores = torch.rand(3, patches, generator=torch.Generator().manual_seed(patches))
    expected = np.sort(scores.numpy(), axis=1)[:, ::-1][:, :count].mean(axis=1)
    np.testing.assert_allclose(top_percent_mean(scores, percent).numpy(), expected, rtol=1e-6)


def test_maps_are_resized_to_each_original_size_then_blurred():
    patch = torch.zeros(2, 4, 4)
    patch[:, 1, 1] = 1.0
    squash = Preprocessing(size=8)
    maps, _ = maps_at_original(patch, [(32, 48), (20, 20)], squash, sigma=4.0)
    assert maps[0].shape == (32, 48) and maps[1].shape == (20, 20)
    raw = maps_at_original(patch, [(32, 48)], squash, sigma=0)[0][0]
    assert maps[0].max() < raw.max()  # blurred
    assert np.unravel_index(maps[0].argmax(), maps[0].shape)[0] < 16  # peak stays in the right quadrant


def _one_step_at_a_time(amap: np.ndarray, size, preprocessing: Preprocessing, sigma: float, blur_at: str):
    """The map pipeline as the official codes write it: interpolate, blur with scipy's
    gaussian_filter, paste back: each operation on the whole map, one after the other."""
    from scipy.ndimage import gaussian_filter

    tensor = torch.from_numpy(amap)[None, None]
    if blur_at == "input" or (preprocessing.resize != "squash" and amap.shape != (preprocessing.size,) * 2):
        amap = F.interpolate(tensor, size=(preprocessing.size,) * 2, mode="bilinear", align_corners=False)[0, 0].numpy()
    if blur_at == "input":
        blurred = gaussian_filter(amap, sigma) if sigma else amap
        return preprocessing.to_original(blurred, size), blurred.max()
    back = preprocessing.to_original(amap, size)
    return (gaussian_filter(back, sigma) if sigma else back), np.nan


@pytest.mark.parametrize("blur_at", ["original", "input"])
@pytest.mark.parametrize("preprocessing", [Preprocessing(size=32), Preprocessing(size=32, resize="shorter", resize_to=40),
                                           Preprocessing(size=32, resize="shorter", resize_to=32)], ids=["squash", "crop", "shorter"])
@pytest.mark.parametrize("sigma", [0.0, 4.0])
def test_the_per_axis_map_operators_equal_resize_paste_and_blur_one_after_the_other(blur_at, preprocessing, sigma):
    generator = torch.Generator().manual_seed(7)
    for shape in ((8, 8), (32, 32)):
        maps = torch.rand(3, *shape, generator=generator) * 5 - 1
        sizes = [(48, 48), (50, 70), (91, 40)]
        got, maxima = maps_at_original(maps, sizes, preprocessing, sigma, blur_at)
        for amap, size, mine, maximum in zip(maps.numpy(), sizes, got, maxima):
            want, want_max = _one_step_at_a_time(amap, size, preprocessing, sigma, blur_at)
            assert mine.shape == size and mine.dtype == np.float32
            np.testing.assert_allclose(mine, want, atol=2e-6, rtol=0)  # float rounding on maps spanning 5
            np.testing.assert_allclose(maximum, want_max, atol=2e-6, rtol=0)


def test_squash_keeps_the_whole_image_and_crop_keeps_mask_and_image_aligned():
    array = np.zeros((100, 200, 3), np.uint8)
    array[40:60, 90:110] = 255
    mask = np.zeros((100, 200), bool)
    mask[40:60, 90:110] = True
    for pre in (Preprocessing(size=64), Preprocessing(size=64, resize="shorter", resize_to=80)):
        image = pre.image(Image.fromarray(array))
        m = pre.mask(mask)
        assert image.shape == (3, 64, 64) and m.shape == (64, 64)
        bright = image.mean(0) > image.mean(0).mean()
        assert (bright == (m > 0)).float().mean() > 0.97
    assert Preprocessing(size=64).key != Preprocessing(size=64, resize="shorter", resize_to=80).key


@pytest.mark.parametrize("resize", ["squash", "shorter"])
def test_floor_mask_resize_is_cv2_inter_nearest_and_the_default_is_pil_nearest(resize):
    """The NAGL code resizes masks with cv2.INTER_NEAREST (test) and torch 'nearest' (training);
    `mask_resize: floor` must give exactly those pixels, the default PIL's pixel-centre NEAREST."""
    import cv2
    from PIL import Image

    rng = np.random.default_rng(3)
    mask = rng.random((97, 203)) > 0.6
    geometry = {"resize": "shorter", "resize_to": 120} if resize == "shorter" else {}
    floor = Preprocessing(size=112, mask_resize="floor", **geometry).mask(mask).numpy()
    centre = Preprocessing(size=112, **geometry).mask(mask).numpy()
    width, height = (112, 112) if resize == "squash" else (round(203 * 120 / 97), 120)
    expected_floor = cv2.resize(mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST)
    expected_centre = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((width, height), Image.NEAREST)) > 127
    left, top = (width - 112) // 2, (height - 112) // 2
    np.testing.assert_array_equal(floor, expected_floor[top:top + 112, left:left + 112])
    np.testing.assert_array_equal(centre, expected_centre[top:top + 112, left:left + 112])
    assert (floor != centre).mean() > 0.05
