"""BraTS (2021-style NIfTI volumes) -> 2-D slices in MVTec layout.

Input: <src>/<id>/<id>_<modality>.nii.gz and <id>_seg.nii.gz per subject.
Output: <out>/brain/{train/good, test/good, test/lesion, ground_truth/lesion/<stem>_mask.png}
and <out>/PREPARED.json with the rules used.

Rules (defaults follow the one published recipe; each is an option):
  modality       flair (t1, t1ce, t2)
  slice          83: one axial slice (index along the volume's third axis, of 155), or 'all':
                 every axial slice whose brain (non-zero voxels) covers >= min_brain_fraction
  intensity      min-max scaled per slice to 0-255 (uint8 PNG, the array's own orientation)
  lesion         a slice is 'lesion' when its tumour mask (seg > 0) has >= lesion_min_pixels pixels;
                 slices with some but fewer tumour pixels are left out as ambiguous
  split          lesion slices are test images; a normal slice goes to test/good when
                 int(sha256(subject id)[:8], 16) % 1000 < 1000 * normal_test_fraction (0.5), else to
                 train/good: by subject, so no subject is on both sides of the normal split
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from benchmark.atomic import staged_directory
from benchmark.errors import GadbenchError

MODALITIES = ("flair", "t1", "t1ce", "t2")


@dataclass
class BratsRules:
    modality: str = "flair"
    slice: str = "83"
    min_brain_fraction: float = 0.1
    lesion_min_pixels: int = 1
    normal_test_fraction: float = 0.5

    def __post_init__(self):
        if self.modality not in MODALITIES:
            raise GadbenchError(f"--modality must be one of {MODALITIES}, not {self.modality!r}")
        if self.slice != "all" and not str(self.slice).isdigit():
            raise GadbenchError(f"--slice must be an index or 'all', not {self.slice!r}")


def _subject_in_test(subject: str, fraction: float) -> bool:
    return int(hashlib.sha256(subject.encode()).hexdigest()[:8], 16) % 1000 < round(1000 * fraction)


def _to_uint8(image: np.ndarray) -> np.ndarray:
    low, high = float(image.min()), float(image.max())
    if high <= low:
        return np.zeros(image.shape, np.uint8)
    return np.round((image - low) / (high - low) * 255).astype(np.uint8)


def _volume(path: Path) -> np.ndarray:
    import nibabel

    try:
        return np.asarray(nibabel.load(str(path)).get_fdata(dtype=np.float32))
    except Exception as error:  # nibabel raises several types for broken files
        raise GadbenchError(f"{path}: not a readable NIfTI volume ({type(error).__name__}); re-download it") from None


def prepare_brats(src: Path, out: Path, rules: BratsRules = BratsRules()) -> dict:
    src, out = Path(src), Path(out)
    subjects = sorted(d for d in src.iterdir() if d.is_dir()) if src.is_dir() else []
    if not subjects:
        raise GadbenchError(f"{src}: no subject folders; expected <src>/<id>/<id>_{rules.modality}.nii.gz")
    counts = {"train_good": 0, "test_good": 0, "test_lesion": 0, "ambiguous_left_out": 0, "subjects": len(subjects)}
    with staged_directory(out) as staging:
        root = staging / "brain"
        for subject_dir in subjects:
            subject = subject_dir.name
            image_path = subject_dir / f"{subject}_{rules.modality}.nii.gz"
            seg_path = subject_dir / f"{subject}_seg.nii.gz"
            for needed in (image_path, seg_path):
                if not needed.is_file():
                    raise GadbenchError(f"{needed}: missing; every subject needs its {rules.modality} volume and its segmentation")
            volume, seg = _volume(image_path), _volume(seg_path)
            if volume.shape != seg.shape:
                raise GadbenchError(f"{seg_path}: shape {seg.shape} differs from the image's {volume.shape}")
            if rules.slice == "all":
                indices = [i for i in range(volume.shape[2]) if (volume[:, :, i] != 0).mean() >= rules.min_brain_fraction]
            else:
                index = int(rules.slice)
                if index >= volume.shape[2]:
                    raise GadbenchError(f"{image_path}: slice {index} out of range (the volume has {volume.shape[2]} axial slices)")
                indices = [index]
            for index in indices:
                lesion = seg[:, :, index] > 0
                stem = f"{subject}_s{index:03d}"
                image = _to_uint8(volume[:, :, index])
                if lesion.sum() >= rules.lesion_min_pixels:
                    target = root / "test" / "lesion" / f"{stem}.png"
                    mask = root / "ground_truth" / "lesion" / f"{stem}_mask.png"
                    mask.parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(lesion.astype(np.uint8) * 255).save(mask)
                    counts["test_lesion"] += 1
                elif lesion.any():
                    counts["ambiguous_left_out"] += 1
                    continue
                else:
                    split = "test" if _subject_in_test(subject, rules.normal_test_fraction) else "train"
                    target = root / split / "good" / f"{stem}.png"
                    counts[f"{split}_good"] += 1
                target.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(image).save(target)
        record = {"source": str(src.resolve()), "rules": asdict(rules), "counts": counts,
                  "rules_text": __doc__.split("Rules", 1)[1].strip()}
        (staging / "PREPARED.json").write_text(json.dumps(record, indent=1))
    return counts
