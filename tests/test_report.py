"""gadbench report: the figures exist and the qualitative grid has one panel per image and method."""

import json

import pytest

from benchmark.cli import main
from benchmark.run.experiment import load_experiment
from benchmark.outputs.report import qualitative_grid
from benchmark.run.qualitative import qualitative_maps
from benchmark.run.runner import Runner
from benchmark.outputs.tables import collect
from benchmark.run.grid import run_grid
from conftest import write_experiment

METHODS = [{"name": "nn_tiny", "adapter": "normal_nn", "label": "NN tiny", "config": {"backbone": "lite0_imagenet", "input_size": 64}},
           {"name": "abl_iii", "adapter": "nn_ablation", "label": "(iii) tiny",
            "config": {"variant": "normal+abnormal", "backbone": "lite0_imagenet", "input_size": 64}},
           {"name": "abl_i", "adapter": "nn_ablation", "label": "(i) tiny",
            "config": {"variant": "normal", "backbone": "lite0_imagenet", "input_size": 64}}]


@pytest.fixture(scope="module")
def finished(tmp_path_factory, synthetic_root):
    tmp = tmp_path_factory.mktemp("report")
    experiment = write_experiment(tmp / "tiny.yaml", synthetic_root, methods=METHODS, settings=["N1", "N1+A1"], seeds=[0, 1])
    results = tmp / "results"
    assert main(["run", "-e", str(experiment), "--results", str(results), "--no-progress"]) == 0
    return experiment, results


def test_cells_keep_per_image_scores_for_curves(finished):
    _, results = finished
    cell = json.loads(next((results / "runs").rglob("seed0.json")).read_text())
    for category, scores in cell["per_image"].items():
        assert len(scores["path"]) == len(scores["label"]) == len(scores["score"]) == cell["counts"][category]["queries"]
        assert sum(scores["label"]) == cell["counts"][category]["anomalous"]


def test_report_writes_markdown_tables_and_every_figure(finished, capsys):
    experiment, results = finished
    assert main(["report", "-e", str(experiment), "--results", str(results)]) == 0
    report = (results / "report.md").read_text()
    figures = sorted(p.name for p in (results / "figures").glob("*.png"))
    assert figures == ["tiny_abnormal_reference_gain.png", "tiny_critical_difference.png", "tiny_per_category_tiny_objects.png",
                       "tiny_per_category_tiny_textures.png", "tiny_qualitative.png", "tiny_roc_tiny_objects_hex_nut.png"]
    for name in figures:
        assert f"(figures/{name})" in report
        assert (results / "figures" / name).stat().st_size > 5000  # a drawn picture, not an empty canvas
    assert "NN tiny" in report and "(iii) tiny" in report
    assert main(["report", "-e", str(experiment), "--results", str(results), "--roc-category", "tiny_textures/weave"]) == 0
    assert (results / "figures" / "tiny_roc_tiny_textures_weave.png").is_file()
    assert main(["report", "-e", str(experiment), "--results", str(results), "--roc-category", "bottle"]) == 2
    assert "--roc-category 'bottle': no finished cell has it" in capsys.readouterr().err


def test_qualitative_grid_has_image_mask_and_one_map_per_method_per_row(finished):
    experiment_file, results = finished
    experiment = load_experiment(experiment_file)
    frame = collect(experiment, results)
    panels = qualitative_maps(Runner(experiment, results, show_progress=False), experiment, frame, k=1, images_per_category=2)
    categories = 3 + 3  # hex_nut, tablet, washer; terrazzo, weave, wood
    assert len(panels) == categories * 2
    assert all(set(maps) == {"NN tiny", "(iii) tiny", "(i) tiny"} and all(m.shape == row_size for m in maps.values())
               for _, _, row, maps, _ in panels for row_size in [maps["NN tiny"].shape])
    figure = qualitative_grid(panels, [m.label for m in experiment.methods])
    assert len(figure.axes) == len(panels) * (2 + 3)


def test_the_report_never_retrains_a_model_whose_checkpoint_is_gone(tmp_path, synthetic_root):
    from benchmark.run.record import CellRecord
    from benchmark.run.results import cell_path, write_json_atomic

    nagl = {"name": "nagl_tiny", "adapter": "nagl", "label": "NAGL tiny",
            "config": {"backbone": "lite0_imagenet", "input_size": 64}}
    experiment = load_experiment(write_experiment(tmp_path / "e.yaml", synthetic_root, methods=[METHODS[0], nagl],
                                                  settings=["N1", "N1+A1"], seeds=[0], pairs=[["tiny_objects", "tiny_textures"]]))
    runner = Runner(experiment, tmp_path / "results", show_progress=False)
    nn_cells = [c for c in experiment.cells() if c.method.name == "nn_tiny"]
    assert run_grid(runner, nn_cells)["done"] == 1
    nagl_cell = next(c for c in experiment.cells() if c.method.name == "nagl_tiny")
    finished = CellRecord(cell=runner.identity(nagl_cell), cell_key=runner.cell_key(nagl_cell), protocol=experiment.protocol,
                          status="done", checkpoint=str(tmp_path / "gone" / "model.pt"))
    write_json_atomic(finished.to_json(), cell_path(tmp_path / "results", nagl_cell, experiment.runs_folder))
    panels = qualitative_maps(runner, experiment, collect(experiment, tmp_path / "results"), k=1, images_per_category=1)
    assert panels and all(maps["NAGL tiny"] == "checkpoint missing: rerun the cell" for _, _, _, maps, _ in panels)
    assert not (tmp_path / "results" / "checkpoints").exists()  # nothing was trained
