import numpy as np
import pytest
import torch
from PIL import Image

from benchmark.maps import to_image_maps
from benchmark.preprocessing import Preprocessing
from nagl.similarity import normal_similarity, top_percent_mean


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


def test_top_one_percent_picks_10_of_1024_patches():
    scores = torch.zeros(1, 1024)
    scores[0, :10] = 1.0
    scores[0, 10] = 0.5
    assert top_percent_mean(scores).item() == pytest.approx(1.0)  # exactly the 10 largest
    scores[0, 9] = 0.0
    assert top_percent_mean(scores).item() == pytest.approx(0.95)


def test_maps_are_resized_to_each_original_size_then_blurred():
    patch = torch.zeros(2, 4, 4)
    patch[:, 1, 1] = 1.0
    maps = to_image_maps(patch, [(32, 48), (20, 20)], sigma=4.0)
    assert maps[0].shape == (32, 48) and maps[1].shape == (20, 20)
    raw = to_image_maps(patch, [(32, 48)], sigma=0)[0]
    assert maps[0].max() < raw.max()  # blurred
    assert np.unravel_index(maps[0].argmax(), maps[0].shape)[0] < 16  # peak stays in the right quadrant


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
