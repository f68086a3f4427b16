"""Reading images and masks from disk, with the checks every reader and runner needs."""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache

import numpy as np
from PIL import Image, UnidentifiedImageError

from benchmark.errors import GadbenchError


@lru_cache(maxsize=65536)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: str) -> str:
    """sha256 of a file's bytes, cached per (path, size, mtime) for the life of the process."""
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        raise GadbenchError(f"{path}: file not found; check the data root or re-run `gadbench refs make`") from None
    return _sha256_cached(path, stat.st_size, stat.st_mtime_ns)


def load_image(path: str) -> Image.Image:
    """Open an image fully (so truncated files fail here, with their name)."""
    try:
        with Image.open(path) as pil:
            pil.load()
            return pil.convert("RGB")
    except FileNotFoundError:
        raise GadbenchError(f"{path}: image not found; check the data root") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise GadbenchError(f"{path}: not a readable image ({error}); re-download or remove the file") from None


def image_size(path: str) -> tuple[int, int]:
    """(height, width) without decoding the pixels."""
    try:
        with Image.open(path) as pil:
            width, height = pil.size
    except (FileNotFoundError, UnidentifiedImageError, OSError) as error:
        raise GadbenchError(f"{path}: not a readable image ({error}); re-download or remove the file") from None
    return height, width


def load_mask(path: str | None, size: tuple[int, int], threshold: int = 127) -> np.ndarray:
    """Boolean mask (pixel > threshold) of the given (height, width); None means an all-normal image."""
    if path is None or (isinstance(path, float) and np.isnan(path)):
        return np.zeros(size, dtype=bool)
    try:
        with Image.open(path) as pil:
            array = np.asarray(pil.convert("L"))
    except FileNotFoundError:
        raise GadbenchError(f"{path}: mask not found; every defective test image needs its mask") from None
    except (UnidentifiedImageError, OSError) as error:
        raise GadbenchError(f"{path}: not a readable mask ({error}); re-download or remove it") from None
    if array.shape != tuple(size):
        raise GadbenchError(
            f"{path}: mask is {array.shape[1]}x{array.shape[0]} but its image is {size[1]}x{size[0]};"
            " masks must match their images pixel for pixel"
        )
    return array > threshold
