"""Patch-grid anomaly maps -> maps at each image's original size (bilinear, then Gaussian blur)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter


def to_image_maps(patch_maps: torch.Tensor, sizes: list[tuple[int, int]], sigma: float = 4.0) -> list[np.ndarray]:
    """patch_maps: [B, h, w]. Bilinear resize (align_corners=False, as cv2.INTER_LINEAR) to each
    (height, width), then scipy's gaussian_filter with `sigma` at that resolution (NAGL, PatchCore)."""
    out = []
    for amap, size in zip(patch_maps.detach().float().cpu(), sizes):
        resized = F.interpolate(amap[None, None], size=tuple(size), mode="bilinear", align_corners=False)[0, 0]
        array = resized.numpy()
        out.append(gaussian_filter(array, sigma=sigma) if sigma > 0 else array)
    return out
