"""The planning pass: every cell of every experiment is planned from the data alone (no model, no
file written), and every shortage is reported at once, one line each with the option that fixes
it. The default rehearsal's stand-ins are sized by the grids they rehearse, so it plans clean."""

from __future__ import annotations

import pytest
import yaml

from benchmark.cli import main
from benchmark.data.standin import generate_brats, generate_mvtec
from benchmark.run.catalogue import DataCatalogue
from benchmark.run.planning import shortages
from benchmark.run.rehearsal import LAYOUT, default_experiments, prepare_standin_data, standin_counts


@pytest.fixture(scope="module")
def standin_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("standins")
    prepare_standin_data(root, None, standin_counts(default_experiments(root)), echo=lambda *_: None)
    return root


def test_the_default_rehearsal_plans_every_cell_without_a_shortage(standin_root, tmp_path):
    experiments = default_experiments(standin_root)
    assert {"main", "ablation"} <= {e.name for e in experiments}
    planned = 0
    for experiment in experiments:  # the whole grids: every seed, setting and pair
        cells = experiment.cells()
        assert [s.line() for s in shortages(DataCatalogue(experiment, tmp_path / "results"), cells)] == []
        planned += len(cells)
    assert any(t == "brats" for e in experiments for _, t in e.pairs)  # the target that used to be short
    assert planned > 100 and not (tmp_path / "results").exists()  # planning writes nothing


def test_stand_ins_of_a_fixed_size_are_short_for_the_grid_and_every_shortage_is_named(tmp_path):
    """The stand-ins as they were (8 BraTS subjects, 12 train/good per category): 2 train/good brain
    slices, where the main grid needs 4 at seed 0 (N4) and up to 12 at seed 2."""
    root = tmp_path / "data"
    generate_brats(root / LAYOUT["brats_nifti"], naming="2023", subjects=8)
    assert main(["prepare", "brats", "--src", str(root / LAYOUT["brats_nifti"]), "--out", str(root / LAYOUT["brats"]),
                 "--modality", "t2f"]) == 0
    generate_mvtec(root / LAYOUT["mvtec"], categories=["bottle"], counts={"train_good": 12})
    main_grid = next(e for e in default_experiments(root) if e.name == "main")
    lines = [s.line() for s in shortages(DataCatalogue(main_grid, tmp_path / "results"), main_grid.cells())]
    brain = [line for line in lines if line.startswith("brats/brain")]
    assert len(brain) == 2 + 6 + 6  # seed 0: N4 and N4+A1; seeds 1 and 2: all six settings
    assert all("use fewer seeds or a smaller k" in line for line in brain)
    assert any(line.startswith("visa: ") for line in lines)  # an absent data set is a line of its own


def test_a_training_that_lacks_source_test_images_is_a_planning_line_not_a_failed_cell(tmp_path, capsys):
    """NAGL draws its episodes in the source's test split (k + 1 normal images in a category):
    5 normal test images are enough for k = 4 and not for k = 8 (nested_block raised to allow it)."""
    source, target = tmp_path / "source", tmp_path / "target"
    generate_mvtec(source, categories=["grid"], counts={"train_good": 12, "test_good": 5})
    generate_mvtec(target, categories=["bottle"], counts={"train_good": 12})
    nagl = {"name": "nagl_tiny", "adapter": "nagl", "label": "NAGL", "config": {"backbone": "lite0_imagenet", "input_size": 64}}
    experiment = {"name": "episodes", "protocol": "clean", "data_root": str(tmp_path),
                  "datasets": {"src": {"layout": "mvtec", "root": str(source)}, "tgt": {"layout": "mvtec", "root": str(target)}},
                  "pairs": [["src", "tgt"]], "settings": ["N4+A1", "N8+A1"], "seeds": [0],
                  "protocol_options": {"nested_block": 8}, "methods": [nagl]}
    path = tmp_path / "episodes.yaml"
    path.write_text(yaml.safe_dump(experiment))
    assert main(["run", "-e", str(path), "--results", str(tmp_path / "results"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1  # one shortage: one line
    assert ("src->tgt, N8+A1: nagl_tiny: nagl draws its training episodes in the source's test split: no category"
            " has 9 normal test images and a defect type with 1 masked images for N8+A1; use a smaller k or j, or more test images") in err
    assert not (tmp_path / "results").exists()


def test_a_run_on_a_real_layout_names_every_short_category_and_writes_nothing(tmp_path, capsys):
    root = tmp_path / "mvtec"
    generate_mvtec(root, categories=["bottle", "cable", "carpet"], counts={"train_good": 6})  # seed 1 at N4 needs 8
    source = tmp_path / "source"
    generate_mvtec(source, categories=["grid"], counts={"train_good": 12})
    experiment = {"name": "short", "protocol": "clean", "data_root": str(tmp_path),
                  "datasets": {"target": {"layout": "mvtec", "root": str(root)}, "src": {"layout": "mvtec", "root": str(source)}},
                  "pairs": [["src", "target"]], "settings": ["N1", "N4"], "seeds": [0, 1],
                  "methods": [{"name": "nn", "adapter": "normal_nn", "label": "NN",
                               "config": {"backbone": "lite0_imagenet", "input_size": 64}}]}
    path = tmp_path / "short.yaml"
    path.write_text(yaml.safe_dump(experiment))
    results = tmp_path / "results"
    assert main(["run", "-e", str(path), "--results", str(results), "--no-progress"]) == 2
    err = capsys.readouterr().err
    short = [line.strip() for line in err.splitlines() if "has 6 train/good images" in line]
    assert short == [f"target/{c}, N4, seed 1: category {c!r} has 6 train/good images; k=4 at seed 1 (nested) needs 8:"
                     " use fewer seeds or a smaller k" for c in ("bottle", "cable", "carpet")]
    assert "3 shortage(s)" in err and not results.exists()
    assert main(["refs", "make", "-e", str(path), "--results", str(results)]) == 2  # refs make plans the same way
    assert "3 shortage(s)" in capsys.readouterr().err and not results.exists()
