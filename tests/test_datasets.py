import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from benchmark.data import DatasetSpec, read_dataset
from benchmark.data.samples import SAMPLE_COLUMNS
from benchmark.data.magnetic_tile import goes_to_test, read_magnetic_tile
from benchmark.data.mvtec import read_mvtec
from benchmark.data.synthetic import DOMAINS, _render, _stream, generate, render_sample
from benchmark.data.visa import read_visa
from benchmark.errors import GadbenchError


def _png(path: Path, value=128, size=(16, 16), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.full((*size, 3) if mode == "RGB" else size, value, np.uint8)
    Image.fromarray(array).save(path)


def make_mvtec(root: Path, mask_name="{stem}_mask.png", defect="crack", suffix=".png"):
    for category in ("bottle", "screw"):
        for i in range(3):
            _png(root / category / "train" / "good" / f"{i:03d}{suffix}")
        _png(root / category / "test" / "good" / f"000{suffix}")
        for i in range(2):
            _png(root / category / "test" / defect / f"{i:03d}{suffix}")
            _png(root / category / "ground_truth" / defect / mask_name.format(stem=f"{i:03d}"), 255, mode="L")
    return root


def test_mvtec_layout_reads_into_the_sample_table(tmp_path):
    table = read_mvtec(make_mvtec(tmp_path))
    assert list(table.columns) == SAMPLE_COLUMNS
    bottle = table[table.category == "bottle"]
    assert (bottle.split == "train").sum() == 3 and (bottle.split == "test").sum() == 3
    defects = bottle[bottle.label == 1]
    assert set(defects.defect) == {"crack"}
    assert all(m.endswith("_mask.png") and Path(m).is_file() for m in defects["mask"])
    assert bottle[bottle.label == 0]["mask"].isna().all()


def test_mvtec_defect_without_mask_is_a_one_line_error_naming_the_image(tmp_path):
    root = make_mvtec(tmp_path)
    (root / "screw" / "ground_truth" / "crack" / "001_mask.png").unlink()
    with pytest.raises(GadbenchError, match=r"screw/test/crack/001.png: defective test image without a mask"):
        read_mvtec(root)


def make_visa_original(root: Path):
    rows = []
    for category in ("candle", "pcb1"):
        for i in range(3):
            image = f"{category}/Data/Images/Normal/{i:04d}.JPG"
            _png(root / image)
            rows.append((category, "train" if i < 2 else "test", "normal", image, ""))
        for i in range(2):
            image = f"{category}/Data/Images/Anomaly/{i:03d}.JPG"
            mask = f"{category}/Data/Masks/Anomaly/{i:03d}.png"
            _png(root / image)
            _png(root / mask, 3, mode="L")  # VisA masks store small class ids
            rows.append((category, "test", "anomaly", image, mask))
    (root / "split_csv").mkdir(parents=True)
    pd.DataFrame(rows, columns=["object", "split", "label", "image", "mask"]).to_csv(root / "split_csv" / "1cls.csv", index=False)
    return root


def relay_visa_as_mvtec(original: Path, out: Path):
    """What `prepare visa` produces: MVTec layout, defect type 'bad', masks named by the image stem."""
    table = read_visa(original)
    for record in table.to_dict("records"):
        kind = "good" if record["label"] == 0 else "bad"
        target = out / record["category"] / record["split"] / kind / Path(record["path"]).name
        _png(target)
        if record["mask"]:
            _png(out / record["category"] / "ground_truth" / "bad" / (Path(record["path"]).stem + ".png"), 255, mode="L")
    return out


def test_visa_original_and_relaid_layouts_give_the_same_table(tmp_path):
    original = read_visa(make_visa_original(tmp_path / "visa"))
    relaid = read_visa(relay_visa_as_mvtec(tmp_path / "visa", tmp_path / "visa_mvtec"))
    assert len(original) == 10
    assert set(original.defect) == {"good", "bad"}
    def comparable(table):
        out = table.assign(stem=table.path.map(lambda p: Path(p).stem), has_mask=table["mask"].notna())
        return out.drop(columns=["path", "mask"]).sort_values(["category", "split", "stem"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(comparable(original), comparable(relaid))


def test_visa_masks_with_class_ids_count_as_defects_with_threshold_zero(tmp_path):
    spec = DatasetSpec("visa", "visa", make_visa_original(tmp_path / "visa"), mask_threshold=0)
    table = read_dataset(spec)
    from benchmark.data.images import load_mask

    mask_path = table[table.label == 1]["mask"].iloc[0]
    assert load_mask(mask_path, (16, 16), spec.mask_threshold).all()
    assert not load_mask(mask_path, (16, 16), 127).any()  # why VisA needs its own threshold


def make_magnetic_tile(root: Path, free=40):
    for i in range(free):
        _png(root / "MT_Free" / "Imgs" / f"exp0_num_{i}.jpg")
    for kind in ("Blowhole", "Crack"):
        for i in range(3):
            _png(root / f"MT_{kind}" / "Imgs" / f"exp1_num_{i}.jpg")
            _png(root / f"MT_{kind}" / "Imgs" / f"exp1_num_{i}.png", 255, mode="L")
    return root


def test_magnetic_tile_split_is_deterministic_by_file_name(tmp_path):
    table = read_magnetic_tile(make_magnetic_tile(tmp_path / "mt"))
    free = table[table.defect == "good"]
    for record in free.itertuples():
        name = Path(record.path).name
        expected = int(hashlib.sha256(name.encode()).hexdigest()[:8], 16) % 1000 < 500
        assert (record.split == "test") == expected == goes_to_test(name, 0.5)
    assert 10 < (free.split == "train").sum() < 30
    defects = table[table.label == 1]
    assert set(defects.defect) == {"blowhole", "crack"} and (defects.split == "test").all()
    assert all(m.endswith(".png") for m in defects["mask"])
    # more free images never move an existing one to the other split
    bigger = read_magnetic_tile(make_magnetic_tile(tmp_path / "mt2", free=60))
    merged = free.assign(name=free.path.map(lambda p: Path(p).name)).merge(
        bigger.assign(name=bigger.path.map(lambda p: Path(p).name)), on="name")
    assert (merged.split_x == merged.split_y).all()


def test_synthetic_has_two_domains_three_categories_three_defects(synthetic_root):
    assert len(DOMAINS) >= 2
    for domain, spec in DOMAINS.items():
        table = read_mvtec(synthetic_root / domain)
        assert table.category.nunique() >= 3
        for _, rows in table.groupby("category"):
            assert rows[rows.label == 1].defect.nunique() >= 3


def test_synthetic_is_byte_identical_for_a_seed_and_differs_across_seeds(tmp_path):
    counts = {"train_good": 1, "test_good": 1, "test_per_defect": 1}
    a = generate(tmp_path / "a", "textures", seed=3, size=64, counts=counts)
    b = generate(tmp_path / "b", "textures", seed=3, size=64, counts=counts)
    c = generate(tmp_path / "c", "textures", seed=4, size=64, counts=counts)
    files = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert files and all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert any((a / f).read_bytes() != (c / f).read_bytes() for f in files)


@pytest.mark.parametrize("domain", sorted(DOMAINS))
def test_synthetic_masks_cover_exactly_the_changed_pixels(domain):
    for category in DOMAINS[domain]["categories"]:
        for defect in DOMAINS[domain]["defects"]:
            image, mask = render_sample(domain, category, defect, "test", 0, size=128)
            # the same RNG stream rendered without the defect is the image before the defect was painted
            twin, _ = _render(domain, category, None, _stream(0, domain, category, "test", defect, 0), 128)
            changed = np.any(np.abs(image - twin) > 1e-6, axis=-1)
            assert mask.sum() >= 12
            assert not (changed & ~mask).any(), f"{domain}/{category}/{defect} changed pixels outside its mask"
            assert changed[mask].mean() > 0.5, f"{domain}/{category}/{defect} mask is mostly unchanged"


def test_missing_data_root_is_a_clear_error(tmp_path):
    with pytest.raises(GadbenchError, match="does not exist; set DATA_ROOT"):
        read_dataset(DatasetSpec("mvtec", "mvtec", tmp_path / "nope"))
