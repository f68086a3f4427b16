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


def test_a_clean_block_never_draws_an_empty_mask_twice_at_any_seed(tmp_path):
    """The documented draw, written out here: a type uniformly, then a file uniformly among its
    sorted files. The first reference is drawn from every file, again and again until its mask is
    not empty (as gadbench always drew its one reference); the rest of the block from the files
    not drawn yet, an empty-mask file set aside for good wherever it was drawn. Checked over 20
    seeds with two empty masks among six files, so that drawing an empty one twice would show."""
    import zlib

    import numpy as np
    from PIL import Image

    from benchmark.data.reference_rules import clean_abnormal_block

    files = {"cut": ["c0", "c1", "c2"], "hole": ["h0", "h1", "h2"]}
    empty = {"c1", "h0"}
    rows = []
    for defect, names in files.items():
        for name in names:
            image, mask = tmp_path / f"{name}.png", tmp_path / f"{name}_mask.png"
            Image.fromarray(np.zeros((4, 4), np.uint8)).save(image)
            Image.fromarray(np.full((4, 4), 0 if name in empty else 255, np.uint8)).save(mask)
            rows.append({"category": "c", "split": "test", "label": 1, "path": str(image), "defect": defect, "mask": str(mask)})
    table = pd.DataFrame(rows)
    for seed in range(20):
        rng = np.random.default_rng([seed, zlib.crc32(b"c")])
        every = {d: [str(tmp_path / f"{n}.png") for n in names] for d, names in files.items()}

        def draw(pool):
            types = sorted(d for d, paths in pool.items() if paths)
            paths = sorted(pool[types[rng.integers(len(types))]])
            return paths[rng.integers(len(paths))]

        def is_empty(path):
            return path.rsplit("/", 1)[-1][:-4] in empty

        rejected, want = set(), []
        while not want:
            path = draw(every)
            (rejected.add if is_empty(path) else want.append)(path)
        while len(want) < 4:
            left = {d: [p for p in ps if p not in rejected and p not in want] for d, ps in every.items()}
            if not any(left.values()):
                break
            path = draw(left)
            (rejected.add if is_empty(path) else want.append)(path)
        assert [r.path for r in clean_abnormal_block(table, "c", seed, 127, block=4)] == want, seed


def test_too_few_train_good_images_name_the_category_and_the_rule():
    with pytest.raises(GadbenchError, match=r"^category 'c' has 3 train/good images; k=2 at seed 1 \(nested\) needs"):
        normal_references(table(), "c", 2, 1, "nested", 4)
