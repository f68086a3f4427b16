"""Bootstrap intervals and paired comparisons, checked against independent computations:
scikit-learn's AUROC on explicitly resampled data, DeLong's closed-form variance, and the
exact pixel AUROC of the quantised maps."""

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from benchmark.outputs.significance import compare_frame, paired
from benchmark.run.intervals import (RESAMPLES, category_replicates, histogram_auroc, pixel_histograms, resample_weights,
                                     weighted_auroc)


def _scores(seed=0, normal=60, anomalous=40, shift=1.0):
    rng = np.random.default_rng(seed)
    labels = np.r_[np.zeros(normal, int), np.ones(anomalous, int)]
    scores = np.round(rng.normal(0, 1, labels.size) + shift * labels, 1)  # rounded: ties happen
    return labels, scores


def test_each_replicate_is_sklearns_auroc_of_that_resample():
    labels, scores = _scores()
    weights = resample_weights(labels, "washer", 0)
    assert weights.shape == (RESAMPLES, labels.size)
    assert (weights[:, labels == 0].sum(1) == 60).all() and (weights[:, labels == 1].sum(1) == 40).all()  # stratified
    replicates = weighted_auroc(labels, scores, weights)
    for r in (0, 1, 517):
        repeat = weights[r].astype(int)
        expected = roc_auc_score(np.repeat(labels, repeat), np.repeat(scores, repeat))
        assert replicates[r] == pytest.approx(expected, abs=1e-12)
    assert weighted_auroc(labels, scores, np.ones((1, labels.size)))[0] == pytest.approx(roc_auc_score(labels, scores))


def delong_standard_error(labels, scores) -> float:
    """DeLong, DeLong & Clarke-Pearson (1988): the AUROC's variance from its structural components."""
    positive, negative = scores[labels == 1], scores[labels == 0]
    psi = (positive[:, None] > negative[None, :]) + 0.5 * (positive[:, None] == negative[None, :])
    v10, v01 = psi.mean(1), psi.mean(0)
    return float(np.sqrt(v10.var(ddof=1) / len(positive) + v01.var(ddof=1) / len(negative)))


@pytest.mark.parametrize("seed,shift", [(0, 1.0), (1, 0.3), (2, 2.0)])
def test_the_bootstrap_spread_matches_delongs_closed_form(seed, shift):
    labels, scores = _scores(seed, shift=shift)
    replicates = category_replicates("c", seed, [f"{i:03d}" for i in range(labels.size)], labels, scores)["image_auroc"]
    assert replicates.std() == pytest.approx(delong_standard_error(labels, scores), rel=0.12)
    assert abs(replicates.mean() - roc_auc_score(labels, scores)) < 0.01


def test_pixel_replicates_are_the_quantised_maps_auroc():
    rng = np.random.default_rng(4)
    masks = [np.zeros((20, 30), bool) for _ in range(6)]
    for mask in masks[3:]:
        mask[5:12, 8:20] = True
    maps = [rng.normal(0, 1, (20, 30)) + 1.5 * m for m in masks]
    histograms = pixel_histograms(masks, maps, bins=50)
    low, high = min(m.min() for m in maps), max(m.max() for m in maps)
    quantised = [np.minimum(np.floor((m - low) / (high - low) * 50), 49) for m in maps]
    expected = roc_auc_score(np.concatenate([m.ravel() for m in masks]), np.concatenate([q.ravel() for q in quantised]))
    assert histogram_auroc(histograms, np.ones((1, 6)))[0] == pytest.approx(expected, abs=1e-12)
    exact = roc_auc_score(np.concatenate([m.ravel() for m in masks]), np.concatenate([m.ravel() for m in maps]))
    assert abs(expected - exact) < 0.01
    # a replicate that draws image 4 twice and image 3 not at all counts image 4's pixels twice
    weights = np.array([[1, 1, 1, 0, 2, 1]], float)
    repeat_masks = [masks[i] for i in (0, 1, 2, 4, 4, 5)]
    repeat_maps = [quantised[i] for i in (0, 1, 2, 4, 4, 5)]
    again = roc_auc_score(np.concatenate([m.ravel() for m in repeat_masks]), np.concatenate([q.ravel() for q in repeat_maps]))
    assert histogram_auroc(histograms, weights)[0] == pytest.approx(again, abs=1e-12)


def _cell(method, seed, scores_by_category, labels, setting="N1"):
    per_image, per_category, replicates = {}, {}, {}
    for category, scores in scores_by_category.items():
        paths = [f"{category}/{i:03d}.png" for i in range(len(labels))]
        per_image[category] = {"path": paths, "label": list(labels), "score": list(scores)}
        per_category[category] = {"image_auroc": roc_auc_score(labels, scores), "pixel_auroc": None}
    return {"method": method, "label": method, "setting": setting, "k": 1, "abnormal": 0, "target": "t", "seed": seed, "status": "done",
            "image_auroc": np.mean([m["image_auroc"] for m in per_category.values()]), "pixel_auroc": np.nan,
            "per_category": per_category, "per_image": per_image, "bootstrap": None}


def test_identical_methods_differ_by_exactly_zero_and_a_better_one_significantly():
    labels = np.r_[np.zeros(40, int), np.ones(30, int)]
    rng = np.random.default_rng(0)
    rows = []
    for seed in (0, 1, 2):
        base = {c: rng.normal(0, 1, labels.size) + 0.8 * labels for c in ("a", "b", "c", "d", "e", "f")}
        better = {c: s + 1.5 * labels for c, s in base.items()}
        rows += [_cell("m1", seed, base, labels), _cell("m2", seed, base, labels), _cell("m3", seed, better, labels)]
    frame = pd.DataFrame(rows)
    same = paired(frame[frame.method == "m1"], frame[frame.method == "m2"], "image_auroc")
    assert same.difference == 0 and same.low == 0 and same.high == 0 and same.seeds == 3
    gain = paired(frame[frame.method == "m3"], frame[frame.method == "m1"], "image_auroc")
    assert gain.low > 0 and gain.p_bootstrap < 0.01 and gain.categories == 6
    assert gain.p_wilcoxon == pytest.approx(1 / 32)  # six categories, all won: the exact two-sided p
    table = compare_frame(frame, "m3", "m1", ["image_auroc", "pixel_auroc"])
    assert list(table.metric) == ["image_auroc"]  # no pixel replicates: nothing claimed
    assert table.difference.iloc[0] == pytest.approx(100 * gain.difference)


def test_methods_on_different_queries_are_not_paired():
    labels = np.r_[np.zeros(10, int), np.ones(10, int)]
    a = _cell("a", 0, {"x": np.arange(20.0)}, labels)
    b = _cell("b", 0, {"x": np.arange(20.0)}, labels)
    b["per_image"]["x"]["path"] = [p.replace("x/", "y/") for p in b["per_image"]["x"]["path"]]
    assert paired(pd.DataFrame([a]), pd.DataFrame([b]), "image_auroc") is None


def test_compare_tables_and_marks_on_a_real_grid(tmp_path, synthetic_root, capsys):
    """Two identical methods and one at half the resolution: compare prints a zero difference for
    the identical pair, the CSV carries intervals and marks, the LaTeX marks follow the CSV."""
    import json

    from benchmark.cli import main
    from conftest import write_experiment

    nn = {"backbone": "lite0_imagenet", "input_size": 64}
    methods = [{"name": "nn_a", "adapter": "normal_nn", "label": "NN a", "config": nn},
               {"name": "nn_b", "adapter": "normal_nn", "label": "NN b", "config": nn},
               {"name": "nn_blind", "adapter": "normal_nn", "label": "NN blind", "config": {**nn, "input_size": 32}}]
    experiment = write_experiment(tmp_path / "e.yaml", synthetic_root, methods=methods, settings=["N1"], seeds=[0, 1])
    results = str(tmp_path / "r")
    assert main(["run", str(experiment), "--results", results, "--no-progress"]) == 0
    cell = json.loads(next((tmp_path / "r" / "runs").rglob("seed0.json")).read_text())
    low, high = cell["metrics"]["intervals"]["image_auroc"]
    assert low <= cell["metrics"]["mean"]["image_auroc"] <= high and len(cell["metrics"]["bootstrap"]["pixel_auroc"]) == RESAMPLES
    capsys.readouterr()
    assert main(["compare", "nn_a", "nn_b", "-e", str(experiment), "--results", results]) == 0
    printed = capsys.readouterr().out
    assert printed.count("+0.00 ") >= 4 and "[+0.00, +0.00]" in printed  # 2 targets x image, pixel
    assert main(["compare", "nn_a", "nn_c", "-e", str(experiment), "--results", results]) == 2
    assert main(["tables", str(experiment), "--results", results]) == 0
    table = pd.read_csv(tmp_path / "r" / "tables" / "tiny" / "main.csv")
    for target in ("tiny_textures", "tiny_objects"):
        for metric in ("image_auroc", "pixel_auroc"):
            assert (table[f"{target}:{metric}:ci_low"] <= table[f"{target}:{metric}:ci_high"]).all()
            assert table[f"{target}:{metric}:not_worse"].notna().all()
    tex = (tmp_path / "r" / "tables" / "tiny" / "main.tex").read_text()
    marked = 0  # rows not significantly worse that are not (tied for) the best, which is bold instead
    for t in ("tiny_textures", "tiny_objects"):
        for m in ("image_auroc", "pixel_auroc"):
            means = table[f"{t}:{m}:mean"].round(1)
            marked += int((table[f"{t}:{m}:not_worse"].astype(bool) & (means != means.max())).sum())
    assert tex.count("$^{\\approx}$") == marked


def test_critical_difference_uses_each_methods_own_setting_and_the_friedman_closed_form():
    from benchmark.outputs.cd_diagram import block_values, critical_difference

    rows = []
    for label, value, abnormal in (("best", 0.9, 1), ("middle", 0.8, 0), ("worst", 0.7, 0)):
        for k in (1, 2):
            for setting_abnormal in ((0, 1) if abnormal else (0,)):
                # 'best' also ran N^k without the abnormal reference, scoring lowest there: not its own setting
                score = value if setting_abnormal == abnormal else 0.1
                rows.append({"method": label, "label": label, "k": k, "abnormal": setting_abnormal, "target": "t",
                             "status": "done", "per_category": {"a": {"image_auroc": score}, "b": {"image_auroc": score}}})
    frame = pd.DataFrame(rows)
    values = block_values(frame)
    assert values.shape == (4, 3) and (values["best"] == 0.9).all()
    figure, summary = critical_difference(frame, "t")
    # n = 4 blocks, k = 3 methods ranked 1, 2, 3 in each: chi2 = 12 / (n k (k + 1)) sum R_j^2 - 3 n (k + 1) = 8
    assert "Friedman chi2 = 8.0" in summary and "4 blocks" in summary
