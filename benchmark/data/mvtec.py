"""MVTec AD layout (also MPDD, BTAD and VisA re-laid as MVTec):
<category>/train/good, <category>/test/<type>, <category>/ground_truth/<type>/<stem>_mask.png.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from benchmark.data.samples import image_files, make_table
from benchmark.errors import GadbenchError

NORMAL_TYPES = {"good", "ok"}  # BTAD calls its normal folders 'ok' and its defects 'ko'
MASK_NAME_PATTERNS = ("{stem}_mask.png", "{stem}.png", "{stem}.bmp")


def find_mask(ground_truth: Path, defect: str, stem: str) -> Path | None:
    for pattern in MASK_NAME_PATTERNS:
        candidate = ground_truth / defect / pattern.format(stem=stem)
        if candidate.is_file():
            return candidate
    return None


def read_category(category_dir: Path, require_masks: bool = True) -> list[dict]:
    rows = []
    category = category_dir.name
    for split in ("train", "test"):
        split_dir = category_dir / split
        if not split_dir.is_dir():
            continue
        for defect_dir in sorted(d for d in split_dir.iterdir() if d.is_dir()):
            defect = defect_dir.name
            is_normal = defect in NORMAL_TYPES
            if split == "train" and not is_normal:
                continue  # training splits hold normal images only
            for image in image_files(defect_dir):
                mask = None
                if not is_normal:
                    mask = find_mask(category_dir / "ground_truth", defect, image.stem)
                    if mask is None and require_masks:
                        raise GadbenchError(
                            f"{image}: defective test image without a mask (looked for "
                            f"ground_truth/{defect}/{image.stem}_mask.png); restore the mask or remove the image"
                        )
                rows.append(
                    {
                        "path": str(image.resolve()),
                        "category": category,
                        "split": split,
                        "label": 0 if is_normal else 1,
                        "defect": "good" if is_normal else defect,
                        "mask": str(mask.resolve()) if mask else None,
                    }
                )
    return rows


def read_mvtec(root: Path, categories: list[str] | None = None, require_masks: bool = True) -> pd.DataFrame:
    root = Path(root)
    if not root.is_dir():
        raise GadbenchError(f"{root}: data folder not found; set DATA_ROOT or --data-root")
    found = sorted(d for d in root.iterdir() if d.is_dir() and ((d / "train").is_dir() or (d / "test").is_dir()))
    if categories:
        names = {d.name for d in found}
        missing = [c for c in categories if c not in names]
        if missing:
            raise GadbenchError(f"{root}: categories {missing} not found (have {sorted(names)})")
        found = [d for d in found if d.name in categories]
    rows = []
    for category_dir in found:
        rows.extend(read_category(category_dir, require_masks))
    return make_table(rows)
