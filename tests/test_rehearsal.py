"""The paper's grid rehearsed on stand-in data with the paper's architectures (random weights):
the reduced form that CI affords. docs/reproducing.md tells a GPU user to run the full one first."""

import json

import pandas as pd
import pytest

from benchmark.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory):
    results = tmp_path_factory.mktemp("rehearsal")
    # every architecture of the paper: DINOv2 ViT-S/14 (NAGL, normal NN), CLIP ViT-B-16+ (WinCLIP,
    # InCTRL), WideResNet-50-2 (PatchCore, ResAD); one pair with source training on MVTec AD and
    # the BraTS volumes converted by `prepare brats` as the target (experiments without that pair
    # rehearse one of theirs with the same source). The bench times one method: the rehearsal's
    # bench path (test_efficiency.py times trained methods).
    status = main(["rehearse", "--results", str(results), "--categories", "1", "--seed", "0", "--setting", "N1",
                   "--setting", "N1+A1", "--limit", "2", "--pair", "mvtec:brats", "--bench-method", "patchcore",
                   "--experiment", "configs/experiments/main.yaml", "--experiment", "configs/experiments/ablation.yaml",
                   "--no-progress"])
    return status, results


@pytest.fixture(scope="module")
def questions(tmp_path_factory):
    """open_questions.yaml (also in the default rehearsal: test_planning.py plans all of it) in its
    own settings with abnormal references: A^2 from the block of 4, N0, NAGL's proxy sweep; its
    normal-only settings are main.yaml's, rehearsed above."""
    results = tmp_path_factory.mktemp("questions")
    status = main(["rehearse", "--results", str(results), "--categories", "1", "--seed", "0", "--setting", "N1+A2",
                   "--setting", "N0+A1", "--limit", "2", "--experiment", "configs/experiments/open_questions.yaml",
                   "--no-bench", "--no-progress"])
    return status, results


def test_every_cell_of_the_reduced_grid_runs(rehearsal):
    status, results = rehearsal
    assert status == 0
    cells = [json.loads(p.read_text()) for p in (results / "runs").rglob("*.json")]
    experiments = {c["cell"]["experiment"] for c in cells}
    assert experiments == {"main", "ablation"}
    main_cells = [c for c in cells if c["cell"]["experiment"] == "main"]
    assert len(main_cells) == 11  # main.yaml's 11 methods on mvtec -> brats, each in its own setting
    ablation = [c for c in cells if c["cell"]["experiment"] == "ablation"]
    assert {c["cell"]["method"] for c in ablation} == {"ablation_i", "ablation_ii", "ablation_iii", "nagl"}  # on mvtec -> visa
    assert all(c["status"] == "done" for c in cells), [c.get("error") for c in cells if c["status"] != "done"]
    assert all(c["rehearsal"] is True and c["limit"] == 2 for c in cells)
    assert all(c["method"]["random_weights"] for c in cells)
    dinov2 = next(c for c in cells if c["cell"]["method"] == "nagl")["method"]
    assert dinov2["pos_embed_resize"] == "dinov2_hub" and dinov2["backbone"] == "dinov2_vits14"


def test_tables_and_report_mark_the_rehearsal_everywhere(rehearsal):
    _, results = rehearsal
    table = pd.read_csv(results / "tables" / "main" / "medical.csv")
    assert table.rehearsal.all() and table.method.str.endswith("[rehearsal]").all()
    assert (results / "tables" / "main" / "medical.tex").read_text().count("REHEARSAL, not results") == 1
    efficiency = pd.read_csv(results / "tables" / "efficiency_paper_rehearsal" / "efficiency.csv")
    assert set(efficiency.method) == {"patchcore"} and efficiency.rehearsal.all() and (efficiency.status == "done").all()
    report = (results / "report.md").read_text()
    assert "◊" in report and "Efficiency (efficiency_paper_rehearsal)" in report


def test_the_gate_refuses_rehearsal_cells(rehearsal, capsys):
    _, results = rehearsal
    assert main(["check", "configs/experiments/main.yaml", "--results", str(results), "--data-root", str(results / "data")]) == 2
    assert "rehearsal or --limit cells measure nothing" in capsys.readouterr().err
    assert main(["check", "configs/experiments/main.yaml", "--results", str(results), "--data-root", str(results / "data"),
                 "--update", "--golden", str(results / "golden")]) == 2
    assert not (results / "golden").exists()


def test_the_open_questions_rehearse_with_several_and_only_abnormal_references(questions):
    status, results = questions
    assert status == 0
    cells = [json.loads(p.read_text()) for p in (results / "runs").rglob("*.json")]
    assert {c["cell"]["experiment"] for c in cells} == {"open_questions"}
    assert all(c["status"] == "done" and c["rehearsal"] for c in cells), [c.get("error") for c in cells]
    ran = {(c["cell"]["method"], c["cell"]["setting"]) for c in cells}
    nagl = {"nagl@proxies=5", "nagl@proxies=25", "nagl@proxies=50"}
    assert ran == {(m, s) for m in nagl | {"ablation_i", "ablation_ii", "ablation_iii"} for s in ("N1+A2", "N0+A1")}
    for name in ("abnormal_shots", "coverage", "proxies"):
        tex = (results / "tables" / "open_questions" / f"{name}.tex").read_text()
        assert "REHEARSAL, not results" in tex
        assert ("n/a" in tex) == (name != "proxies")  # the normal-only baselines cannot run these settings; NAGL can
