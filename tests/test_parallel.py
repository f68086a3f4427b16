"""Parallel runs (joblib processes, a Dask cluster) give the serial run's results, cell for cell."""

import json

import pytest

from benchmark.run.experiment import load_experiment
from benchmark.run.parallel import group_cells
from benchmark.run.runner import Runner
from benchmark.run.grid import run_grid
from conftest import write_experiment

pytestmark = pytest.mark.slow

NAGL_TINY = {"name": "nagl_tiny", "adapter": "nagl", "label": "NAGL tiny",
             "config": {"backbone": "lite0_imagenet", "input_size": 64, "heads": 2,
                        "training": {"epochs": 1, "episodes_per_epoch": 4, "batch_size": 2}}}


def _metrics(results):
    return {str(p.relative_to(results)): json.loads(p.read_text())["metrics"] for p in sorted((results / "runs").rglob("*.json"))}


@pytest.fixture(scope="module")
def experiment_file(tmp_path_factory, synthetic_root):
    return write_experiment(tmp_path_factory.mktemp("parallel") / "tiny.yaml", synthetic_root, settings=["N1"], seeds=[0, 1])


@pytest.fixture(scope="module")
def serial(experiment_file, tmp_path_factory):
    results = tmp_path_factory.mktemp("serial")
    summary = run_grid(Runner(load_experiment(experiment_file), results, show_progress=False))
    assert summary["done"] == 4
    return _metrics(results)


def test_cells_that_share_a_trained_model_stay_in_one_group(tmp_path, synthetic_root):
    path = write_experiment(tmp_path / "x.yaml", synthetic_root, settings=["N1", "N1+A1", "N2+A1"], seeds=[0, 1],
                            methods=[NAGL_TINY, {"name": "nn_tiny", "adapter": "normal_nn", "config": {"input_size": 64}}])
    groups = group_cells(load_experiment(path).cells())
    nagl = [g for g in groups if g[0].method.name == "nagl_tiny"]
    assert sorted(g[0].source for g in nagl) == ["tiny_objects", "tiny_textures"]  # one group per source
    assert all({c.source for c in g} == {g[0].source} and len(g) == 4 for g in nagl)
    nn = [g for g in groups if g[0].method.name == "nn_tiny"]
    assert len(nn) == 2 and all({c.target for c in g} == {g[0].target} for g in nn)  # one per target


def test_local_processes_match_the_serial_run(experiment_file, serial, tmp_path):
    summary = run_grid(Runner(load_experiment(experiment_file), tmp_path, show_progress=False), jobs=2)
    assert summary["done"] == 4
    assert _metrics(tmp_path) == serial


def test_a_dask_local_cluster_matches_the_serial_run(experiment_file, serial, tmp_path):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as cluster:
        summary = run_grid(Runner(load_experiment(experiment_file), tmp_path, show_progress=False), scheduler=cluster.scheduler_address)
    assert summary["done"] == 4
    assert _metrics(tmp_path) == serial
    assert not list((tmp_path / "runs").rglob("*.tmp"))
