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


def test_row_chunk_takes_the_documented_budget_of_values_and_at_least_one_row():
    """row_chunk's contract (its docstring): 2^20 values a block on the CPU, 2^28 on a GPU, at
    least one row, never more rows than there are. torch.device('cuda') needs no GPU to exist."""
    from benchmark.features.similarity import row_chunk

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert row_chunk(10**7, 1024, cpu) == 2**20 // 1024
    assert row_chunk(10**9, 1024, cuda) == 2**28 // 1024
    assert row_chunk(10**7, 1, cpu) == 2**20 and row_chunk(10**9, 1, cuda) == 2**28
    assert row_chunk(7, 2**21, cpu) == 1 and row_chunk(7, 2**29, cuda) == 1  # one row, even past the budget
    assert row_chunk(5, 10, cpu) == 5 and row_chunk(5, 0, cpu) == 5


def test_operators_for_another_device_are_copied_once_each_and_the_copies_are_bounded():
    """The meta device stands in for a GPU: maps on it keep their operators there; each operator
    pair is copied once per device, the CPU ones are used as they are, and the copies are
    dropped when 256 are held."""
    from benchmark.run import maps as maps_module

    pair = (torch.rand(4, 2), torch.rand(5, 2))
    cpu = maps_module._on(torch.device("cpu"), pair, None, True)
    assert cpu[0] is pair and cpu[1] is None and cpu[2] is True
    maps_module._DEVICE_COPIES.clear()
    to_input, to_original, fill = maps_module._on(torch.device("meta"), pair, pair, False)
    assert to_input is to_original and fill is False  # one copy for one pair
    assert [m.device.type for m in to_input] == ["meta", "meta"] and [m.shape for m in to_input] == [(4, 2), (5, 2)]
    again = maps_module._on(torch.device("meta"), pair, None, False)
    assert again[0] is to_input and again[1] is None and len(maps_module._DEVICE_COPIES) == 1
    kept = [(torch.zeros(1, 1),) for _ in range(255)]  # alive: their ids stay distinct
    for other in kept:
        maps_module._on(torch.device("meta"), other, None, False)
    assert len(maps_module._DEVICE_COPIES) == 256
    maps_module._on(torch.device("meta"), (torch.zeros(1, 1),), None, False)
    assert len(maps_module._DEVICE_COPIES) == 1  # cleared at 256, then the new one
    maps_module._DEVICE_COPIES.clear()


def test_maps_kept_on_their_device_come_back_there_at_each_original_size():
    crop = Preprocessing(size=8, resize="shorter", resize_to=10)
    maps = torch.rand(2, 4, 4).to("meta")
    out, maxima = maps_at_original(maps, [(20, 30), (12, 12)], crop, 2.0, on_device=True)
    assert [m.device.type for m in out] == ["meta", "meta"] and [tuple(m.shape) for m in out] == [(20, 30), (12, 12)]
    assert np.isnan(maxima).all()


def _finish_inputs(image_scores, blur_at, maps=None):
    from types import SimpleNamespace

    squash = Preprocessing(size=16)
    adapter = SimpleNamespace(name="fake", config={"blur_sigma": 2.0}, map_blur_at=blur_at, preprocessing=lambda: squash)
    prediction = SimpleNamespace(image_scores=image_scores, anomaly_maps=maps)
    return adapter, prediction, SimpleNamespace(original_sizes=[(24, 24), (40, 20)])


def test_finish_scores_a_method_without_image_scores_by_its_blurred_input_map_maximum():
    """ResAD's image score: the maximum of the map upsampled to the input and blurred there
    (scipy's gaussian_filter, reflect border), computed here one operation at a time."""
    from scipy.ndimage import gaussian_filter

    from benchmark.run.maps import finish

    maps = torch.rand(2, 4, 4, generator=torch.Generator().manual_seed(3))
    scores, out = finish(*_finish_inputs(None, "input", maps))
    upsampled = F.interpolate(maps[:, None], size=(16, 16), mode="bilinear", align_corners=False)[:, 0].numpy()
    want = [gaussian_filter(m, 2.0).max() for m in upsampled]
    assert scores.dtype == np.float64 and [m.shape for m in out] == [(24, 24), (40, 20)]
    np.testing.assert_allclose(scores, want, rtol=1e-5)
    with pytest.raises(ValueError, match="^fake: no image scores and no input-space maps"):
        finish(*_finish_inputs(None, "original", maps))  # blurred at the original size: no input maximum
    with pytest.raises(ValueError, match="^fake: no image scores"):
        finish(*_finish_inputs(None, "input"))  # neither scores nor maps


def test_finish_keeps_given_image_scores_as_float64_and_no_maps_for_an_image_level_method():
    from benchmark.run.maps import finish

    given = torch.tensor([0.1, 0.7], dtype=torch.float32)
    scores, out = finish(*_finish_inputs(given, "input"))
    assert out is None and scores.dtype == np.float64
    np.testing.assert_array_equal(scores, given.double().numpy())
    scores, out = finish(*_finish_inputs(given, "input", torch.zeros(2, 4, 4)))
    np.testing.assert_array_equal(scores, given.double().numpy())  # not the maps' maxima (0)
