"""prepare brats / visa and the ELPV reader on small fixtures built here."""

import json
from pathlib import Path

import nibabel
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from benchmark.cli import main
from benchmark.data.elpv import read_elpv
from benchmark.data.mvtec import read_mvtec
from benchmark.data.visa import read_visa
from benchmark.data.images import image_size, load_mask
from test_datasets import make_visa_original


def write_subject(root: Path, subject: str, lesion: bool, depth=100):
    folder = root / subject
    folder.mkdir(parents=True)
    rng = np.random.default_rng(abs(hash(subject)) % 2**32)
    volume = np.zeros((48, 40, depth), np.float32)
    volume[8:40, 6:34, :] = rng.uniform(100, 900, (32, 28, depth))
    seg = np.zeros_like(volume, dtype=np.int16)
    if lesion:
        seg[20:26, 15:22, 80:90] = 2
    for name, data in (("flair", volume), ("t1", volume * 0.5), ("seg", seg)):
        nibabel.save(nibabel.Nifti1Image(data, np.eye(4)), folder / f"{subject}_{name}.nii.gz")


@pytest.fixture
def brats_src(tmp_path):
    src = tmp_path / "brats_src"
    for i in range(6):
        write_subject(src, f"BraTS2021_{i:05d}", lesion=i % 2 == 0)
    return src


def test_prepare_brats_default_rule_writes_mvtec_layout(brats_src, tmp_path):
    out = tmp_path / "brats2d"
    assert main(["prepare", "brats", "--src", str(brats_src), "--out", str(out)]) == 0
    table = read_mvtec(out)
    lesion = table[table.defect == "lesion"]
    assert len(lesion) == 3 and len(table) == 6  # one slice (83) per subject
    assert set(table.category) == {"brain"}
    row = lesion.iloc[0]
    mask = load_mask(row["mask"], image_size(row["path"]))
    assert mask.sum() == 6 * 7 and mask[20:26, 15:22].all()  # the tumour of slice 83
    image = np.asarray(Image.open(row["path"]))
    assert image.dtype == np.uint8 and image.min() == 0 and image.max() == 255  # min-max to 0-255
    prepared = json.loads((out / "PREPARED.json").read_text())
    assert prepared["rules"]["slice"] == "83" and prepared["rules"]["modality"] == "flair"
    normals = table[table.label == 0]
    assert set(normals.split) <= {"train", "test"} and len(normals) == 3


def test_prepare_brats_all_slices_with_enough_brain_and_a_lesion_threshold(brats_src, tmp_path):
    out = tmp_path / "brats_all"
    assert main(["prepare", "brats", "--src", str(brats_src), "--out", str(out), "--slice", "all",
                 "--lesion-min-pixels", "50", "--modality", "t1"]) == 0
    table = read_mvtec(out)
    assert len(table[table.label == 1]) == 0  # 42 tumour pixels per slice < 50: left out as ambiguous
    counts = json.loads((out / "PREPARED.json").read_text())["counts"]
    assert counts["ambiguous_left_out"] == 3 * 10 and counts["train_good"] + counts["test_good"] == 6 * 100 - 30


def test_prepare_brats_missing_segmentation_is_a_clear_error(brats_src, tmp_path, capsys):
    next(brats_src.glob("*/*_seg.nii.gz")).unlink()
    assert main(["prepare", "brats", "--src", str(brats_src), "--out", str(tmp_path / "o")]) == 2
    assert "every subject needs its segmentation" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # nothing half-written


def test_prepare_visa_gives_the_same_table_as_the_original_layout(tmp_path):
    original = make_visa_original(tmp_path / "visa")
    out = tmp_path / "visa_mvtec"
    assert main(["prepare", "visa", "--src", str(original), "--out", str(out)]) == 0
    a, b = read_visa(original), read_visa(out)
    def comparable(table):
        table = table.assign(stem=table.path.map(lambda p: Path(p).stem), has_mask=table["mask"].notna())
        return table.drop(columns=["path", "mask"]).sort_values(["category", "split", "stem"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(comparable(a), comparable(b))
    row = b[b.label == 1].iloc[0]
    assert load_mask(row["mask"], image_size(row["path"])).all()  # class ids became 0/255
    assert Path(row["path"]).read_bytes() == (original / "candle/Data/Images/Anomaly" / Path(row["path"]).name).read_bytes()


def test_elpv_reader_follows_inctrl_split_and_has_no_masks(tmp_path):
    root = tmp_path / "elpv"
    (root / "images").mkdir(parents=True)
    lines = []
    for i, (probability, kind) in enumerate([(0.0, "mono")] * 12 + [(1.0, "mono")] * 3 + [(1.0, "poly")] * 2 + [(0.3333333333333333, "poly")] * 2):
        name = f"images/cell{i:04d}.png"
        Image.fromarray(np.full((8, 8), i, np.uint8)).save(root / name)
        lines.append(f"{name} {probability} {kind}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    table = read_elpv(root)
    assert len(table) == 12 + 5  # the 1/3 and 2/3 cells are left out
    assert (table[table.label == 0].split == "train").sum() == 9  # 75 / 25 of 12 normals
    assert set(table[table.label == 1].defect) == {"mono", "poly"}
    assert table["mask"].isna().all()


def test_elpv_pixel_metrics_are_not_applicable():
    from benchmark.run.metrics import pixel_metrics

    metrics = pixel_metrics([np.zeros((4, 4), bool)] * 3, [np.random.rand(4, 4) for _ in range(3)])
    assert all(np.isnan(v) for v in metrics.values())


def _write_elpv(root: Path) -> Path:
    (root / "images").mkdir(parents=True)
    lines = []
    for i, (probability, kind) in enumerate([(0.0, "mono")] * 12 + [(1.0, "mono")] * 2 + [(1.0, "poly")] * 2):
        name = f"images/cell{i:04d}.png"
        Image.fromarray((np.random.default_rng(i).random((40, 40)) * 255).astype(np.uint8)).save(root / name)
        lines.append(f"{name} {probability} {kind}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root


def _run_elpv_cell(tmp_path) -> dict:
    from conftest import write_experiment

    experiment = write_experiment(
        tmp_path / "e.yaml", tmp_path / "data", settings=["N1"], seeds=[0], pairs=[["elpv", "elpv"]],
        methods=[{"name": "nn", "adapter": "normal_nn", "config": {"backbone": "lite0_imagenet", "input_size": 64}}],
        tables={"main": ["elpv"]})
    assert main(["run", "--experiment", str(experiment), "--results", str(tmp_path / "r"), "--no-progress"]) == 0
    [cell] = [json.loads(p.read_text()) for p in (tmp_path / "r" / "runs").rglob("*.json")]
    return cell


def test_elpv_from_an_installed_package_outside_the_data_root_runs(tmp_path, monkeypatch):
    """The package's files are not under the data root: manifests and cells name paths relative to
    where the files are, not '../../.venv/...' (which the manifest reader refuses)."""
    import benchmark.data.elpv as elpv

    package_data = _write_elpv(tmp_path / "site-packages" / "elpv_dataset" / "data")
    monkeypatch.setattr(elpv, "package_root", lambda: package_data)
    cell = _run_elpv_cell(tmp_path)
    assert cell["status"] == "done", cell.get("error")
    assert all(not p.startswith("..") for p in cell["per_image"]["elpv"]["path"])
    assert cell["metrics"]["mean"]["image_auroc"] is not None and cell["metrics"]["mean"]["pixel_auroc"] is None


@pytest.mark.skipif(__import__("importlib").util.find_spec("elpv_dataset") is None,
                    reason="the elpv-dataset package is not installed (pip install 'gadbench[elpv]')")
def test_elpv_from_the_real_installed_package_runs_one_cell(tmp_path):
    cell = _run_elpv_cell(tmp_path)
    assert cell["status"] == "done", cell.get("error")
    assert cell["counts"]["elpv"]["queries"] > 100
