"""Stand-in data in the paper's data-set layouts: the readers and converters a real run takes."""

import json

import numpy as np
from PIL import Image

from benchmark.cli import main
from benchmark.data.mvtec import read_mvtec
from benchmark.data.standin import MVTEC, VISA, generate_brats, generate_mvtec, generate_visa
from benchmark.data.visa import read_visa
from benchmark.data.images import image_size, load_mask


def test_mvtec_standin_has_mvtecs_categories_types_and_conventions(tmp_path):
    root = generate_mvtec(tmp_path / "mvtec_anomaly_detection", categories=["grid", "metal_nut", "cable"], counts={"train_good": 7})
    table = read_mvtec(root)
    for category in ("grid", "metal_nut", "cable"):
        rows = table[table.category == category]
        assert set(rows[rows.label == 1].defect) == set(MVTEC[category][0])
        assert ((rows.split == "train") & (rows.label == 0)).sum() == 7  # as many as the grid asks for
    grid = Image.open(table[table.category == "grid"].path.iloc[0])
    metal_nut = Image.open(table[table.category == "metal_nut"].path.iloc[0])
    assert grid.mode == "L" and metal_nut.mode == "RGB"  # MVTec's grayscale categories stay grayscale
    assert grid.size == (85, 85) and metal_nut.size == (58, 58)  # 1024 and 700 px, scaled by 1/12
    defect = table[table.label == 1].iloc[0]
    assert defect["mask"].endswith(f"ground_truth/{defect.defect}/000_mask.png")
    assert load_mask(defect["mask"], image_size(defect["path"])).any()


def test_visa_standin_is_the_original_layout_and_converts_like_the_real_one(tmp_path):
    original = generate_visa(tmp_path / "VisA_20220922", categories=["pcb1", "candle"])
    assert (original / "split_csv" / "1cls.csv").is_file()
    table = read_visa(original)
    assert sorted(table.category.unique()) == ["candle", "pcb1"]
    anomalous = table[table.label == 1].iloc[0]
    assert "/Data/Images/Anomaly/" in anomalous.path and anomalous.path.endswith(".JPG")
    class_ids = np.asarray(Image.open(anomalous["mask"]))
    assert set(np.unique(class_ids)) <= {0, 1, 2, 3} and class_ids.max() > 0  # class ids, not 0/255
    assert Image.open(anomalous.path).size == (round(VISA[anomalous.category][0] / 12), round(VISA[anomalous.category][1] / 12))
    assert main(["prepare", "visa", "--src", str(original), "--out", str(tmp_path / "visa_mvtec")]) == 0
    relaid = read_visa(tmp_path / "visa_mvtec")
    assert len(relaid) == len(table) and (relaid.label == 1).sum() == (table.label == 1).sum()


def test_brats_2021_and_2023_namings_convert_to_identical_outputs(tmp_path):
    names = [f"subject{i:03d}" for i in range(8)]
    outputs = {}
    for naming in ("2021", "2023"):
        src = generate_brats(tmp_path / f"src{naming}", naming=naming, subjects=8, subject_names=names)
        modality = "flair" if naming == "2021" else "t2f"
        assert main(["prepare", "brats", "--src", str(src), "--out", str(tmp_path / naming), "--modality", modality]) == 0
        outputs[naming] = {p.relative_to(tmp_path / naming): p.read_bytes() for p in sorted((tmp_path / naming).rglob("*.png"))}
    assert outputs["2021"] == outputs["2023"] and len(outputs["2021"]) == 8 + 4  # 8 slices + 4 lesion masks
    assert any(p.suffix == ".nii" for p in (tmp_path / "src2023").rglob("*"))  # uncompressed volumes were read too
    record = json.loads((tmp_path / "2023" / "PREPARED.json").read_text())
    assert record["namings"] == {"2023": 8} and record["rules"]["modality"] == "flair"


def test_brats_release_names_and_an_empty_split_is_reported_or_refused(tmp_path, capsys):
    src = generate_brats(tmp_path / "src", naming="2023", subjects=2)  # BraTS-GLI-00000-000, -00001-000
    assert sorted(p.name for p in src.iterdir() if p.is_dir()) == ["BraTS-GLI-00000-000", "BraTS-GLI-00001-000"]
    assert main(["prepare", "brats", "--src", str(src), "--out", str(tmp_path / "out")]) == 0
    warning = capsys.readouterr().err  # one normal subject: train/good or test/good stays empty
    assert warning.startswith("gadbench: warning:") and "good empty (2 subjects, slice 83)" in warning
    assert main(["prepare", "brats", "--src", str(src), "--out", str(tmp_path / "strict"), "--strict"]) == 2
    assert "empty" in capsys.readouterr().err
    assert not (tmp_path / "strict").exists()  # nothing half-written
