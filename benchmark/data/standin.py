"""Layout-faithful stand-ins of MVTec AD, VisA and BraTS, for `gadbench rehearse`.

Each stand-in has its data set's folder layout, category names, defect types, file types and mask
conventions, at 1/12 of the image size, so that a rehearsal goes through every reader, converter,
manifest and class-name path a real run takes. The pixels come from the synthetic generator
(benchmark/data/synthetic.py): nothing scored on them means anything.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image

from benchmark.api.atomic import staged_directory
from benchmark.data.prepare.brats import NEW_NAMES, BratsRules, subject_in_test  # NEW_NAMES: 2021 name -> 2023+ name
from benchmark.data.synthetic import DOMAINS, render_sample

STANDIN_VERSION = 2  # bump when what is written changes, so stale rehearsal data is rewritten (2: sized by the grid)
SCALE = 12  # stand-in images are the real size divided by this
RENDER_SIZE = 128

# category -> (defect types, image side in pixels, grayscale), as MVTec AD ships them
MVTEC = {
    "bottle": (("broken_large", "broken_small", "contamination"), 900, False),
    "cable": (("bent_wire", "cable_swap", "combined", "cut_inner_insulation", "cut_outer_insulation", "missing_cable",
               "missing_wire", "poke_insulation"), 1024, False),
    "capsule": (("crack", "faulty_imprint", "poke", "scratch", "squeeze"), 1000, False),
    "carpet": (("color", "cut", "hole", "metal_contamination", "thread"), 1024, False),
    "grid": (("bent", "broken", "glue", "metal_contamination", "thread"), 1024, True),
    "hazelnut": (("crack", "cut", "hole", "print"), 1024, False),
    "leather": (("color", "cut", "fold", "glue", "poke"), 1024, False),
    "metal_nut": (("bent", "color", "flip", "scratch"), 700, False),
    "pill": (("color", "combined", "contamination", "crack", "faulty_imprint", "pill_type", "scratch"), 800, False),
    "screw": (("manipulated_front", "scratch_head", "scratch_neck", "thread_side", "thread_top"), 1024, True),
    "tile": (("crack", "glue_strip", "gray_stroke", "oil", "rough"), 840, False),
    "toothbrush": (("defective",), 1024, False),
    "transistor": (("bent_lead", "cut_lead", "damaged_case", "misplaced"), 1024, False),
    "wood": (("color", "combined", "hole", "liquid", "scratch"), 1024, False),
    "zipper": (("broken_teeth", "combined", "fabric_border", "fabric_interior", "rough", "split_teeth", "squeezed_teeth"),
               1024, True),
}
MVTEC_TEXTURES = {"carpet", "grid", "leather", "tile", "wood"}
# category -> (width, height) of its images, approximately as VisA ships them (one defect type, 'anomaly')
VISA = {
    "candle": (1284, 1168), "capsules": (1500, 1000), "cashew": (1274, 1000), "chewinggum": (1251, 1000),
    "fryum": (1500, 1000), "macaroni1": (1500, 1000), "macaroni2": (1500, 1000), "pcb1": (1404, 1000),
    "pcb2": (1404, 1000), "pcb3": (1404, 1000), "pcb4": (1404, 1000), "pipe_fryum": (1500, 1000),
}
# the fewest images per category and split; a rehearsal asks for more where its grid needs them
# (benchmark/run/rehearsal.py:standin_counts): train/good for the seeds' normal references, per
# defect type for the official protocol's per-type abnormal references
MIN_COUNTS = {"train_good": 4, "test_good": 4, "test_per_defect": 2}
BRATS_SHAPE = (40, 40, 155)  # (240, 240, 155) in BraTS; 155 axial slices so that slice 83 exists
BRATS_LESION_SLICES = (70, 96)  # lesion subjects have tumour here, normal ones only far from slice 83


def _pick(options: list[str], *key: str) -> str:
    """A stable choice of `options` by key (no RNG state involved)."""
    digest = hashlib.sha256("/".join(key).encode()).digest()
    return options[int.from_bytes(digest[:4], "little") % len(options)]


def _synthetic(domain: str, category: str, defect: str, split: str, index: int, size: int):
    """A synthetic image (float [H, W, 3]) and mask standing in for one image of a real category.
    Drawn at RENDER_SIZE at least (the generator's smallest defects need it), then downscaled;
    the mask by area, so that every defect keeps at least one pixel."""
    spec = DOMAINS[domain]
    stand_in = _pick(spec["categories"], domain, category)
    kind = "good" if defect == "good" else _pick(spec["defects"], category, defect)
    image, mask = render_sample(domain, stand_in, kind, split, index, seed=0, size=max(size, RENDER_SIZE))
    if size >= RENDER_SIZE:
        return image, mask
    image = np.asarray(_to_pil(image).resize((size, size), Image.BILINEAR), dtype=np.float32) / 255
    if mask is not None:
        mask = np.asarray(_mask_pil(mask).resize((size, size), Image.BOX)) > 0
    return image, mask


def _to_pil(image: np.ndarray, grayscale: bool = False) -> Image.Image:
    pil = Image.fromarray((image * 255).round().astype(np.uint8))
    return pil.convert("L") if grayscale else pil


def _mask_pil(mask: np.ndarray, values: int = 255) -> Image.Image:
    return Image.fromarray(mask.astype(np.uint8) * values)


def _plan(defects, counts: dict | None) -> list[tuple[str, str, int]]:
    counts = {**MIN_COUNTS, **(counts or {})}
    plan = [("train", "good", counts["train_good"]), ("test", "good", counts["test_good"])]
    return plan + [("test", defect, counts["test_per_defect"]) for defect in defects]


def generate_mvtec(out: Path, categories: list[str] | None = None, counts: dict | None = None) -> Path:
    """MVTec AD's layout: <category>/{train/good, test/<type>, ground_truth/<type>/<stem>_mask.png}, PNG."""
    with staged_directory(out) as staging:
        for category in categories or sorted(MVTEC):
            defects, side, grayscale = MVTEC[category]
            size = round(side / SCALE)
            domain = "textures" if category in MVTEC_TEXTURES else "objects"
            for split, defect, n in _plan(defects, counts):
                for index in range(n):
                    image, mask = _synthetic(domain, category, defect, split, index, size)
                    path = staging / category / split / defect / f"{index:03d}.png"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    _to_pil(image, grayscale).save(path)
                    if mask is not None:
                        mask_path = staging / category / "ground_truth" / defect / f"{index:03d}_mask.png"
                        mask_path.parent.mkdir(parents=True, exist_ok=True)
                        _mask_pil(mask).save(mask_path)
    return Path(out)


def generate_visa(out: Path, categories: list[str] | None = None, counts: dict | None = None) -> Path:
    """VisA's original layout: split_csv/1cls.csv and <category>/Data/Images/{Normal,Anomaly}/*.JPG,
    <category>/Data/Masks/Anomaly/*.png holding class ids (1-3), not 0/255."""
    rows = ["object,split,label,image,mask"]
    with staged_directory(out) as staging:
        for category in categories or sorted(VISA):
            width, height = (round(v / SCALE) for v in VISA[category])
            normal_index = anomaly_index = 0
            for split, defect, n in _plan(["anomaly"], counts):
                for _ in range(n):
                    anomalous = defect != "good"
                    index = anomaly_index if anomalous else normal_index
                    image, mask = _synthetic("objects", category, defect, split, index, max(width, height))
                    folder = "Anomaly" if anomalous else "Normal"
                    name = f"{index:03d}" if anomalous else f"{index:04d}"  # VisA's own numbering widths
                    image_rel = f"{category}/Data/Images/{folder}/{name}.JPG"
                    (staging / image_rel).parent.mkdir(parents=True, exist_ok=True)
                    _to_pil(image).resize((width, height), Image.BILINEAR).save(staging / image_rel, "JPEG", quality=95)
                    mask_rel = ""
                    if anomalous:
                        mask_rel = f"{category}/Data/Masks/Anomaly/{name}.png"
                        (staging / mask_rel).parent.mkdir(parents=True, exist_ok=True)
                        class_id = 1 + index % 3
                        _mask_pil(mask, class_id).resize((width, height), Image.NEAREST).save(staging / mask_rel)
                        anomaly_index += 1
                    else:
                        normal_index += 1
                    rows.append(f"{category},{split},{'anomaly' if anomalous else 'normal'},{image_rel},{mask_rel}")
        (staging / "split_csv").mkdir()
        (staging / "split_csv" / "1cls.csv").write_text("\n".join(rows) + "\n")
    return Path(out)


def _brats_volumes(subject: str, lesion: bool) -> dict[str, np.ndarray]:
    """Four modality volumes and the segmentation (int16) of one stand-in subject, seeded by its name."""
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(subject.encode()).digest()[:8], "little"))
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n) for n in BRATS_SHAPE), indexing="ij")
    brain = (x / 0.8) ** 2 + (y / 0.9) ** 2 + (z / 1.0) ** 2 < 1
    first, last = BRATS_LESION_SLICES if lesion else (20, 30)
    centre = (rng.uniform(-0.3, 0.3), rng.uniform(-0.3, 0.3), (first + last) / 2 / (BRATS_SHAPE[2] - 1) * 2 - 1)
    half_depth = (last - first) / 2 / (BRATS_SHAPE[2] - 1) * 2
    tumour = ((x - centre[0]) / 0.25) ** 2 + ((y - centre[1]) / 0.25) ** 2 + ((z - centre[2]) / half_depth) ** 2 < 1
    tumour &= brain
    volumes = {}
    for number, modality in enumerate(NEW_NAMES):
        tissue = 300 + 100 * number + rng.normal(0, 20, BRATS_SHAPE)
        volumes[modality] = np.where(brain, tissue + 400 * tumour, 0).astype(np.int16)
    volumes["seg"] = np.where(tumour, rng.choice([1, 2, 4], BRATS_SHAPE), 0).astype(np.int16)
    return volumes


def _default_name(naming: str, number: int) -> str:
    return ("BraTS2021_{:05d}" if naming == "2021" else "BraTS-GLI-{:05d}-000").format(number)


def brats_subjects(naming: str, counts: dict) -> list[tuple[str, bool]]:
    """(subject name, has a lesion) for enough subjects that `gadbench prepare brats` with its
    default rules (slice 83, the sha256 split of normal subjects) yields at least
    counts['train_good'] train/good and counts['test_good'] test/good slices and
    counts['test_per_defect'] lesion slices: even-numbered subjects have a lesion, odd-numbered ones
    go to train or test by the prepare rule, which is read here rather than guessed."""
    counts = {**MIN_COUNTS, **counts}
    wanted = {"lesion": counts["test_per_defect"], "train": counts["train_good"], "test": counts["test_good"]}
    have, subjects, number = {"lesion": 0, "train": 0, "test": 0}, [], 0
    while any(have[k] < wanted[k] for k in wanted):
        name, lesion = _default_name(naming, number), number % 2 == 0
        side = "lesion" if lesion else ("test" if subject_in_test(name, BratsRules().normal_test_fraction) else "train")
        if have[side] < wanted[side]:
            subjects.append((name, lesion))
            have[side] += 1
        number += 1
    return subjects


def generate_brats(out: Path, naming: str = "2023", subjects: int = 8, subject_names: list[str] | None = None,
                   counts: dict | None = None) -> Path:
    """BraTS subject folders of NIfTI volumes in the 2021 (<id>_flair.nii.gz) or 2023+ naming
    (<id>-t2f.nii.gz). With `counts`, the subjects of brats_subjects (enough for those slices after
    the default split); otherwise `subjects` (or `subject_names`), even-numbered ones with a
    tumour through slice 83. Every other subject is written as uncompressed .nii, which releases
    also ship. One subject name gives the same volumes in both namings."""
    import nibabel

    if naming not in ("2021", "2023"):
        raise ValueError(f"naming must be '2021' or '2023', not {naming!r}")
    if counts is not None:
        chosen = brats_subjects(naming, counts)
    else:
        chosen = [(name, number % 2 == 0) for number, name in
                  enumerate(subject_names or [_default_name(naming, i) for i in range(subjects)])]
    separator = "_" if naming == "2021" else "-"
    with staged_directory(out) as staging:
        for number, (subject, lesion) in enumerate(chosen):
            folder = staging / subject
            folder.mkdir()
            suffix = ".nii" if number % 2 else ".nii.gz"
            for modality, volume in _brats_volumes(subject, lesion=lesion).items():
                name = modality if naming == "2021" or modality == "seg" else NEW_NAMES[modality]
                nibabel.save(nibabel.Nifti1Image(volume, np.eye(4)), str(folder / f"{subject}{separator}{name}{suffix}"))
    return Path(out)
