"""Readers on the real data sets in ../shared/data (present in CI, absent on a fresh clone)."""

import pytest

from benchmark.data.magnetic_tile import read_magnetic_tile
from benchmark.data.mvtec import read_mvtec
from benchmark.data.images import image_size, load_mask
from conftest import SHARED_DATA

pytestmark = [
    pytest.mark.shared_data,
    pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"{SHARED_DATA} is absent (it exists in CI, not in a fresh clone)"),
]


def test_mpdd_metal_plate_reads_with_the_mvtec_reader():
    table = read_mvtec(SHARED_DATA / "mpdd")
    plate = table[table.category == "metal_plate"]
    assert ((plate.split == "train") & (plate.label == 0)).sum() == 30
    assert ((plate.split == "test") & (plate.label == 0)).sum() == 50
    defects = plate[plate.label == 1]
    assert len(defects) == 81 and set(defects.defect) == {"defect"}
    first = defects.iloc[0]
    assert load_mask(first["mask"], image_size(first["path"])).any()


def test_magnetic_tile_reads_with_its_split():
    table = read_magnetic_tile(SHARED_DATA / "magnetic_tile")
    counts = table[table.label == 1].defect.value_counts().to_dict()
    assert counts == {"blowhole": 115, "uneven": 103, "break": 85, "crack": 57, "fray": 32}
    free = table[table.label == 0]
    assert len(free) == 952 and 400 < (free.split == "train").sum() < 550
    empty = [r for r in table[table.defect == "uneven"].itertuples() if not load_mask(r.mask, image_size(r.path)).any()]
    assert len(empty) == 4  # the four empty MT_Uneven masks the data README mentions
