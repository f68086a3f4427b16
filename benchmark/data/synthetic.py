"""Deterministic synthetic anomaly data in MVTec layout, for tests and the embedded default run.

Two visually distinct domains, so that 'train on one, test on the other' is a real domain shift:
  objects:  rendered parts on a plain background (washer, tablet, hex_nut)
  textures: full-frame surfaces (weave, wood, terrazzo)
Defect types: scratch, hole, stain in both domains, plus missing_part for objects. Every defect is
painted only inside its mask (the mask is drawn first, then the pixels under it are changed), so
masks are exactly aligned with what changed. Every image comes from its own RNG stream seeded by
(seed, domain, category, split, defect, index): the same seed writes byte-identical files.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from benchmark.api.atomic import staged_directory
from benchmark.data.mvtec import read_mvtec
from benchmark.errors import GadbenchError

DOMAINS = {
    "objects": {"categories": ["washer", "tablet", "hex_nut"], "defects": ["scratch", "hole", "stain", "missing_part"]},
    "textures": {"categories": ["weave", "wood", "terrazzo"], "defects": ["scratch", "hole", "stain"]},
}
DEFAULT_COUNTS = {"train_good": 16, "test_good": 10, "test_per_defect": 5}
GENERATOR_VERSION = 1  # bump when the drawing changes, so stale folders are regenerated


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    return ys, xs


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Value noise in [0, 1]: a coarse random grid upsampled bicubically."""
    coarse = (rng.random((cells, cells)) * 255).astype(np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((size, size), Image.BICUBIC), dtype=np.float32) / 255.0


# ----------------------------------------------------------------------------- normal images
def _object(category: str, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """An object image [H, W, 3] float in [0, 1] and the object's own footprint (bool)."""
    ys, xs = _grid(size)
    background = np.array([0.12, 0.13, 0.15]) + rng.normal(0, 0.01, 3)
    image = np.ones((size, size, 3), np.float32) * background
    image += (_smooth_noise(rng, size, 6)[..., None] - 0.5) * 0.04
    cy, cx = size / 2 + rng.normal(0, size * 0.02, 2)
    angle = rng.uniform(0, np.pi)
    shade = 1.0 + rng.normal(0, 0.03)
    dy, dx = ys - cy, xs - cx
    radius = np.hypot(dy, dx)
    if category == "washer":
        outer, inner = size * 0.36, size * 0.15
        footprint = (radius < outer) & (radius > inner)
        colour = np.array([0.72, 0.72, 0.75]) * shade
        light = 0.85 + 0.15 * np.cos(np.arctan2(dy, dx) - angle)
        body = colour * light[..., None]
    elif category == "tablet":
        u = dx * np.cos(angle) + dy * np.sin(angle)
        v = -dx * np.sin(angle) + dy * np.cos(angle)
        a, b = size * 0.34, size * 0.18
        footprint = (u / a) ** 2 + (v / b) ** 2 < 1
        colour = np.array([0.93, 0.55, 0.22]) * shade
        body = colour * (1.0 - 0.25 * ((u / a) ** 2 + (v / b) ** 2))[..., None]
        groove = np.abs(u) < size * 0.008
        body = np.where(groove[..., None], body * 0.7, body)
    elif category == "hex_nut":
        theta = np.arctan2(dy, dx) - angle
        sector = np.mod(theta, np.pi / 3) - np.pi / 6
        hex_radius = size * 0.34 * np.cos(np.pi / 6) / np.cos(sector)
        footprint = (radius < hex_radius) & (radius > size * 0.12)
        colour = np.array([0.55, 0.58, 0.42]) * shade
        facet = 0.8 + 0.2 * np.cos(np.round((theta) / (np.pi / 3)) * np.pi / 3)
        body = colour * facet[..., None]
        thread = (radius < size * 0.15) & (np.sin(radius * 1.6) > 0.4) & footprint
        body = np.where(thread[..., None], body * 0.75, body)
    else:
        raise ValueError(category)
    image = np.where(footprint[..., None], body, image)
    image += rng.normal(0, 0.01, image.shape)
    return np.clip(image, 0, 1).astype(np.float32), footprint


def _texture(category: str, rng: np.random.Generator, size: int) -> np.ndarray:
    ys, xs = _grid(size)
    phase = rng.uniform(0, 2 * np.pi, 2)
    if category == "weave":
        period = 14 + rng.normal(0, 0.3)
        warp = 0.5 + 0.5 * np.sin(2 * np.pi * xs / period + phase[0])
        weft = 0.5 + 0.5 * np.sin(2 * np.pi * ys / period + phase[1])
        checker = (np.floor(xs / period) + np.floor(ys / period)) % 2
        value = np.where(checker > 0, warp, weft) * 0.5 + 0.3
        base = np.array([0.35, 0.45, 0.75])
        image = value[..., None] * base * 1.4
    elif category == "wood":
        warp = _smooth_noise(rng, size, 5) * 18
        rings = 0.5 + 0.5 * np.sin(2 * np.pi * (ys + warp) / (22 + rng.normal(0, 0.5)) + phase[0])
        grain = _smooth_noise(rng, size, 48) * 0.15
        value = 0.55 + 0.25 * rings + grain
        image = value[..., None] * np.array([0.78, 0.55, 0.32])
    elif category == "terrazzo":
        image = np.ones((size, size, 3), np.float32) * np.array([0.82, 0.80, 0.76])
        image += (_smooth_noise(rng, size, 24)[..., None] - 0.5) * 0.06
        for _ in range(140):
            cy, cx = rng.uniform(0, size, 2)
            r = rng.uniform(1.5, 5.0)
            chip = (ys - cy) ** 2 + (xs - cx) ** 2 < r * r
            tone = rng.choice([0.25, 0.45, 0.6]) + rng.normal(0, 0.03)
            image[chip] = np.array([tone, tone * 0.95, tone * 0.9])
    else:
        raise ValueError(category)
    image = image + rng.normal(0, 0.012, image.shape)
    return np.clip(image, 0, 1).astype(np.float32)


# ----------------------------------------------------------------------------- defects
def _draw_mask(size: int, draw) -> np.ndarray:
    canvas = Image.new("L", (size, size), 0)
    draw(ImageDraw.Draw(canvas))
    return np.asarray(canvas) > 127


def _defect_mask(defect: str, rng: np.random.Generator, size: int, region: np.ndarray) -> np.ndarray:
    """A defect footprint whose centre lies inside `region` (the object, or the whole frame)."""
    candidates = np.argwhere(region)
    for _ in range(50):
        cy, cx = candidates[rng.integers(len(candidates))]
        if defect == "scratch":
            length = rng.uniform(0.15, 0.3) * size
            angle = rng.uniform(0, np.pi)
            points = [(cx + t * length * np.cos(angle) + rng.normal(0, 1.5), cy + t * length * np.sin(angle) + rng.normal(0, 1.5))
                      for t in np.linspace(-0.5, 0.5, 6)]
            width = int(rng.integers(2, 4))
            mask = _draw_mask(size, lambda d: d.line(points, fill=255, width=width))
        elif defect == "hole":
            r = rng.uniform(0.025, 0.05) * size
            mask = _draw_mask(size, lambda d: d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255))
        elif defect == "stain":
            n = 9
            angles = np.sort(rng.uniform(0, 2 * np.pi, n))
            radii = rng.uniform(0.04, 0.09, n) * size
            polygon = [(cx + r * np.cos(a), cy + r * np.sin(a)) for a, r in zip(angles, radii)]
            mask = _draw_mask(size, lambda d: d.polygon(polygon, fill=255))
        elif defect == "missing_part":
            r = rng.uniform(0.1, 0.16) * size
            mask = _draw_mask(size, lambda d: d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255))
        else:
            raise ValueError(defect)
        mask &= region
        if mask.sum() >= 12:
            return mask
    raise RuntimeError(f"could not place a {defect} defect")  # pragma: no cover - region is never tiny


def _paint_defect(defect: str, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, background: np.ndarray | None) -> np.ndarray:
    out = image.copy()
    if defect == "scratch":
        tone = rng.choice([0.08, 0.95])
        out[mask] = out[mask] * 0.3 + tone * 0.7
    elif defect == "hole":
        out[mask] = np.array([0.03, 0.03, 0.03]) + rng.normal(0, 0.01, (mask.sum(), 3))
    elif defect == "stain":
        colour = np.array([0.45, 0.3, 0.12]) if rng.random() < 0.5 else np.array([0.15, 0.35, 0.2])
        out[mask] = out[mask] * 0.45 + colour * 0.55
    elif defect == "missing_part":
        out[mask] = background[mask]
    return np.clip(out, 0, 1)


def _render(domain: str, category: str, defect: str | None, rng: np.random.Generator, size: int):
    if domain == "objects":
        image, footprint = _object(category, rng, size)
        if defect is None:
            return image, None
        if defect == "missing_part":
            # the bite is centred on the object's rim so that it removes a visible chunk
            rim = footprint ^ _erode(footprint, 4)
            mask = _defect_mask(defect, rng, size, rim) & footprint
            background = np.ones_like(image) * image[2, 2]
            return _paint_defect(defect, image, mask, rng, background), mask
        mask = _defect_mask(defect, rng, size, _erode(footprint, 6)) & footprint
        return _paint_defect(defect, image, mask, rng, None), mask
    image = _texture(category, rng, size)
    if defect is None:
        return image, None
    mask = _defect_mask(defect, rng, size, np.ones((size, size), bool))
    return _paint_defect(defect, image, mask, rng, None), mask


def _erode(mask: np.ndarray, steps: int) -> np.ndarray:
    from scipy.ndimage import binary_erosion

    return binary_erosion(mask, iterations=steps)


# ----------------------------------------------------------------------------- writing
def _stream(seed: int, *parts: str | int) -> np.random.Generator:
    words = [seed] + [int.from_bytes(str(p).encode(), "little") % (2**32) for p in parts]
    return np.random.default_rng(words)


def _save_png(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if array.dtype == bool:
        Image.fromarray(array.astype(np.uint8) * 255).save(path)
    else:
        Image.fromarray((array * 255).round().astype(np.uint8)).save(path)


def render_sample(domain: str, category: str, defect: str, split: str, index: int, seed: int = 0, size: int = 256):
    """One image (float [H, W, 3]) and its mask (bool, or None for 'good'), as generate() writes it."""
    rng = _stream(seed, domain, category, split, defect, index)
    return _render(domain, category, None if defect == "good" else defect, rng, size)


def generate(out: Path, domain: str, seed: int = 0, size: int = 256, counts: dict | None = None) -> Path:
    """Write one domain in MVTec layout to `out` (atomically: a temp folder, then a rename)."""
    if domain not in DOMAINS:
        raise GadbenchError(f"synthetic domain {domain!r} unknown; choose one of {sorted(DOMAINS)}")
    counts = {**DEFAULT_COUNTS, **(counts or {})}
    out = Path(out)
    with staged_directory(out) as staging:
        spec = DOMAINS[domain]
        for category in spec["categories"]:
            root = staging / category
            plan = [("train", "good", counts["train_good"]), ("test", "good", counts["test_good"])]
            plan += [("test", defect, counts["test_per_defect"]) for defect in spec["defects"]]
            for split, defect, n in plan:
                for index in range(n):
                    image, mask = render_sample(domain, category, defect, split, index, seed, size)
                    _save_png(image, root / split / defect / f"{index:03d}.png")
                    if mask is not None:
                        _save_png(mask, root / "ground_truth" / defect / f"{index:03d}_mask.png")
        stamp = {"generator_version": GENERATOR_VERSION, "domain": domain, "seed": seed, "size": size, "counts": counts}
        (staging / "SYNTHETIC.json").write_text(json.dumps(stamp, indent=1, sort_keys=True))
    return out


def is_current(out: Path, domain: str, seed: int, size: int, counts: dict | None) -> bool:
    stamp_path = Path(out) / "SYNTHETIC.json"
    if not stamp_path.is_file():
        return False
    stamp = json.loads(stamp_path.read_text())
    want = {"generator_version": GENERATOR_VERSION, "domain": domain, "seed": seed, "size": size,
            "counts": {**DEFAULT_COUNTS, **(counts or {})}}
    return stamp == want


def read_synthetic(root: Path, domain: str, seed: int = 0, size: int = 256, counts: dict | None = None) -> pd.DataFrame:
    """Generate the domain under `root` on first use (or when its stamp is stale), then read it."""
    if not is_current(root, domain, seed, size, counts):
        generate(root, domain, seed, size, counts)
    return read_mvtec(root)
