"""Image and mask preprocessing as a value: methods declare it, the runner applies it."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import numpy as np
import torch
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_INTERPOLATION = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}


@dataclass(frozen=True)
class Preprocessing:
    """size: model input (square). resize: 'squash' (to size x size, no crop, as NAGL) or
    'shorter' (shorter side to resize_to, then centre crop of size, as PatchCore). mask_resize:
    'pixel-centre' (PIL's NEAREST samples each output pixel's centre) or 'floor' (output pixel i
    takes input pixel floor(i * in / out): cv2's INTER_NEAREST and torch's 'nearest', what the
    NAGL code uses); it moves mask edges by up to one pixel and never touches the images."""

    size: int
    resize: str = "squash"
    resize_to: int | None = None
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    mask_resize: str = "pixel-centre"

    def __post_init__(self):
        if self.mask_resize not in ("pixel-centre", "floor"):
            raise ValueError(f"preprocessing.mask_resize must be 'pixel-centre' or 'floor', not {self.mask_resize!r}")
        if self.resize not in ("squash", "shorter"):
            raise ValueError(f"preprocessing.resize must be 'squash' or 'shorter', not {self.resize!r}")
        if self.resize == "shorter" and (self.resize_to or 0) < self.size:
            raise ValueError("preprocessing.resize_to must be >= size for resize='shorter'")

    def describe(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @property
    def key(self) -> str:
        """A short stable id of the images this gives, used in cache keys (mask_resize is left out:
        it changes no image, so methods that differ only there share cached features)."""
        images = {k: v for k, v in self.describe().items() if k != "mask_resize"}
        blob = json.dumps(images, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    def _resized_size(self, width: int, height: int) -> tuple[int, int]:
        if self.resize == "squash":
            return self.size, self.size
        scale = self.resize_to / min(width, height)
        return max(self.size, round(width * scale)), max(self.size, round(height * scale))

    def _crop_box(self, width: int, height: int) -> tuple[int, int, int, int]:
        left, top = (width - self.size) // 2, (height - self.size) // 2
        return left, top, left + self.size, top + self.size

    def _geometry(self, pil: Image.Image, interpolation) -> Image.Image:
        new_w, new_h = self._resized_size(*pil.size)
        return pil.resize((new_w, new_h), interpolation).crop(self._crop_box(new_w, new_h))

    def image(self, pil: Image.Image) -> torch.Tensor:
        """RGB PIL image -> normalised [3, size, size] float tensor."""
        pil = self._geometry(pil.convert("RGB"), _INTERPOLATION[self.interpolation])
        array = torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255.0).permute(2, 0, 1)
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return (array - mean) / std

    def to_original(self, input_map, original_size: tuple[int, int]):
        """A [size, size] map in model space -> the original (height, width), bilinearly; a numpy
        array gives a float32 array, a tensor a tensor on its device (maps finished on a GPU).

        'squash' is a plain resize. For 'shorter' the map is pasted back where the centre crop
        came from; the border the crop cut away was never seen by the method and gets the map's
        minimum (no evidence of an anomaly), so every method is scored on the same pixels."""
        as_numpy = not isinstance(input_map, torch.Tensor)
        amap = torch.from_numpy(np.ascontiguousarray(input_map, dtype=np.float32)) if as_numpy else input_map.float()
        height, width = original_size
        if self.resize != "squash":
            new_w, new_h = self._resized_size(width, height)
            left, top, _, _ = self._crop_box(new_w, new_h)
            canvas = amap.new_full((new_h, new_w), float(amap.min()))
            canvas[top:top + self.size, left:left + self.size] = amap
            amap = canvas
        if tuple(amap.shape) != (height, width):  # bilinear, align_corners=False
            amap = torch.nn.functional.interpolate(amap[None, None], size=(height, width), mode="bilinear",
                                                   align_corners=False)[0, 0]
        return amap.numpy() if as_numpy else amap

    def mask(self, mask: np.ndarray) -> torch.Tensor:
        """Boolean mask at the original size -> {0, 1} float [size, size], same geometry, nearest."""
        if self.mask_resize == "floor":
            height, width = mask.shape
            new_w, new_h = self._resized_size(width, height)
            rows = np.minimum(np.floor(np.arange(new_h) * (height / new_h)).astype(int), height - 1)
            cols = np.minimum(np.floor(np.arange(new_w) * (width / new_w)).astype(int), width - 1)
            left, top, right, bottom = self._crop_box(new_w, new_h)
            return torch.from_numpy(mask[np.ix_(rows, cols)][top:bottom, left:right].astype(np.float32))
        pil = self._geometry(Image.fromarray(mask.astype(np.uint8) * 255), Image.NEAREST)
        return torch.from_numpy((np.asarray(pil) > 127).astype(np.float32))

