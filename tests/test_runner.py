import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from benchmark import registry
from benchmark.cli import main
from benchmark.errors import GadbenchError
from benchmark.run.experiment import load_experiment
from conftest import write_experiment

PROJECT = Path(__file__).resolve().parents[1]

PIXEL_DIFF_ADAPTER = textwrap.dedent('''
    """A method outside the package: distance to the mean normal reference image, per pixel."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from benchmark.api import Adapter, Prediction
    from benchmark.api.preprocessing import Preprocessing

    class PixelDiffAdapter(Adapter):
        name = "pixel_diff"

        def preprocessing(self):
            return Preprocessing(size=64)

        def set_references(self, category, normal, abnormal):
            self.mean_normal = normal.images.mean(0)

        def predict(self, batch):
            diff = (batch.images - self.mean_normal).abs().mean(1)
            maps = [F.interpolate(d[None, None], size=s, mode="bilinear")[0, 0].numpy() for d, s in zip(diff, batch.original_sizes)]
            return Prediction(diff.flatten(1).amax(1).numpy(), maps)
''')


def test_unknown_adapter_names_the_closest_known():
    with pytest.raises(GadbenchError, match="did you mean 'normal_nn'"):
        registry.resolve("normal_n")


def test_external_adapter_runs_through_the_cli_without_editing_the_package(tmp_path, synthetic_root):
    (tmp_path / "my_module.py").write_text(PIXEL_DIFF_ADAPTER)
    experiment = write_experiment(tmp_path / "tiny.yaml", synthetic_root, settings=["N1"], seeds=[0])
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    run = subprocess.run([sys.executable, "-m", "benchmark", "run", "--experiment", str(experiment), "--results",
                          str(tmp_path / "results"), "--adapter", "my_module:PixelDiffAdapter", "--no-progress"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    files = list((tmp_path / "results" / "runs").rglob("seed0.json"))
    assert len(files) == 2  # one cell per target: the method does not train on the source
    cell = json.loads(files[0].read_text())
    assert cell["status"] == "done" and cell["cell"]["adapter"] == "my_module:PixelDiffAdapter"
    assert 0 <= cell["metrics"]["mean"]["image_auroc"] <= 1


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, synthetic_root):
    tmp = tmp_path_factory.mktemp("run")
    experiment = write_experiment(tmp / "tiny.yaml", synthetic_root)
    results = tmp / "results"
    assert main(["run", "--experiment", str(experiment), "--results", str(results), "--no-progress"]) == 0
    assert main(["tables", "--experiment", str(experiment), "--results", str(results)]) == 0
    return experiment, results


def test_each_cell_writes_metrics_per_category_and_provenance(finished_run):
    experiment, results = finished_run
    files = sorted((results / "runs").rglob("*.json"))
    assert len(files) == 2 * 2 * 2  # targets x settings x seeds; source-free cells are shared
    cell = json.loads(files[0].read_text())
    assert cell["status"] == "done"
    assert set(cell["metrics"]["per_category"]) == {"hex_nut", "tablet", "washer"} or set(cell["metrics"]["per_category"]) == {"terrazzo", "weave", "wood"}
    for metrics in cell["metrics"]["per_category"].values():
        assert set(metrics) >= {"image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "pixel_ap", "pixel_f1_max", "pixel_aupro"}
    provenance = cell["provenance"]
    for key in ("git_commit", "packages", "method_config_hash", "device", "seconds_total", "feature_cache_hits"):
        assert key in provenance
    assert provenance["packages"]["torch"]
    assert cell["method"]["weights_sha256"].startswith("579344248a93")
    assert cell["protocol"] == "clean" and cell["cell"]["seed"] in (0, 1)
    assert all(c["removed_references_from_queries"] == 1 for c in cell["counts"].values())
    assert all(Path(m["path"]).is_file() for m in cell["manifests"].values())
    assert not list((results / "runs").rglob("*.tmp"))


def test_the_scorer_finds_synthetic_defects(finished_run):
    _, results = finished_run
    aurocs = [json.loads(f.read_text())["metrics"]["mean"]["pixel_auroc"] for f in (results / "runs").rglob("*.json")]
    assert np.mean(aurocs) > 0.8  # a real backbone locates painted defects; random scores give 0.5


def test_a_rerun_recomputes_nothing_and_writes_identical_tables(finished_run, capsys):
    experiment, results = finished_run
    before = {p: p.stat().st_mtime_ns for p in (results / "runs").rglob("*.json")}
    tables_before = (results / "tables" / "tiny" / "main.csv").read_text(), (results / "tables" / "tiny" / "main.tex").read_text()
    capsys.readouterr()
    assert main(["run", "--experiment", str(experiment), "--results", str(results), "--no-progress"]) == 0
    assert "8 already done, 0 run" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in (results / "runs").rglob("*.json")} == before
    assert main(["tables", "--experiment", str(experiment), "--results", str(results)]) == 0
    assert ((results / "tables" / "tiny" / "main.csv").read_text(), (results / "tables" / "tiny" / "main.tex").read_text()) == tables_before


def test_tables_have_the_paper_shape(finished_run):
    _, results = finished_run
    import pandas as pd

    table = pd.read_csv(results / "tables" / "tiny" / "main.csv")
    assert list(table.setting) == ["N1", "N2"] and list(table.method) == ["NN tiny", "NN tiny"]
    for target in ("tiny_textures", "tiny_objects"):
        for metric in ("image_auroc", "pixel_auroc"):
            assert table[f"{target}:{metric}:mean"].between(0, 100).all()
            assert (table[f"{target}:{metric}:std"] >= 0).all()
    tex = (results / "tables" / "tiny" / "main.tex").read_text()
    assert "\\toprule" in tex and "\\textbf{" in tex and "$N^{1}$" in tex and "Textures" in tex
    per_category = pd.read_csv(results / "tables" / "tiny" / "per_category_tiny_objects.csv")
    assert {"washer:image_auroc:mean", "hex_nut:pixel_auroc:std"} <= set(per_category.columns)


def test_the_spread_is_the_std_over_seeds_and_absent_for_one_seed(finished_run, synthetic_root, tmp_path, capsys):
    import pandas as pd
    import shutil

    _, results = finished_run
    runs = results / "runs" / "clean" / "nn_tiny" / "any__tiny_objects" / "N1"
    per_seed = [json.loads((runs / f"seed{s}.json").read_text())["metrics"]["mean"]["image_auroc"] for s in (0, 1)]
    two = pd.read_csv(results / "tables" / "tiny" / "main.csv").set_index("setting")
    assert two.loc["N1", "tiny_objects:image_auroc:std"] == pytest.approx(100 * abs(per_seed[0] - per_seed[1]) / 2, abs=1e-4)

    one_seed = write_experiment(tmp_path / "one.yaml", synthetic_root, seeds=[0])  # the same cells, seed 0 alone
    copy = tmp_path / "results"
    shutil.copytree(results / "runs", copy / "runs")
    capsys.readouterr()
    assert main(["tables", "--experiment", str(one_seed), "--results", str(copy)]) == 0
    printed = capsys.readouterr().out
    one = pd.read_csv(copy / "tables" / "tiny" / "main.csv").set_index("setting")
    assert one.loc["N1", "tiny_objects:image_auroc:mean"] == pytest.approx(100 * per_seed[0], abs=1e-4)
    assert one.filter(like=":std").isna().all().all()  # empty in the CSV, not 0
    rows = [line for line in printed.splitlines() if line.startswith("| N")]
    assert rows and not any("±" in row for row in rows), printed
    assert "\\pm" not in (copy / "tables" / "tiny" / "main.tex").read_text()


class ExplodingAdapter(registry.resolve("normal_nn")):
    name = "exploding"

    def set_references(self, category, normal, abnormal):
        if category == "tablet":
            raise RuntimeError("boom on tablet")
        super().set_references(category, normal, abnormal)


def test_a_failing_cell_is_recorded_and_the_others_go_on(tmp_path, synthetic_root):
    methods = [{"name": "explodes", "adapter": "test_runner:ExplodingAdapter", "config": {"backbone": "lite0_imagenet", "input_size": 64}}]
    experiment = write_experiment(tmp_path / "e.yaml", synthetic_root, methods=methods, settings=["N1"], seeds=[0])
    sys.path.insert(0, str(Path(__file__).parent))
    status = main(["run", "--experiment", str(experiment), "--results", str(tmp_path / "r"), "--no-progress"])
    assert status == 1  # some cells failed
    cells = {f.parent.parent.name: json.loads(f.read_text()) for f in (tmp_path / "r" / "runs").rglob("*.json")}
    assert cells["any__tiny_objects"]["status"] == "failed"
    assert "boom on tablet" in cells["any__tiny_objects"]["error"] and "Traceback" in cells["any__tiny_objects"]["traceback"]
    assert cells["any__tiny_textures"]["status"] == "done"
    assert main(["tables", "--experiment", str(experiment), "--results", str(tmp_path / "r")]) == 0
    assert "failed: RuntimeError: boom on tablet" in (tmp_path / "r" / "tables" / "tiny" / "main.tex").read_text()


def test_missing_weights_skip_cells_with_the_reason_in_the_table(tmp_path, synthetic_root, capsys):
    methods = [{"name": "needs_dino", "adapter": "normal_nn", "label": "NN DINOv2", "config": {"backbone": "dinov2_vits14"}}]
    experiment = write_experiment(tmp_path / "e.yaml", synthetic_root, methods=methods, settings=["N1"], seeds=[0])
    results = tmp_path / "r"
    assert main(["run", "--experiment", str(experiment), "--results", str(results), "--weights-dir", str(tmp_path / "w"), "--no-progress"]) == 0
    cells = [json.loads(f.read_text()) for f in (results / "runs").rglob("*.json")]
    assert {c["status"] for c in cells} == {"skipped"}
    assert "dinov2_vits14_pretrain.pth" in cells[0]["reason"]
    capsys.readouterr()
    main(["tables", "--experiment", str(experiment), "--results", str(results)])
    out = capsys.readouterr().out
    assert "– (a)" in out and "(a) skipped: weights file dinov2_vits14_pretrain.pth" in out


def test_unknown_names_in_an_experiment_fail_with_the_closest(tmp_path, synthetic_root):
    experiment = write_experiment(tmp_path / "e.yaml", synthetic_root, methods=["normal_nn_lite"])
    with pytest.raises(GadbenchError, match="unknown method 'normal_nn_lite'; did you mean 'normal_nn_lite0'"):
        load_experiment(experiment)
    experiment = write_experiment(tmp_path / "e.yaml", synthetic_root, pairs=[["tiny_objects", "tiny_texture"]])
    with pytest.raises(GadbenchError, match="unknown dataset 'tiny_texture'; did you mean 'tiny_textures'"):
        load_experiment(tmp_path / "e.yaml")


def test_cli_errors_are_one_line_with_nonzero_exit(tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text("pairs: [a, b\nseeds: [0]\n")
    assert main(["run", "--experiment", str(tmp_path / "bad.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gadbench: error: ") and "bad.yaml" in err and "malformed YAML" in err and "\n" not in err


def test_a_misspelt_method_config_key_is_refused_before_any_cell_runs(tmp_path, synthetic_root, capsys):
    from benchmark.cli import main

    method = {"name": "nn", "adapter": "normal_nn", "config": {"backbone": "lite0_imagenet", "blur_sigm": 2.0}}
    experiment = write_experiment(tmp_path / "e.yaml", synthetic_root, methods=[method])
    assert main(["run", str(experiment), "--results", str(tmp_path / "r"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "method 'nn': unknown config key 'blur_sigm'; did you mean 'blur_sigma'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()
