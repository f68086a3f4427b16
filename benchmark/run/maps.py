"""Maps at the method's resolution -> maps at each image's original size. The harness owns this
step for every method, so that resizing, crop paste-back and blur are done one way everywhere.

  blur at 'original'  the map is resized bilinearly (align_corners=False, as cv2.INTER_LINEAR)
                      straight to the image's geometry (preprocessing.to_original), then blurred
                      with scipy's gaussian_filter(blur_sigma) there: NAGL's dists2map
  blur at 'input'     the map is upsampled bilinearly to the model input, blurred there, then put
                      back on the image: PatchCore's RescaleSegmentor, ResAD, WinCLIP
An adapter that gives no image scores is scored by the maximum of its blurred input-size map
(ResAD's image score).

How it is computed: bilinear resizing, the crop's paste-back and the Gaussian blur are each linear
and act on rows and columns separately, so a chain of them is one matrix per axis, A_rows [H, h]
and A_cols [W, w], and the map becomes A_rows @ map @ A_cols.T: two small products instead of a
blur at the full size (tools/timing/map_pipeline.py). Each matrix is built by passing the
identity through the operations it replaces (torch's interpolate, scipy's gaussian_filter1d with
its 'reflect' border and truncate 4), so it has their exact semantics; the results differ from
applying them one after the other by float rounding only (tests/test_scoring.py). The border a
centre crop cut away gets the map's minimum: an affine term, computed as minimum + A (map -
minimum), since every operator here keeps a constant map constant.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter1d

from benchmark.api import Adapter, ImageBatch, Prediction
from benchmark.api.preprocessing import Preprocessing

BLUR_PLACES = ("original", "input")


def resize_matrix(length_in: int, length_out: int) -> np.ndarray:
    """[out, in]: bilinear resizing along one axis (align_corners=False), as F.interpolate does
    it to float32 maps (its weights computed in float32, as they are for them)."""
    if length_in == length_out:
        return np.eye(length_out)
    identity = torch.eye(length_in, dtype=torch.float32)[:, None]
    return F.interpolate(identity, size=length_out, mode="linear", align_corners=False)[:, 0].T.numpy().astype(np.float64)


def blurred(matrix: np.ndarray, sigma: float) -> np.ndarray:
    """blur @ matrix, where blur is scipy's gaussian_filter1d(sigma) along one axis with its
    default 'reflect' border: each column of `matrix` filtered (no [n, n] blur matrix is built)."""
    return gaussian_filter1d(matrix, sigma, axis=0) if sigma else matrix


def paste_matrix(length_in: int, length_out: int, offset: int) -> np.ndarray:
    """[out, in]: the crop put back at `offset` on the longer axis (zeros elsewhere)."""
    matrix = np.zeros((length_out, length_in))
    matrix[offset + np.arange(length_in), np.arange(length_in)] = 1.0
    return matrix


# one entry per (geometry, map shape, original size): data sets of mixed image sizes build a few
# matrices per size (milliseconds); the largest, [H, input size] per axis, are ~2 MB at 1024 x 448
@lru_cache(maxsize=128)
def _axis_operators(preprocessing: Preprocessing, map_shape: tuple[int, int], original: tuple[int, int], sigma: float,
                    blur_at: str):
    """Float32 (rows, columns) matrices: (map -> model input, or None) and, when blurring at the
    original size, (model input or map -> original, blurred there; None otherwise), and whether
    the crop's border gets the map's minimum. When blurring at the input, the way back to the
    original is preprocessing.to_original: a plain resize and paste, cheaper than a product."""
    size = preprocessing.size
    to_input = None
    if blur_at == "input" or (preprocessing.resize != "squash" and map_shape != (size, size)):
        to_input = [resize_matrix(n, size) for n in map_shape]
        if blur_at == "input":
            to_input = [blurred(m, sigma) for m in to_input]
    to_original, fill = None, False
    if blur_at == "original":
        height, width = original
        if preprocessing.resize == "squash":
            source = (size, size) if to_input is not None else map_shape
            to_original = [resize_matrix(source[0], height), resize_matrix(source[1], width)]
        else:
            new_w, new_h = preprocessing._resized_size(width, height)
            left, top, _, _ = preprocessing._crop_box(new_w, new_h)
            to_original = [resize_matrix(new_h, height) @ paste_matrix(size, new_h, top),
                           resize_matrix(new_w, width) @ paste_matrix(size, new_w, left)]
            fill = (new_h, new_w) != (size, size)
        to_original = [blurred(m, sigma) for m in to_original]

    def as32(pair):  # torch products: numpy's BLAS threads would compete with torch's for the cores
        return None if pair is None else tuple(torch.from_numpy(np.ascontiguousarray(m, dtype=np.float32)) for m in pair)

    return as32(to_input), as32(to_original), fill


def maps_at_original(maps: torch.Tensor | np.ndarray, sizes: list[tuple[int, int]], preprocessing: Preprocessing,
                     sigma: float, blur_at: str = "original", on_device: bool | None = None) -> tuple[list, np.ndarray]:
    """(one float32 map per image at its original (height, width), each map's maximum at the
    model input after blurring there, or NaN when blurred at the original size). The maps are
    numpy arrays, or, with `on_device` (default: when the maps are on a GPU), tensors on the maps'
    device: the pixel metrics then count them there and only the counts leave it."""
    if blur_at not in BLUR_PLACES:
        raise ValueError(f"map_blur_at must be one of {BLUR_PLACES}, not {blur_at!r}")
    maps = torch.as_tensor(maps).detach().float()
    on_device = maps.device.type == "cuda" if on_device is None else on_device
    maps = maps if on_device else maps.cpu()
    out, input_maxima = [], np.full(len(maps), np.nan)
    for index, (amap, size) in enumerate(zip(maps, sizes)):
        to_input, to_original, fill = _on(maps.device, *_axis_operators(preprocessing, tuple(amap.shape), tuple(size),
                                                                         float(sigma or 0.0), blur_at))
        if to_input is not None:
            rows, columns = to_input
            amap = rows @ amap @ columns.T
        if to_original is None:  # blurred at the input: its maximum scores a method that gives no image score
            input_maxima[index] = amap.max().item()
            out.append(preprocessing.to_original(amap if on_device else amap.numpy(), tuple(size)))
            continue
        # the crop's border gets the map's minimum (at the input size): minimum + A (map - minimum)
        low = amap.min() if fill else 0.0
        rows, columns = to_original
        result = rows @ (amap - low) @ columns.T + low
        out.append(result if on_device else result.numpy())
    return out, input_maxima


_DEVICE_COPIES: dict = {}


def _on(device: torch.device, to_input, to_original, fill):
    """The operators on `device` (copied once per device and operator; the CPU ones as they are)."""
    if device.type == "cpu":
        return to_input, to_original, fill

    def moved(pair):
        if pair is None:
            return None
        key = (id(pair), str(device))
        if key not in _DEVICE_COPIES:
            if len(_DEVICE_COPIES) >= 256:  # as many as the CPU operators' cache holds, and then some
                _DEVICE_COPIES.clear()
            _DEVICE_COPIES[key] = (pair, tuple(m.to(device) for m in pair))  # the original kept: its id stays unique
        return _DEVICE_COPIES[key][1]

    return moved(to_input), moved(to_original), fill


def finish(adapter: Adapter, prediction: Prediction, batch: ImageBatch) -> tuple[np.ndarray, list[np.ndarray] | None]:
    """The prediction as the harness scores it: image scores [B] (float64) and maps at the
    original sizes (None for image-level methods)."""
    maps, input_maxima = None, None
    if prediction.anomaly_maps is not None:
        maps, input_maxima = maps_at_original(prediction.anomaly_maps, batch.original_sizes, adapter.preprocessing(),
                                              float(adapter.config.get("blur_sigma") or 0.0), adapter.map_blur_at)
    scores = prediction.image_scores
    if scores is None:
        if input_maxima is None or np.isnan(input_maxima).any():
            raise ValueError(f"{adapter.name}: no image scores and no input-space maps to take them from")
        scores = input_maxima
    return np.asarray(torch.as_tensor(scores).detach().cpu(), dtype=np.float64), maps
