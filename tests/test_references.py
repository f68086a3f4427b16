import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmark.data.mvtec import read_mvtec
from benchmark.errors import GadbenchError
from benchmark.data.references import ensure_manifest, plan_category, read_manifest
from benchmark.data.settings import parse_setting


@pytest.fixture
def data(tmp_path, synthetic_root):
    root = tmp_path / "objects"
    shutil.copytree(synthetic_root / "objects", root)
    return root, read_mvtec(root)


def _manifest(data, tmp_path, setting, seed, protocol="clean", category="washer", block=1):
    root, table = data
    return ensure_manifest(tmp_path / "refs", "objects", root, table, category, parse_setting(setting), seed, protocol, 4,
                           127, abnormal_block=block)


def test_parse_setting():
    assert parse_setting("N^4+A^1").label == "N4+A1"
    assert parse_setting("N2").k_abnormal == 0
    assert parse_setting("N1+A0") == parse_setting("N1")
    assert (parse_setting("N0+A2").k_normal, parse_setting("N0+A2").k_abnormal) == (0, 2)
    assert parse_setting("N0+A2").latex == "$N^{0}$+$A^{2}$"
    assert parse_setting("Nall").k_normal == -1 and parse_setting("Nall+A1").label == "Nall+A1"
    assert parse_setting("N4+A2").official_arguments == "--n_shots 4 --a_shots 2"
    assert parse_setting("Nall").official_arguments == "--n_shots -1 --a_shots 0"
    for text, fragment in (("A1", "not understood"), ("N0", "no reference at all"), ("N-1", "not understood")):
        with pytest.raises(GadbenchError, match=fragment):
            parse_setting(text)


def test_clean_normals_are_nested_across_k_and_disjoint_across_seeds(data, tmp_path):
    names = {}
    for seed in (0, 1):
        for k in (1, 2, 4):
            _, manifest = _manifest(data, tmp_path, f"N{k}", seed)
            names[seed, k] = list(manifest[manifest.role == "normal"].path)
    for seed in (0, 1):
        assert names[seed, 1] == names[seed, 2][:1] and names[seed, 2] == names[seed, 4][:2]
    assert not set(names[0, 4]) & set(names[1, 4])
    root, table = data
    good = sorted(table[(table.category == "washer") & (table.split == "train")].path)
    assert names[1, 2] == good[4:6]  # sorted train/good[seed * 4 : seed * 4 + k]


def test_official_normals_follow_the_nagl_slice(data, tmp_path):
    _, table = data
    good = sorted(table[(table.category == "washer") & (table.split == "train")].path)
    _, manifest = _manifest(data, tmp_path, "N2", 1, protocol="official")
    assert list(manifest[manifest.role == "normal"].path) == good[2:4]  # [seed*k, (seed+1)*k)


def test_clean_abnormal_reference_is_removed_from_the_queries_of_every_setting(data, tmp_path):
    _, table = data
    tests = table[(table.category == "washer") & (table.split == "test")]
    plans = {}
    for setting in ("N1", "N1+A1", "N4+A1"):
        path, manifest = _manifest(data, tmp_path, setting, 0)
        plans[setting] = plan_category(path, manifest, table, "washer", "clean")
    [abnormal] = plans["N1+A1"].groups[0].abnormal
    assert abnormal["label"] == 1 and abnormal["mask"]
    for plan in plans.values():
        queries = plan.groups[0].queries
        assert abnormal["path"] not in set(queries.path)
        assert plan.removed_from_queries == 1 and len(queries) == len(tests) - 1
    assert plans["N4+A1"].groups[0].abnormal[0]["path"] == abnormal["path"]  # one per (category, seed)
    assert list(plans["N1"].groups[0].queries.path) == list(plans["N1+A1"].groups[0].queries.path)


def test_official_protocol_groups_queries_by_a_type_matched_reference_kept_in_the_test_set(data, tmp_path):
    _, table = data
    path, manifest = _manifest(data, tmp_path, "N1+A1", 1, protocol="official")
    plan = plan_category(path, manifest, table, "washer", "official")
    tests = table[(table.category == "washer") & (table.split == "test")]
    assert plan.removed_from_queries == 0
    assert sum(len(g.queries) for g in plan.groups) == len(tests)
    for group in plan.groups:
        [ref] = group.abnormal
        same_type = sorted(tests[tests.defect == ref["defect"]].path)
        assert ref["path"] == same_type[1]  # the seed-th sorted file of its type
        assert ref["path"] in set(group.queries.path)  # stays in the test set and is scored
        assert set(group.queries[group.queries.label == 1].defect) == {ref["defect"]}
    assignments = manifest[manifest.role == "assignment"]
    assert len(assignments) == (tests.label == 0).sum()
    assert assignments.defect.nunique() == 1  # one draw per (category, setting, seed), as the code
    # the random type choice for normal queries is seeded: a fresh manifest draws the same
    shutil.rmtree(tmp_path / "refs")
    _, again = _manifest(data, tmp_path, "N1+A1", 1, protocol="official")
    assert list(again.defect) == list(manifest.defect)


def test_a_changed_reference_file_is_an_error_not_a_redraw(data, tmp_path):
    path, manifest = _manifest(data, tmp_path, "N1+A1", 0)
    reference = manifest[manifest.role == "normal"].path.iloc[0]
    with open(reference, "ab") as handle:
        handle.write(b"changed")
    with pytest.raises(GadbenchError, match="changed on disk"):
        _manifest(data, tmp_path, "N1+A1", 0)


def test_a_manifest_pointing_outside_the_data_root_is_rejected(data, tmp_path):
    root, _ = data
    path, _ = _manifest(data, tmp_path, "N1", 0)
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    frame.loc[0, "path"] = "../elsewhere/000.png"
    frame.to_csv(path, index=False)
    with pytest.raises(GadbenchError, match="outside the data root"):
        read_manifest(path, root)


def test_k_larger_than_the_normal_images_is_a_clear_error(data, tmp_path):
    with pytest.raises(GadbenchError, match="category 'washer' has 8 train/good images; k=4 at seed 2"):
        _manifest(data, tmp_path, "N4", 2)


def test_a_reference_missing_from_the_current_table_is_a_clear_error(data, tmp_path):
    root, table = data
    path, manifest = _manifest(data, tmp_path, "N1+A1", 0)
    abnormal = manifest[manifest.role == "abnormal"].path.iloc[0]
    smaller = table[table.path != abnormal]  # e.g. a dataset subsampled differently than when the manifest was drawn
    with pytest.raises(GadbenchError, match="is not in the data set's current sample table"):
        plan_category(path, manifest, smaller, "washer", "clean")


def test_official_protocol_needs_a_seed_th_file_of_every_defect_type(data, tmp_path):
    with pytest.raises(GadbenchError, match="has 2 test images; the official protocol's 1 abnormal reference\\(s\\) for seed 2 need 3"):
        _manifest(data, tmp_path, "N1+A1", 2, protocol="official")


def test_an_official_manifest_with_per_query_type_draws_is_refused(data, tmp_path):
    _, table = data
    path, manifest = _manifest(data, tmp_path, "N1+A1", 0, protocol="official")
    assignment = manifest.role == "assignment"
    types = sorted(manifest[manifest.role == "abnormal"].defect)
    manifest.loc[assignment, "defect"] = [types[i % len(types)] for i in range(assignment.sum())]
    with pytest.raises(GadbenchError, match="assigned several defect types"):
        plan_category(path, manifest, table, "washer", "official")


def _paths(manifest, role):
    return list(manifest[manifest.role == role].path)


def test_clean_abnormal_references_nest_across_j_within_a_seed(data, tmp_path):
    """A^1 c A^2 c A^4 within a seed, each with defect pixels, drawn without replacement; the
    first stays the reference the default block (1) draws, so no existing manifest moves."""
    root, table = data
    drawn = {j: _paths(_manifest(data, tmp_path, f"N1+A{j}", 0, block=4)[1], "abnormal") for j in (1, 2, 4)}
    assert len(set(drawn[4])) == 4
    assert drawn[1] == drawn[2][:1] and drawn[2] == drawn[4][:2]
    _, alone = _manifest(data, tmp_path, "N1+A1", 0)  # block 1: today's rule and file
    assert _paths(alone, "abnormal") == drawn[1]
    masks = table.set_index("path")["mask"]
    from benchmark.data.images import image_size, load_mask
    assert all(load_mask(masks[p], image_size(p), 127).any() for p in drawn[4])
    other_seed = _paths(_manifest(data, tmp_path, "N1+A4", 1, block=4)[1], "abnormal")
    assert other_seed != drawn[4]


def test_every_clean_setting_of_a_seed_scores_one_query_set(data, tmp_path):
    """The whole block leaves the queries of N<k>, N<k>+A<j> and N0+A<j> alike."""
    _, table = data
    queries = {}
    for setting in ("N1", "N2+A1", "N1+A2", "N4+A4", "N0+A2", "Nall"):
        path, manifest = _manifest(data, tmp_path, setting, 0, block=4)
        plan = plan_category(path, manifest, table, "washer", "clean")
        queries[setting] = sorted(plan.groups[0].queries.path)
        assert plan.removed_from_queries == 4
        assert len(plan.groups[0].abnormal) == parse_setting(setting).k_abnormal
    assert len({tuple(q) for q in queries.values()}) == 1
    _, block = _manifest(data, tmp_path, "N1", 0, block=4)
    assert not set(_paths(block, "excluded")) & set(queries["N1"])


def test_n0_has_no_normal_reference_and_nall_has_every_train_good_image(data, tmp_path):
    _, table = data
    good = sorted(table[(table.category == "washer") & (table.split == "train")].path)
    _, n0 = _manifest(data, tmp_path, "N0+A1", 0)
    assert _paths(n0, "normal") == [] and len(_paths(n0, "abnormal")) == 1
    _, everything = _manifest(data, tmp_path, "Nall", 1, protocol="official")
    assert sorted(_paths(everything, "normal")) == good


def test_a_larger_j_than_the_block_or_the_category_has_is_a_clear_error(data, tmp_path):
    with pytest.raises(GadbenchError, match="abnormal_block is 1; raise abnormal_block to at least 2"):
        _manifest(data, tmp_path, "N1+A2", 0)
    _, table = data
    masked = table[(table.category == "washer") & (table.label == 1) & table["mask"].notna()]
    with pytest.raises(GadbenchError, match=f"has {len(masked)} defective test images with a non-empty mask; setting"
                                            f" N1\\+A{len(masked) + 1} needs {len(masked) + 1}"):
        _manifest(data, tmp_path, f"N1+A{len(masked) + 1}", 0, block=len(masked) + 1)


def test_official_abnormal_references_are_the_seed_th_slice_of_j_sorted_files_per_type(data, tmp_path):
    _, table = data
    tests = table[(table.category == "washer") & (table.split == "test")]
    counts = tests[tests.label == 1].defect.value_counts()
    j = int(counts.min())  # every type has j files: seed 0 takes all j of the smallest
    path, manifest = _manifest(data, tmp_path, f"N1+A{j}", 0, protocol="official")
    plan = plan_category(path, manifest, table, "washer", "official")
    assert [g.abnormal[0]["defect"] for g in plan.groups] == sorted(counts.index)
    for group in plan.groups:
        defect = group.abnormal[0]["defect"]
        same_type = sorted(tests[tests.defect == defect].path)
        assert [r["path"] for r in group.abnormal] == same_type[:j]  # [seed*j, (seed+1)*j)
        assert set(group.queries[group.queries.label == 1].defect) == {defect}
    path, manifest = _manifest(data, tmp_path, "N1+A1", 1, protocol="official")
    for group in plan_category(path, manifest, table, "washer", "official").groups:
        assert [r["path"] for r in group.abnormal] == sorted(tests[tests.defect == group.abnormal[0]["defect"]].path)[1:2]
    short = sorted(t for t, c in counts.items() if c < 2 * j)[0]
    with pytest.raises(GadbenchError, match=f"defect type '{short}' has {counts[short]} test images; the official protocol's"
                                            f" {j} abnormal reference\\(s\\) for seed 1 need {2 * j}"):
        _manifest(data, tmp_path, f"N1+A{j}", 1, protocol="official")


def test_the_clean_block_follows_its_documented_draw_and_skips_empty_masks(data, tmp_path):
    """Re-derived from docs/protocol.md: generator default_rng([seed, crc32(category)]); a defect
    type uniformly among the sorted types, then a file uniformly among its sorted files; a file
    whose mask is empty is never taken, and the block still fills from the others."""
    import zlib

    from benchmark.data.reference_rules import clean_abnormal_block

    root, table = data
    defects = table[(table.category == "washer") & (table.label == 1)]
    types = sorted(defects.defect.unique())
    rng = np.random.default_rng([0, zlib.crc32(b"washer")])
    first_type = types[rng.integers(len(types))]
    files = sorted(defects[defects.defect == first_type].path)
    expected_first = files[rng.integers(len(files))]
    block = clean_abnormal_block(table, "washer", 0, 127, block=4)
    assert block[0].path == expected_first
    from PIL import Image

    emptied = block[1]
    Image.fromarray(np.zeros_like(np.asarray(Image.open(emptied["mask"])))).save(emptied["mask"])
    again = clean_abnormal_block(table, "washer", 0, 127, block=len(defects))  # more than there are: it stops at the others
    assert again[0].path == expected_first and emptied.path not in {r.path for r in again}
    assert len(again) == len(defects) - 1 and len({r.path for r in again}) == len(again)


def test_a_limit_keeps_normal_and_anomalous_queries_alternately_in_path_order():
    from benchmark.data.references import Plan, QueryGroup, limit_queries

    def rows(*items):
        return pd.DataFrame([{"path": p, "label": label} for p, label in items])

    first = QueryGroup([], rows(("n3", 0), ("a2", 1), ("n1", 0)))
    second = QueryGroup([{"path": "ref"}], rows(("a1", 1), ("n2", 0), ("n4", 0), ("n5", 0)))
    plan = Plan(Path("m.csv"), rows(("r", 0)), [first, second], 3)
    kept = lambda p: [list(g.queries.path) for g in p.groups]  # noqa: E731
    assert kept(limit_queries(plan, 2)) == [["n1"], ["a1"]]
    five = limit_queries(plan, 5)  # n1 a1 n2 a2, then the longer list goes on: n3
    assert sorted(p for group in kept(five) for p in group) == ["a1", "a2", "n1", "n2", "n3"]
    assert kept(five) == [["n3", "a2", "n1"], ["a1", "n2"]]  # each group keeps its own rows, in its own order
    only_normal = limit_queries(Plan(Path("m.csv"), plan.normal, [first], 0), 1)
    assert kept(only_normal) == [["n1"]]
    assert kept(limit_queries(Plan(Path("m.csv"), plan.normal, [QueryGroup([], rows(("a9", 1), ("a8", 1)))], 0), 1)) == [["a8"]]
    dropped = limit_queries(plan, 1)  # a group left without a query is dropped, the rest kept whole
    assert kept(dropped) == [["n1"]] and dropped.groups[0].abnormal == [] and dropped.removed_from_queries == 3
    assert dropped.normal is plan.normal and dropped.manifest_path == Path("m.csv")


def test_an_empty_mask_drawn_first_is_set_aside_for_the_rest_of_the_block(data):
    """Re-derived from the documented draw: the first draw's file has an empty mask, so the type
    and file are drawn again; the block's second reference is then drawn from the files left,
    the empty one excluded (one type uniformly among the types left, then one of its files)."""
    import zlib

    from PIL import Image

    from benchmark.data.reference_rules import clean_abnormal_block

    _, table = data
    defects = table[(table.category == "washer") & (table.label == 1)]
    rng = np.random.default_rng([0, zlib.crc32(b"washer")])

    def draw(pool):
        types = sorted(pool.defect.unique())
        files = sorted(pool[pool.defect == types[rng.integers(len(types))]].path)
        return files[rng.integers(len(files))]

    empty = draw(defects)
    mask = defects[defects.path == empty]["mask"].iloc[0]
    Image.fromarray(np.zeros_like(np.asarray(Image.open(mask)))).save(mask)
    first = draw(defects)
    assert first != empty  # this seed draws another file next (else the check below would not reach the rule)
    second = draw(defects[~defects.path.isin({empty, first})])
    assert [r.path for r in clean_abnormal_block(table, "washer", 0, 127, block=2)] == [first, second]


def test_a_manifest_file_lists_relative_paths_their_sha256_and_an_empty_mask_for_normal_rows(data, tmp_path):
    import hashlib

    root, _ = data
    path, _ = _manifest(data, tmp_path, "N2+A1", 0)
    raw = pd.read_csv(path, keep_default_na=False)
    normal, abnormal = raw[raw.role == "normal"], raw[raw.role == "abnormal"]
    assert len(normal) == 2 and (normal["mask"] == "").all() and len(abnormal) == 1
    assert abnormal["mask"].iloc[0].startswith("washer/ground_truth/") and not raw.path.str.startswith("/").any()
    first = raw.iloc[0]
    assert first.sha256 == hashlib.sha256((root / first.path).read_bytes()).hexdigest()
    assert "Unnamed: 0" not in raw.columns  # no index column


def test_an_official_normal_only_plan_scores_every_test_image_in_one_group(data, tmp_path):
    _, table = data
    path, manifest = _manifest(data, tmp_path, "N2", 0, protocol="official")
    plan = plan_category(path, manifest, table, "washer", "official")
    tests = table[(table.category == "washer") & (table.split == "test")]
    assert plan.manifest_path == path and plan.removed_from_queries == 0 and len(plan.groups) == 1
    assert list(plan.normal.path) == _paths(manifest, "normal") and len(plan.normal) == 2
    assert plan.groups[0].abnormal == [] and sorted(plan.groups[0].queries.path) == sorted(tests.path)
    clean_path, clean = _manifest(data, tmp_path, "N2", 0)
    assert plan_category(clean_path, clean, table, "washer", "clean").manifest_path == clean_path


def test_manifest_files_are_named_by_setting_and_seed_and_a_clean_block_other_than_one(data, tmp_path):
    from benchmark.data.references import manifest_path

    root = tmp_path / "refs"
    name = lambda protocol, setting, block: manifest_path(root, protocol, "d", "c", parse_setting(setting), 2, block)  # noqa: E731
    assert name("clean", "N4+A2", 1) == root / "clean" / "d" / "c" / "n4_a2_seed2.csv"
    assert name("clean", "N4+A2", 4).name == "n4_a2_seed2_block4.csv"
    assert name("official", "N4+A2", 4).name == "n4_a2_seed2.csv"  # the official slices have no block
    assert name("clean", "Nall", 1).name == "nall_a0_seed2.csv"


def test_a_manifest_read_back_resolves_paths_and_masks_under_the_data_root(data, tmp_path):
    root, _ = data
    _, manifest = _manifest(data, tmp_path, "N1+A1", 0)
    abnormal, normal = manifest[manifest.role == "abnormal"].iloc[0], manifest[manifest.role == "normal"].iloc[0]
    assert Path(abnormal["path"]).is_file() and Path(abnormal["path"]).is_relative_to(root)
    assert Path(abnormal["mask"]).is_file() and Path(abnormal["mask"]).is_relative_to(root)
    assert pd.isna(normal["mask"])


def test_an_official_plan_with_two_assigned_types_or_a_normal_query_without_one_is_refused_naming_it(data, tmp_path):
    _, table = data
    path, manifest = _manifest(data, tmp_path, "N1+A1", 0, protocol="official")
    types = sorted(set(manifest[manifest.role == "abnormal"].defect))
    assert len(types) >= 2 and plan_category(path, manifest, table, "washer", "official").manifest_path == path
    assignment = manifest.index[manifest.role == "assignment"]
    assert (manifest.loc[assignment, "mask"].isna()).all()  # an assignment row names no mask
    two = manifest.copy()
    two.loc[assignment[0], "defect"] = next(t for t in types if t != manifest.loc[assignment[0], "defect"])
    with pytest.raises(GadbenchError, match="assigned several defect types"):  # two types are already several
        plan_category(path, two, table, "washer", "official")
    dropped = manifest.drop(index=assignment[1])
    missing = manifest.loc[assignment[1], "path"]
    with pytest.raises(GadbenchError, match="^" + re.escape(f"{path}: normal query {missing} has no assignment row")):
        plan_category(path, dropped, table, "washer", "official")


def test_a_manifest_path_outside_the_data_root_is_named_with_its_manifest(data, tmp_path):
    root, _ = data
    path, _ = _manifest(data, tmp_path, "N1+A1", 0)
    for column, row in (("path", 0), ("mask", None)):
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        row = frame.index[frame["mask"] != ""][0] if row is None else row
        frame.loc[row, column] = "../elsewhere/000.png"
        frame.to_csv(path, index=False)
        with pytest.raises(GadbenchError, match="^" + re.escape(f"{path}: ") + ".*outside the data root"):
            read_manifest(path, root)
        path.unlink()
        path, _ = _manifest(data, tmp_path, "N1+A1", 0)


def test_an_official_plan_ignores_the_assignment_of_a_normal_query_no_longer_in_the_table(data, tmp_path):
    """Assignment rows name queries, not references: a table subsampled since leaves them unused."""
    _, table = data
    path, manifest = _manifest(data, tmp_path, "N1+A1", 0, protocol="official")
    gone = manifest[manifest.role == "assignment"].path.iloc[0]
    plan = plan_category(path, manifest, table[table.path != gone], "washer", "official")
    queries = pd.concat([g.queries for g in plan.groups])
    assert gone not in set(queries.path) and len(queries) == ((table.category == "washer") & (table.split == "test")).sum() - 1


def test_a_manifest_drawn_with_a_larger_clean_block_is_kept_under_the_blocks_name(data, tmp_path):
    path, _ = _manifest(data, tmp_path, "N1+A1", 0, block=2)
    assert path == tmp_path / "refs" / "clean" / "objects" / "washer" / "n1_a1_seed0_block2.csv" and path.is_file()


def test_a_data_root_reached_through_a_symbolic_link_writes_the_same_relative_manifest(data, tmp_path):
    root, table = data
    link = tmp_path / "linked"
    link.symlink_to(root, target_is_directory=True)
    through_link = ensure_manifest(tmp_path / "via_link", "objects", link, read_mvtec(link), "washer", parse_setting("N1+A1"),
                                   0, "clean", 4, 127, abnormal_block=1)[0]
    direct = _manifest(data, tmp_path, "N1+A1", 0)[0]
    assert through_link.read_text() == direct.read_text() and "../" not in direct.read_text()
