"""Maps at the method's resolution -> maps at each image's original size. The harness owns this
step for every method, so that resizing, crop paste-back and blur are done one way everywhere.

  blur at 'original'  the map is resized bilinearly (align_corners=False, as cv2.INTER_LINEAR)
                      straight to the image's geometry (preprocessing.to_original), then blurred
                      with scipy's gaussian_filter(blur_sigma) there: NAGL's dists2map
  blur at 'input'     the map is upsampled bilinearly to the model input, blurred there, then put
                      back on the image: PatchCore's RescaleSegmentor, ResAD, WinCLIP
An adapter that gives no image scores is scored by the maximum of its blurred input-size map
(ResAD's image score)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from benchmark.adapter import Adapter, ImageBatch, Prediction
from benchmark.data.preprocessing import Preprocessing

BLUR_PLACES = ("original", "input")


def _blur(array: np.ndarray, sigma: float) -> np.ndarray:
    return gaussian_filter(array, sigma=sigma) if sigma else array


def maps_at_original(maps: torch.Tensor | np.ndarray, sizes: list[tuple[int, int]], preprocessing: Preprocessing,
                     sigma: float, blur_at: str = "original") -> tuple[list[np.ndarray], np.ndarray]:
    """(one float32 map per image at its original (height, width), each map's maximum at the
    model input after blurring there, or NaN when blurred at the original size)."""
    if blur_at not in BLUR_PLACES:
        raise ValueError(f"map_blur_at must be one of {BLUR_PLACES}, not {blur_at!r}")
    maps = torch.as_tensor(maps).detach().float().cpu()
    if blur_at == "original":
        if preprocessing.resize != "squash" and maps.shape[-2:] != (preprocessing.size,) * 2:
            maps = F.interpolate(maps[:, None], size=(preprocessing.size,) * 2, mode="bilinear", align_corners=False)[:, 0]
        out = [_blur(preprocessing.to_original(m, size), sigma) for m, size in zip(maps.numpy(), sizes)]
        return out, np.full(len(out), np.nan)
    if maps.shape[-2:] != (preprocessing.size,) * 2:
        maps = F.interpolate(maps[:, None], size=(preprocessing.size,) * 2, mode="bilinear", align_corners=False)[:, 0]
    blurred = [_blur(m, sigma) for m in maps.numpy()]
    return [preprocessing.to_original(m, size) for m, size in zip(blurred, sizes)], np.array([m.max() for m in blurred])


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
