"""Reliability: the bad-input catalogue (docs/reliability.md), interruptions, determinism, offline use."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from benchmark.cli import main
from conftest import write_experiment

PROJECT = Path(__file__).resolve().parents[1]
NN = {"name": "nn", "adapter": "normal_nn", "label": "NN", "config": {"backbone": "lite0_imagenet", "input_size": 64}}


@pytest.fixture
def data(tmp_path, synthetic_root):
    """A private copy of the tiny synthetic domains that a test may break."""
    root = tmp_path / "data"
    shutil.copytree(synthetic_root, root)
    return root


def run(tmp_path, data, capsys, **experiment):
    experiment.setdefault("methods", [NN])
    experiment.setdefault("settings", ["N1"])
    experiment.setdefault("seeds", [0])
    path = write_experiment(tmp_path / "e.yaml", data, **experiment)
    capsys.readouterr()
    status = main(["run", "--experiment", str(path), "--results", str(tmp_path / "results"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    return status, err


def cell_files(tmp_path):
    return list((tmp_path / "results" / "runs").rglob("*.json")) if (tmp_path / "results" / "runs").exists() else []


def assert_one_line_before_any_cell(status, err, tmp_path, *fragments):
    assert status == 2
    assert err.startswith("gadbench: error: ") and "\n" not in err and "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, err
    assert cell_files(tmp_path) == []  # nothing half-written


def test_missing_data_root(tmp_path, data, capsys):
    shutil.rmtree(data / "textures")
    status, err = run(tmp_path, data, capsys)
    assert_one_line_before_any_cell(status, err, tmp_path, "textures", "does not exist; set DATA_ROOT")


def test_category_without_train_good(tmp_path, data, capsys):
    shutil.rmtree(data / "objects" / "washer" / "train")
    status, err = run(tmp_path, data, capsys)
    assert_one_line_before_any_cell(status, err, tmp_path, "'washer': no train/good images")


def test_defective_image_without_its_mask(tmp_path, data, capsys):
    (data / "objects" / "tablet" / "ground_truth" / "hole" / "001_mask.png").unlink()
    status, err = run(tmp_path, data, capsys)
    assert_one_line_before_any_cell(status, err, tmp_path, "tablet/test/hole/001.png: defective test image without a mask")


def test_empty_test_set(tmp_path, data, capsys):
    shutil.rmtree(data / "objects" / "hex_nut" / "test")
    shutil.rmtree(data / "objects" / "hex_nut" / "ground_truth")
    status, err = run(tmp_path, data, capsys)
    assert_one_line_before_any_cell(status, err, tmp_path, "'hex_nut': empty test set")


def test_k_larger_than_the_normal_images(tmp_path, data, capsys):
    """Every category is short at once: the planning pass names each on a line of its own."""
    status, err = run(tmp_path, data, capsys, settings=["N4"], seeds=[2])
    assert status == 2 and err.startswith("gadbench: error: ") and "Traceback" not in err
    short = [line for line in err.splitlines()[1:] if "has 8 train/good images; k=4 at seed 2 (nested) needs 12" in line]
    assert len(short) == len(err.splitlines()) - 1 == 6  # the six categories of both data sets, nothing else
    assert cell_files(tmp_path) == []


def test_abnormal_reference_for_a_category_without_defects(tmp_path, data, capsys):
    for folder in (data / "textures" / "wood" / "test").iterdir():
        if folder.name != "good":
            shutil.rmtree(folder)
    shutil.rmtree(data / "textures" / "wood" / "ground_truth")
    ablation = {"name": "abl", "adapter": "nn_ablation", "config": {"backbone": "lite0_imagenet", "input_size": 64}}
    status, err = run(tmp_path, data, capsys, methods=[ablation], settings=["N1+A1"])
    assert_one_line_before_any_cell(status, err, tmp_path, "'wood' has no defective test image with a non-empty mask")


def test_a_manifest_pointing_outside_the_data_root(tmp_path, data, capsys):
    assert run(tmp_path, data, capsys)[0] == 0
    manifest = next((tmp_path / "results" / "references").rglob("*.csv"))
    manifest.write_text(manifest.read_text().replace("train/good/", "../../elsewhere/", 1))
    for cell in cell_files(tmp_path):
        cell.unlink()
    status, err = run(tmp_path, data, capsys)
    assert_one_line_before_any_cell(status, err, tmp_path, str(manifest.name), "points outside the data root")


@pytest.mark.parametrize("setting, fragment", [("A2", "not understood"),
                                               ("N1+A3", "needs protocol_options.abnormal_block >= 3")])
def test_unknown_or_malformed_setting(tmp_path, data, capsys, setting, fragment):
    status, err = run(tmp_path, data, capsys, settings=[setting])
    assert_one_line_before_any_cell(status, err, tmp_path, fragment)


def test_unknown_dataset_in_a_pair_names_the_closest(tmp_path, data, capsys):
    status, err = run(tmp_path, data, capsys, pairs=[["tiny_objects", "tiny_textures_"]])
    assert_one_line_before_any_cell(status, err, tmp_path, "unknown dataset 'tiny_textures_'; did you mean 'tiny_textures'")


def test_unknown_key_in_a_yaml_names_the_closest(tmp_path, data, capsys):
    status, err = run(tmp_path, data, capsys, seed=[0])
    assert_one_line_before_any_cell(status, err, tmp_path, "unknown key 'seed'; did you mean 'seeds'")


def test_a_mask_of_the_wrong_size_is_named(tmp_path, data, capsys):
    mask = data / "textures" / "weave" / "ground_truth" / "stain" / "000_mask.png"
    Image.new("L", (10, 10)).save(mask)
    status, err = run(tmp_path, data, capsys)
    # caught by the pre-flight when the reference draw reads it, else by the cell that scores it
    assert status in (1, 2)
    assert "stain/000_mask.png: mask is 10x10 but its image is 96x96; masks must match their images" in err


def test_a_truncated_image_fails_its_cell_and_the_others_go_on(tmp_path, data, capsys):
    broken = data / "objects" / "washer" / "test" / "good" / "001.png"
    broken.write_bytes(broken.read_bytes()[:200])
    status, err = run(tmp_path, data, capsys)
    assert status == 1  # some cells failed
    assert "washer/test/good/001.png: not a readable image" in err and len(err.splitlines()) == 1
    cells = {p.parent.parent.name: json.loads(p.read_text()) for p in cell_files(tmp_path)}
    assert cells["any__tiny_objects"]["status"] == "failed" and "Traceback" in cells["any__tiny_objects"]["traceback"]
    assert cells["any__tiny_textures"]["status"] == "done"


def test_a_wrong_weights_checksum_fails_the_cell_with_what_to_do(tmp_path, data, capsys):
    weights = tmp_path / "w"
    weights.mkdir()
    (weights / "dinov2_vits14_pretrain.pth").write_bytes(b"corrupt")
    method = {"name": "dino", "adapter": "normal_nn", "config": {"backbone": "dinov2_vits14", "input_size": 56}}
    path = write_experiment(tmp_path / "e.yaml", data, methods=[method], settings=["N1"], seeds=[0])
    capsys.readouterr()
    assert main(["run", "-e", str(path), "--results", str(tmp_path / "results"), "--weights-dir", str(weights), "--no-progress"]) == 1
    assert "delete it and download it again from https://dl.fbaipublicfiles.com/" in capsys.readouterr().err
    error = json.loads(next((tmp_path / "results" / "runs").rglob("seed0.json")).read_text())["error"]
    assert "dinov2_vits14_pretrain.pth: not a plain tensor file" in error


def test_debug_shows_the_traceback(tmp_path, data):
    shutil.rmtree(data / "textures")
    path = write_experiment(tmp_path / "e.yaml", data, methods=[NN], settings=["N1"], seeds=[0])
    from benchmark.errors import GadbenchError

    with pytest.raises(GadbenchError):
        main(["--debug", "run", "--experiment", str(path), "--results", str(tmp_path / "r")])


# ----------------------------------------------------------------------------- interruptions
def _env():
    return {**os.environ, "PYTHONPATH": str(PROJECT) + os.pathsep + str(PROJECT / "tests")}


def test_a_grid_killed_with_sigkill_resumes_to_the_same_tables(tmp_path, synthetic_root):
    experiment = write_experiment(tmp_path / "e.yaml", synthetic_root, methods=[NN], settings=["N1", "N2"], seeds=[0, 1])
    killed, straight = tmp_path / "killed", tmp_path / "straight"
    command = [sys.executable, "-m", "benchmark", "run", "-e", str(experiment), "--no-progress", "--results"]
    process = subprocess.Popen(command + [str(killed)], env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and len(list((killed / "runs").rglob("*.json"))) < 2 and process.poll() is None:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done_before = list((killed / "runs").rglob("*.json"))
    assert 0 < len(done_before) < 8, "the kill must land in the middle of the grid"
    for cell in done_before:  # every file that exists is whole
        assert json.loads(cell.read_text())["status"] == "done"
    for results in (killed, straight):
        assert subprocess.run(command + [str(results)], env=_env(), capture_output=True).returncode == 0
        assert main(["tables", "-e", str(experiment), "--results", str(results)]) == 0
    assert not list(killed.rglob(".*.tmp"))
    assert len(list((killed / "runs").rglob("*.json"))) == 8
    assert (killed / "tables" / "tiny" / "main.csv").read_text() == (straight / "tables" / "tiny" / "main.csv").read_text()


NAGL_TRAINING = textwrap.dedent('''
    import sys, torch
    from test_nagl import make_model, tiny_bank
    from nagl.adapter import train_nagl
    from nagl.train import TrainConfig
    config = TrainConfig(k_normal=1, epochs=4, episodes_per_epoch=400, batch_size=8, learning_rate=1e-3, milestones=(2,))
    torch.set_num_threads(1)
    train_nagl(make_model(), tiny_bank(), config, sys.argv[1], "hash")
''')


def test_nagl_training_killed_mid_epoch_resumes_to_the_same_checkpoint(tmp_path):
    from nagl.adapter import train_nagl
    from nagl.train import TrainConfig
    from test_nagl import make_model, tiny_bank

    script = tmp_path / "train.py"
    script.write_text(NAGL_TRAINING)
    killed = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, str(script), str(killed)], env=_env())
    deadline = time.time() + 240
    while time.time() < deadline and not (killed / "training_state.pt").exists() and process.poll() is None:
        time.sleep(0.01)
    time.sleep(0.2)  # now inside epoch 2
    process.send_signal(signal.SIGKILL)
    process.wait()
    state = torch.load(killed / "training_state.pt", weights_only=True)
    assert state["epoch"] < 3
    torch.set_num_threads(1)
    try:
        config = TrainConfig(k_normal=1, epochs=4, episodes_per_epoch=400, batch_size=8, learning_rate=1e-3, milestones=(2,))
        resumed = train_nagl(make_model(), tiny_bank(), config, killed, "hash")
        straight = train_nagl(make_model(), tiny_bank(), config, tmp_path / "straight", "hash")
    finally:
        torch.set_num_threads(2)
    a, b = resumed["state_dict"], straight["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------- determinism, offline
def test_the_same_experiment_twice_gives_bit_identical_metrics(tmp_path, synthetic_root):
    experiment = write_experiment(tmp_path / "e.yaml", synthetic_root, methods=[NN], settings=["N1"], seeds=[0])
    metrics = []
    for name in ("a", "b"):
        assert main(["run", "-e", str(experiment), "--results", str(tmp_path / name), "--no-progress"]) == 0
        cells = sorted((tmp_path / name / "runs").rglob("*.json"))
        metrics.append([json.loads(p.read_text())["metrics"] for p in cells])
    assert metrics[0] == metrics[1]


SITE_BLOCKING_NETWORK = textwrap.dedent('''
    import socket
    def refuse(*args, **kwargs):
        raise OSError("network blocked by the test")
    socket.socket.connect = refuse
    socket.create_connection = refuse
''')


def test_runs_offline_and_fails_clearly_when_a_download_would_be_needed(tmp_path, synthetic_root):
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(SITE_BLOCKING_NETWORK)
    env = {**_env(), "PYTHONPATH": str(tmp_path / "site") + os.pathsep + str(PROJECT)}
    experiment = write_experiment(tmp_path / "e.yaml", synthetic_root, methods=[NN], settings=["N1"], seeds=[0])
    offline = subprocess.run([sys.executable, "-m", "benchmark", "run", "-e", str(experiment), "--results", str(tmp_path / "r"),
                              "--no-progress"], env=env, capture_output=True, text=True, timeout=300)
    assert offline.returncode == 0, offline.stderr
    dino = {"name": "dino", "adapter": "normal_nn", "config": {"backbone": "dinov2_vits14", "input_size": 56}}
    experiment = write_experiment(tmp_path / "d.yaml", synthetic_root, methods=[dino], settings=["N1"], seeds=[0])
    download = subprocess.run([sys.executable, "-m", "benchmark", "run", "-e", str(experiment), "--results", str(tmp_path / "r"),
                               "--weights-dir", str(tmp_path / "w"), "--allow-download", "--no-progress"],
                              env=env, capture_output=True, text=True, timeout=300)
    assert download.returncode == 1
    assert "downloading https://dl.fbaipublicfiles.com/dinov2" in download.stderr and "download it by hand" in download.stderr
