"""The reference rules (benchmark/data/reference_rules.py) on small hand-made sample tables: the
slices, what each setting lacks, and the messages that name the option to change."""

import pandas as pd
import pytest

from benchmark.data.reference_rules import manifest_shortages, normal_references, normal_shortage
from benchmark.data.settings import parse_setting
from benchmark.errors import GadbenchError


def table(good=("train/good/000.png", "train/good/001.png", "train/good/002.png"), defects=("hole",) * 3):
    rows = [{"category": "c", "split": "train", "label": 0, "path": p, "defect": "good", "mask": None} for p in good]
    rows += [{"category": "c", "split": "test", "label": 1, "path": f"test/{d}/{i:03d}.png", "defect": d,
              "mask": f"ground_truth/{d}/{i:03d}_mask.png"} for i, d in enumerate(defects)]
    return pd.DataFrame(rows)


def test_train_good_images_are_sorted_by_file_name_keeping_the_table_order_of_equal_names():
    mixed = table(good=("b/001.png", "a/002.png", "a/001.png"))
    assert list(normal_references(mixed, "c", -1, 0, "nested", 4).path) == ["b/001.png", "a/001.png", "a/002.png"]
    # 80 images: numpy's default quicksort is no longer an insertion sort and would swap equal names
    many = table(good=[f"b/{i:03d}.png" for i in range(40)] + [f"a/{i:03d}.png" for i in range(40)])
    assert list(normal_references(many, "c", -1, 0, "nested", 4).path) == [f"{d}/{i:03d}.png" for i in range(40) for d in "ba"]


def test_a_mask_counts_as_defect_pixels_above_the_configured_threshold(tmp_path):
    import numpy as np
    from PIL import Image

    from benchmark.data.reference_rules import _has_defect_pixels

    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "image.png")
    Image.fromarray(np.full((4, 4), 100, np.uint8)).save(tmp_path / "mask.png")
    row = {"path": str(tmp_path / "image.png"), "mask": str(tmp_path / "mask.png")}
    assert _has_defect_pixels(row, 99) and not _has_defect_pixels(row, 100)  # pixel > threshold


def test_each_rule_slices_the_sorted_images_and_k0_takes_none():
    ten = table(good=[f"train/good/{i:03d}.png" for i in range(10)])
    names = lambda frame: [p[-7:-4] for p in frame.path]  # noqa: E731
    assert names(normal_references(ten, "c", 2, 1, "nested", 4)) == ["004", "005"]  # seed x B
    assert names(normal_references(ten, "c", 2, 1, "official-slice", 4)) == ["002", "003"]  # seed x k
    assert names(normal_references(ten, "c", 0, 0, "nested", 4)) == []
    assert len(normal_references(ten, "c", -1, 3, "nested", 4)) == 10  # Nall, whatever the seed
    with pytest.raises(GadbenchError, match="has 10 train/good images; k=2 at seed 5 \\(official-slice\\) needs 12"):
        normal_references(ten, "c", 2, 5, "official-slice", 4)


def test_normal_shortages_name_the_option_that_fixes_them():
    assert normal_shortage(0, "c", -1, 0, "nested", 4) == ["category 'c' has no train/good images; Nall needs at least one"]
    assert normal_shortage(1, "c", -1, 0, "nested", 4) == []
    assert normal_shortage(0, "c", 0, 0, "nested", 4) == []  # N0 needs no image
    assert normal_shortage(8, "c", 5, 0, "nested", 4) == ["k=5 exceeds nested_block=4; raise protocol_options.nested_block"]
    assert normal_shortage(10, "c", 5, 1, "official-slice", 4) == []  # no block under the official slices
    assert normal_shortage(7, "c", 2, 1, "official-slice", 4) == []
    assert normal_shortage(5, "c", 2, 1, "nested", 4) == [
        "category 'c' has 5 train/good images; k=2 at seed 1 (nested) needs 6: use fewer seeds or a smaller k"]


def test_manifest_shortages_of_n0_ignore_train_good_and_suggest_a_protocol():
    none_good = table(good=())
    assert manifest_shortages(none_good, "c", parse_setting("N0+A1"), 2, "clean", 4, 127, drawn=[{"path": "x"}],
                              abnormal_block=1) == []
    assert manifest_shortages(none_good, "c", parse_setting("N1+A1"), 0, "clean", 4, 127, drawn=[{"path": "x"}],
                              abnormal_block=1) == [
        "category 'c' has 0 train/good images; k=1 at seed 0 (nested) needs 1: use fewer seeds or a smaller k"]
    assert manifest_shortages(table(), "c", parse_setting("N1"), 0, "clen", 4, 127, abnormal_block=1) == [
        "unknown protocol 'clen'; did you mean 'clean'?"]
    # the official protocol's normal rule is the slice: k = 2 at seed 1 takes images 2 and 3 of 3
    assert manifest_shortages(table(), "c", parse_setting("N2"), 1, "official", 4, 127, abnormal_block=1) == [
        "category 'c' has 3 train/good images; k=2 at seed 1 (official-slice) needs 4: use fewer seeds or a smaller k"]
