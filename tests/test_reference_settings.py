"""Reference settings end to end: n/a cells, coverage flags and the question tables."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from benchmark.cli import main
from benchmark.outputs.golden import current_values
from benchmark.run.coverage import category_coverage, cell_coverage, coverage_flags
from benchmark.run.experiment import load_experiment
from conftest import write_experiment

NN = {"name": "nn_tiny", "adapter": "normal_nn", "label": "NN tiny", "config": {"backbone": "lite0_imagenet", "input_size": 96}}
ABLATION = {"name": "iii_tiny", "adapter": "nn_ablation", "label": "(iii) tiny",
            "config": {"backbone": "lite0_imagenet", "input_size": 96, "variant": "normal+abnormal"}}


@pytest.fixture(scope="module")
def finished(tmp_path_factory, synthetic_root):
    folder = tmp_path_factory.mktemp("settings")
    experiment = write_experiment(folder / "tiny.yaml", synthetic_root, methods=[NN, ABLATION],
                                  settings=["N1", "N1+A1", "N1+A2", "N0+A1"], seeds=[0],
                                  pairs=[["tiny_textures", "tiny_objects"]], protocol_options={"abnormal_block": 2},
                                  tables={"main": ["tiny_objects"],
                                          "abnormal_shots": {"targets": ["tiny_objects"], "kind": "abnormal_shots"},
                                          "coverage": {"targets": ["tiny_objects"], "kind": "coverage"}})
    results = folder / "results"
    assert main(["run", "--experiment", str(experiment), "--results", str(results), "--no-progress"]) == 0
    assert main(["tables", "--experiment", str(experiment), "--results", str(results)]) == 0
    return experiment, results


def test_a_method_that_cannot_run_a_setting_is_n_a_with_its_reason_never_a_file_or_a_failure(finished, capsys):
    experiment_file, results = finished
    files = {p.relative_to(results / "runs" / "clean_block2").parts[:3] for p in (results / "runs").rglob("*.json")}
    assert ("nn_tiny", "any__tiny_objects", "N1+A1") not in files and ("iii_tiny", "any__tiny_objects", "N1") not in files
    main_table = pd.read_csv(results / "tables" / "tiny" / "main.csv")
    na = main_table[(main_table.method == "NN tiny") & (main_table.setting == "N1+A2")].iloc[0]
    assert na["tiny_objects:not_applicable"] == "normal_nn uses normal references only"
    assert np.isnan(na["tiny_objects:image_auroc:mean"])
    tex = (results / "tables" / "tiny" / "main.tex").read_text()
    assert "n/a" in tex and "n/a: normal\\_nn uses normal references only" in tex
    shots = (results / "tables" / "tiny" / "abnormal_shots.csv")
    long = pd.read_csv(shots)
    row = long[(long.method == "(iii) tiny") & (long.j == 0) & (long.metric == "image_auroc")].iloc[0]
    assert row.status == "n/a: nn_ablation needs an abnormal reference" and np.isnan(row["mean"])
    values, unfinished = current_values(load_experiment(experiment_file), results)
    assert not unfinished and not any("nn_tiny" in key and "+A" in key for key in values)


def test_the_abnormal_shots_table_has_one_column_per_j_and_intervals(finished):
    _, results = finished
    long = pd.read_csv(results / "tables" / "tiny" / "abnormal_shots.csv")
    ablation = long[(long.method == "(iii) tiny") & (long.metric == "image_auroc")]
    assert sorted(zip(ablation.k.astype(str), ablation.j)) == [("0", 1), ("1", 0), ("1", 1), ("1", 2)]
    done = ablation[ablation.j > 0]
    assert (done.ci_low <= done["mean"]).all() and (done["mean"] <= done.ci_high).all()
    tex = (results / "tables" / "tiny" / "abnormal_shots.tex").read_text()
    assert "A2 Pixel" in tex and "[" in tex


def _cell(results, method, setting):
    return json.loads(next((results / "runs" / "clean_block2" / method).glob(f"*/{setting}/seed0.json")).read_text())


def test_coverage_flags_follow_the_manifest_types(finished):
    """Each anomalous query is covered exactly when one of the cell's abnormal references (as its
    manifest lists them) has the query's defect type; normal queries carry no flag."""
    _, results = finished
    for setting in ("N1+A1", "N1+A2"):
        cell = _cell(results, "iii_tiny", setting)
        for category, images in cell["per_image"].items():
            manifest = pd.read_csv(cell["manifests"][category]["path"], dtype=str, keep_default_na=False)
            types = set(manifest[manifest.role == "abnormal"].defect)
            assert len(manifest[manifest.role == "abnormal"]) == int(setting[-1])
            expected = [None if label == 0 else path.split("/")[-2] in types for path, label in zip(images["path"], images["label"])]
            assert images["covered"] == expected
            assert images["defect"] == ["" if label == 0 else path.split("/")[-2] for path, label in zip(images["path"], images["label"])]
        coverage = cell["metrics"]["coverage"]
        anomalous = sum(sum(1 for c in images["covered"] if c is not None) for images in cell["per_image"].values())
        assert coverage["covered"]["anomalous"] + coverage["uncovered"]["anomalous"] == anomalous
        assert coverage["by_construction"] is False


def test_a_part_scores_its_anomalous_queries_against_every_normal_query():
    """Constructed: the covered defect scores above every normal query, the uncovered one ties the
    middle normal one: covered AUROC 1, uncovered 0.5 (P(anomalous > normal) + 0.5 P(tie))."""
    queries = [{"label": 0, "defect": "good"}, {"label": 0, "defect": "good"}, {"label": 1, "defect": "hole"},
               {"label": 1, "defect": "scratch"}, {"label": 0, "defect": "good"}]
    covered = coverage_flags(queries, [{"defect": "hole"}])
    assert covered == [None, None, True, False, None]
    parts = category_coverage("c", 0, ["a", "b", "c", "d", "e"], [0, 0, 1, 1, 0], [0.1, 0.2, 0.9, 0.2, 0.3], covered, None)
    assert parts["covered"]["values"]["image_auroc"] == 1.0
    assert parts["uncovered"]["values"]["image_auroc"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert parts["covered"]["anomalous"] == parts["uncovered"]["anomalous"] == 1
    assert "uncovered" not in category_coverage("c", 0, ["a", "c"], [0, 1], [0.1, 0.9], [None, True], None)


def test_the_coverage_table_splits_all_into_covered_and_uncovered(finished):
    _, results = finished
    long = pd.read_csv(results / "tables" / "tiny" / "coverage.csv")
    part = long[(long.method == "(iii) tiny") & (long.setting == "N1+A1") & (long.metric == "image_auroc")]
    assert list(part.queries) == ["all anomalous", "covered", "uncovered"]
    cell = _cell(results, "iii_tiny", "N1+A1")
    covered = cell["metrics"]["coverage"]["covered"]
    assert part[part.queries == "covered"]["mean"].iloc[0] == pytest.approx(100 * covered["image_auroc"], abs=1e-3)
    nn = long[(long.method == "NN tiny")]
    assert (nn.status.str.startswith("n/a")).all()


def test_the_report_shows_the_question_tables_and_auroc_against_j(finished):
    experiment_file, results = finished
    assert main(["report", "--experiment", str(experiment_file), "--results", str(results)]) == 0
    report = (results / "report.md").read_text()
    assert "**coverage (tiny" in report and "**abnormal_shots (tiny" in report and "n/a" in report
    assert "figures/tiny_auroc_against_j.png" in report and (results / "figures" / "tiny_auroc_against_j.png").stat().st_size > 0


def test_under_the_official_protocol_every_anomalous_query_is_covered_by_construction(tmp_path, synthetic_root):
    experiment = write_experiment(tmp_path / "official.yaml", synthetic_root, methods=[ABLATION], settings=["N1+A1"], seeds=[0],
                                  pairs=[["tiny_textures", "tiny_objects"]], protocol="official",
                                  tables={"coverage": {"targets": ["tiny_objects"], "kind": "coverage"}})
    results = tmp_path / "results"
    assert main(["run", "--experiment", str(experiment), "--results", str(results), "--no-progress"]) == 0
    assert main(["tables", "--experiment", str(experiment), "--results", str(results)]) == 0
    cell = json.loads(next((results / "runs" / "official").rglob("seed0.json")).read_text())
    flags = [c for images in cell["per_image"].values() for c in images["covered"] if c is not None]
    assert flags and all(flags) and cell["metrics"]["coverage"]["by_construction"] is True
    assert cell["metrics"]["coverage"]["uncovered"]["anomalous"] == 0
    long = pd.read_csv(results / "tables" / "tiny" / "coverage.csv")
    assert (long[long.queries == "uncovered"].status == "none: covered by construction (official protocol)").all()
    assert "by construction" in (results / "tables" / "tiny" / "coverage.tex").read_text()


def test_a_cell_part_is_the_mean_over_the_categories_that_have_it_with_counts_and_intervals():
    """Two constructed categories: 'a' has a covered and an uncovered defect, 'b' only a covered one."""
    a = category_coverage("a", 0, ["n1", "n2", "c", "u"], [0, 0, 1, 1], [0.1, 0.3, 0.9, 0.2], [None, None, True, False], None)
    b = category_coverage("b", 0, ["n1", "n2", "c1", "c2"], [0, 0, 1, 1], [0.2, 0.4, 0.3, 0.5], [None, None, True, True], None)
    cell = cell_coverage({"a": a, "b": b}, by_construction=False)
    covered, uncovered = cell["covered"], cell["uncovered"]
    assert (covered["anomalous"], covered["categories"], uncovered["anomalous"], uncovered["categories"]) == (3, 2, 1, 1)
    assert covered["image_auroc"] == pytest.approx((1.0 + 0.75) / 2)  # a: 0.9 beats both; b: 3 of its 4 pairs
    assert uncovered["image_auroc"] == pytest.approx(0.5)  # 0.2 beats 0.1, loses to 0.3
    low, high = covered["image_auroc_interval"]
    assert 0 <= low <= high <= 1 and len(covered["bootstrap"]["image_auroc"]) == 1000
    assert covered["pixel_auroc"] is None and covered["pixel_auroc_interval"] is None  # no maps, no pixel value
    nothing = cell_coverage({"b": b}, by_construction=True)
    assert nothing["uncovered"] == {"anomalous": 0, "categories": 0} and nothing["by_construction"] is True
    only_uncovered = category_coverage("u", 0, ["n1", "n2", "u"], [0, 0, 1], [0.1, 0.3, 0.2], [None, None, False], None)
    later = cell_coverage({"u": only_uncovered}, by_construction=False)  # the first part is absent, the second still counted
    assert later["covered"] == {"anomalous": 0, "categories": 0} and later["uncovered"]["image_auroc"] == pytest.approx(0.5)
    scores = np.random.default_rng(0).random(10).tolist()  # 7 normal, 3 covered: AUROCs in 21sts
    wide = category_coverage("w", 0, list("abcdefghij"), [0] * 7 + [1] * 3, scores, [None] * 7 + [True] * 3, None)
    replicates = np.asarray(cell_coverage({"w": wide}, by_construction=False)["covered"]["bootstrap"]["image_auroc"])
    assert (np.round(replicates, 6) == replicates).all() and (np.round(replicates, 5) != replicates).any()  # six decimals


def test_a_parts_pixel_auroc_is_that_of_its_images_quantised_maps():
    """With maps, each part's pixel AUROC is scikit-learn's on the part's images' quantised maps
    (the normal queries' pixels and the part's defect images' pixels); a category whose part has
    anomalous but no normal query has no such part, and the loop goes on to the next part."""
    from sklearn.metrics import roc_auc_score

    from benchmark.run.intervals import pixel_histograms

    rng = np.random.default_rng(4)
    labels = [0, 1, 0, 1, 1]
    covered = [None, True, None, False, True]
    masks = [np.zeros((4, 4), bool) if y == 0 else rng.random((4, 4)) < 0.4 for y in labels]
    maps = [rng.random((4, 4)) + 0.5 * m for m in masks]
    histograms = pixel_histograms(masks, maps, bins=8)
    parts = category_coverage("c", 0, ["a", "b", "c", "d", "e"], labels, [0.1, 0.8, 0.3, 0.2, 0.9], covered, histograms)
    low, high = min(m.min() for m in maps), max(m.max() for m in maps)
    levels = [np.minimum(((m - low) * 8 / (high - low)).astype(int), 7) for m in maps]
    for part, images in (("covered", [0, 1, 2, 4]), ("uncovered", [0, 2, 3])):
        expected = roc_auc_score(np.concatenate([masks[i].ravel() for i in images]),
                                 np.concatenate([levels[i].ravel() for i in images]))
        assert parts[part]["values"]["pixel_auroc"] == pytest.approx(expected, abs=1e-12)
        assert parts[part]["replicates"]["pixel_auroc"].shape == (1000,)
        assert parts[part]["values"]["image_auroc"] == pytest.approx(
            roc_auc_score([labels[i] for i in images], [[0.1, 0.8, 0.3, 0.2, 0.9][i] for i in images]))
    nothing_covered = category_coverage("c", 0, ["a", "b"], [1, 0], [0.9, 0.1], [False, None], None)
    assert set(nothing_covered) == {"uncovered"}
    no_normal = category_coverage("c", 0, ["a", "b"], [1, 1], [0.9, 0.1], [True, False], None)
    assert no_normal == {}
