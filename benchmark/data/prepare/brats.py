"""BraTS NIfTI volumes (any release) -> 2-D slices in MVTec layout.

Input: one folder per subject, in either naming, detected per subject:
  2021            <id>/<id>_<modality>.nii.gz and <id>_seg.nii.gz (flair, t1, t1ce, t2)
  2023 and later  <id>/<id>-<modality>.nii.gz and <id>-seg.nii.gz (t2f, t1n, t1c, t2w), any cohort
                  (BraTS-GLI-..., -MEN-, -PED-, -MET-, -SSA-)
each `.nii.gz` or `.nii`. The modalities are the same images under two names (flair = t2f,
t1 = t1n, t1ce = t1c, t2 = t2w), so both namings of one volume convert to identical files.
Output: <out>/brain/{train/good, test/good, test/lesion, ground_truth/lesion/<stem>_mask.png}
and <out>/PREPARED.json with the rules used and the namings seen.

Rules (defaults follow the one published recipe; each is an option):
  modality       flair (t1, t1ce, t2; or their 2023 names)
  slice          83: one axial slice (index along the volume's third axis, of 155), or 'all':
                 every axial slice whose brain (non-zero voxels) covers >= min_brain_fraction
  intensity      min-max scaled per slice to 0-255 (uint8 PNG, the array's own orientation)
  lesion         a slice is 'lesion' when its tumour mask (seg > 0) has >= lesion_min_pixels pixels;
                 slices with some but fewer tumour pixels are left out as ambiguous
  split          lesion slices are test images; a normal slice goes to test/good when
                 int(sha256(subject id)[:8], 16) % 1000 < 1000 * normal_test_fraction (0.5), else to
                 train/good: by subject, so no subject is on both sides of the normal split
  empty split    an empty train/good, test/good or test/lesion is a warning (strict: an error)
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from benchmark.api.atomic import staged_directory
from benchmark.errors import GadbenchError

# 2021 name -> the name releases since 2023 give the same image
NEW_NAMES = {"flair": "t2f", "t1": "t1n", "t1ce": "t1c", "t2": "t2w"}
OLD_NAMES = {new: old for old, new in NEW_NAMES.items()}
MODALITIES = tuple(NEW_NAMES)
SPLITS = ("train/good", "test/good", "test/lesion")


@dataclass
class BratsRules:
    modality: str = "flair"
    slice: str = "83"
    min_brain_fraction: float = 0.1
    lesion_min_pixels: int = 1
    normal_test_fraction: float = 0.5
    strict: bool = False

    def __post_init__(self):
        self.modality = OLD_NAMES.get(self.modality, self.modality)  # one name per image in PREPARED.json
        if self.modality not in MODALITIES:
            names = ", ".join(f"{old} ({new})" for old, new in NEW_NAMES.items())
            raise GadbenchError(f"--modality must be one of {names}, not {self.modality!r}")
        if self.slice != "all" and not str(self.slice).isdigit():
            raise GadbenchError(f"--slice must be an index or 'all', not {self.slice!r}")


def subject_in_test(subject: str, fraction: float) -> bool:
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


def _find(folder: Path, stem: str) -> Path | None:
    for suffix in (".nii.gz", ".nii"):
        if (folder / f"{stem}{suffix}").is_file():
            return folder / f"{stem}{suffix}"
    return None


def subject_files(folder: Path, modality: str) -> tuple[str, Path, Path]:
    """(naming, image volume, segmentation) of one subject folder, in whichever naming it uses."""
    subject = folder.name
    for naming, separator, name in (("2021", "_", modality), ("2023", "-", NEW_NAMES[modality])):
        image = _find(folder, f"{subject}{separator}{name}")
        if image is not None:
            seg = _find(folder, f"{subject}{separator}seg")
            if seg is None:
                raise GadbenchError(f"{folder}: {image.name} has no {subject}{separator}seg.nii[.gz] beside it;"
                                    " every subject needs its segmentation")
            return naming, image, seg
    raise GadbenchError(f"{folder}: no {subject}_{modality}.nii[.gz] (2021 naming) or {subject}-{NEW_NAMES[modality]}.nii[.gz]"
                        " (2023+ naming); point --src at the folder of subject folders")


def _slices(volume: np.ndarray, rules: BratsRules, image_path: Path) -> list[int]:
    if rules.slice == "all":
        return [i for i in range(volume.shape[2]) if (volume[:, :, i] != 0).mean() >= rules.min_brain_fraction]
    index = int(rules.slice)
    if index >= volume.shape[2]:
        raise GadbenchError(f"{image_path}: slice {index} out of range (the volume has {volume.shape[2]} axial slices)")
    return [index]


def prepare_brats(src: Path, out: Path, rules: BratsRules = BratsRules()) -> dict:
    """Convert; returns the counts (with a 'warning' entry when a split came out empty)."""
    src, out = Path(src), Path(out)
    subjects = sorted(d for d in src.iterdir() if d.is_dir()) if src.is_dir() else []
    if not subjects:
        raise GadbenchError(f"{src}: no subject folders; expected <src>/<id>/<id>_{rules.modality}.nii.gz"
                            f" or <src>/<id>/<id>-{NEW_NAMES[rules.modality]}.nii.gz")
    counts = {"train_good": 0, "test_good": 0, "test_lesion": 0, "ambiguous_left_out": 0, "subjects": len(subjects)}
    namings = Counter()
    with staged_directory(out) as staging:
        root = staging / "brain"
        for subject_dir in subjects:
            subject = subject_dir.name
            naming, image_path, seg_path = subject_files(subject_dir, rules.modality)
            namings[naming] += 1
            volume, seg = _volume(image_path), _volume(seg_path)
            if volume.shape != seg.shape:
                raise GadbenchError(f"{seg_path}: shape {seg.shape} differs from the image's {volume.shape}")
            for index in _slices(volume, rules, image_path):
                lesion = seg[:, :, index] > 0
                stem = f"{subject}_s{index:03d}"
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
                    split = "test" if subject_in_test(subject, rules.normal_test_fraction) else "train"
                    target = root / split / "good" / f"{stem}.png"
                    counts[f"{split}_good"] += 1
                target.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(_to_uint8(volume[:, :, index])).save(target)
        empty = [split for split in SPLITS if counts[split.replace("/", "_")] == 0]
        if empty:
            message = (f"{out}: {', '.join(empty)} empty ({len(subjects)} subjects, slice {rules.slice}); "
                       "a target needs normal train images, normal and lesion test images")
            if rules.strict:
                raise GadbenchError(f"{message} (--strict)")
            counts["warning"] = message
        record = {"source": str(src.resolve()), "rules": asdict(rules), "namings": dict(namings),
                  "counts": {k: v for k, v in counts.items() if k != "warning"},
                  "rules_text": __doc__.split("Rules", 1)[1].strip()}
        (staging / "PREPARED.json").write_text(json.dumps(record, indent=1))
    return counts
