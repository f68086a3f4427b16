"""The AUROC regression gate: passes on unchanged results, fails on a deliberate scorer change."""

import json

from benchmark.cli import main
from conftest import write_experiment

NN = {"name": "nn", "adapter": "normal_nn", "label": "NN", "config": {"backbone": "lite0_imagenet", "input_size": 96}}


def run(experiment, results):
    assert main(["run", "--experiment", str(experiment), "--results", str(results), "--no-progress"]) == 0


def test_check_passes_after_update_and_fails_when_a_scorer_changes(tmp_path, synthetic_root, capsys):
    experiment = write_experiment(tmp_path / "e.yaml", synthetic_root, methods=[NN], settings=["N1"], seeds=[0])
    results, golden = tmp_path / "results", tmp_path / "golden"
    run(experiment, results)
    assert main(["check", "--experiment", str(experiment), "--results", str(results), "--golden", str(golden), "--update"]) == 0
    stored = json.loads((golden / "tiny.json").read_text())
    assert stored["tolerance"] == 0.01 and len(stored["cells"]) == 2
    assert all(0.5 < v["image_auroc"] <= 1 for v in stored["cells"].values())
    capsys.readouterr()
    assert main(["check", "--experiment", str(experiment), "--results", str(results), "--golden", str(golden)]) == 0
    assert "every cell within tolerance" in capsys.readouterr().out

    # a deliberate change to the scorer: the image score becomes the mean of ALL patches, not the top 1 %
    changed = {**NN, "config": {**NN["config"], "top_percent": 100.0}}
    write_experiment(tmp_path / "e.yaml", synthetic_root, methods=[changed], settings=["N1"], seeds=[0])
    run(experiment, results)  # the config hash changed: the cells are recomputed
    assert main(["check", "--experiment", str(experiment), "--results", str(results), "--golden", str(golden)]) == 1
    out = capsys.readouterr().out
    assert "moved: nn | * -> tiny_" in out and "image_auroc" in out and "FAILED" in out


def test_check_without_a_golden_file_fails_and_says_how_to_make_one(tmp_path, synthetic_root, capsys):
    experiment = write_experiment(tmp_path / "e.yaml", synthetic_root, methods=[NN], settings=["N1"], seeds=[0])
    assert main(["check", "--experiment", str(experiment), "--results", str(tmp_path / "r"), "--golden", str(tmp_path / "g")]) == 1
    assert "--update" in capsys.readouterr().out
