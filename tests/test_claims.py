"""Runs that share a results folder: claims (benchmark/run/claims.py), the temporary-file sweep
that spares a live run's files, unreadable cell files reported before they are redone, and tensor
files that are not plain tensor files refused in one line."""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from benchmark.api.atomic import atomic_file
from benchmark.api.training import load_checkpoint
from benchmark.cli import main
from benchmark.errors import GadbenchError
from benchmark.run.catalogue import DataCatalogue
from benchmark.run.claims import Claims
from benchmark.run.experiment import load_experiment
from conftest import RunsACommand, write_experiment

PROJECT = Path(__file__).resolve().parents[1]


def finished_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def fake_claim(path: Path, host: str, pid: int, age: float = 0.0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"host": host, "pid": pid, "token": "theirs"}))
    if age:
        os.utime(path, (time.time() - age, time.time() - age))


# ----------------------------------------------------------------------------- claims
def test_a_held_claim_is_refused_to_another_owner_until_released(tmp_path):
    first, second = Claims(), Claims()
    claim = tmp_path / "seed0.claim"
    assert first.try_acquire(claim)
    assert not second.try_acquire(claim)
    assert not first.try_acquire(claim)  # not twice by its own owner either
    first.release(claim)
    assert not claim.exists() and second.try_acquire(claim)
    assert json.loads(claim.read_text())["token"] == second.owner["token"]


def test_the_claim_of_a_process_that_died_on_this_host_is_taken_over(tmp_path):
    claim = tmp_path / "seed0.claim"
    fake_claim(claim, Claims().owner["host"], finished_pid())
    claims = Claims()
    assert claims.try_acquire(claim)
    assert json.loads(claim.read_text())["token"] == claims.owner["token"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seed0.claim"]  # nothing left aside


def test_a_claim_from_another_host_is_taken_over_only_once_its_heartbeat_is_old(tmp_path):
    claim = tmp_path / "seed0.claim"
    fake_claim(claim, "another-host", 1, age=5.0)
    assert not Claims(stale_after=60).try_acquire(claim)
    assert Claims(stale_after=1).try_acquire(claim)


def test_the_heartbeat_keeps_a_long_claim_fresh(tmp_path):
    claim = tmp_path / "seed0.claim"
    holder = Claims(heartbeat=0.05)
    holder.owner["host"] = "another-host"  # judged by its heartbeat alone, as a run on another host is
    assert holder.try_acquire(claim)
    time.sleep(0.6)
    assert not Claims(stale_after=0.3).try_acquire(claim)
    holder.held.clear()  # the owner dies: its heartbeat stops
    time.sleep(0.6)
    assert Claims(stale_after=0.3).try_acquire(claim)


def test_a_takeover_that_finds_the_claim_renewed_gives_it_back(tmp_path):
    claim = tmp_path / "seed0.claim"
    renewed = Claims()
    assert renewed.try_acquire(claim)
    late = Claims()
    assert not late._take_over(claim, {"host": "another-host", "pid": 1, "token": "the one judged stale"})
    assert json.loads(claim.read_text())["token"] == renewed.owner["token"]


def test_the_sweep_spares_the_temporary_files_of_a_live_run(tmp_path, tiny_experiment):
    folder = tmp_path / "runs" / "clean"
    folder.mkdir(parents=True)
    with atomic_file(folder / "live.json") as live:  # this process: alive
        live.write_text("{}")
        dead = folder / f".gone.json.{finished_pid()}@{Claims().owner['host']}.abcdefgh.tmp"
        dead.write_text("{}")
        assert DataCatalogue(load_experiment(tiny_experiment), tmp_path).sweep_temporary_files() == 1
        assert live.exists() and not dead.exists()


# ----------------------------------------------------------------------------- two runs, one folder
def test_two_concurrent_runs_compute_each_cell_once(tmp_path, synthetic_root):
    nn = {"name": "nn_tiny", "adapter": "normal_nn", "config": {"backbone": "lite0_imagenet", "input_size": 64}}
    experiment = write_experiment(tmp_path / "e.yaml", synthetic_root, methods=[nn], settings=["N1"], seeds=[0, 1])
    command = [sys.executable, "-m", "benchmark", "run", "-e", str(experiment), "--results", str(tmp_path / "r"),
               "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    runs = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [run.communicate(timeout=600) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    counts, cells = [], 4  # 2 targets x N1 x 2 seeds
    for out, _ in outputs:
        found = re.search(r"(\d+) cells: (\d+) already done, (\d+) run, 0 skipped, 0 failed(?:, (\d+) left to another run)?", out)
        total, already, ran, elsewhere = (int(g or 0) for g in found.groups())
        assert already + ran + elsewhere == total == cells
        counts.append(ran)
    assert sum(counts) == cells, f"cells run by each process: {counts}"
    assert len(list((tmp_path / "r" / "runs").rglob("seed*.json"))) == cells
    assert not list((tmp_path / "r" / "runs").rglob("*.claim"))


# ----------------------------------------------------------------------------- files that cannot be used
def test_an_unreadable_cell_file_is_named_before_it_is_computed_again(tmp_path, synthetic_root, capsys):
    experiment = write_experiment(tmp_path / "e.yaml", synthetic_root, settings=["N1"], seeds=[0])
    arguments = ["run", "-e", str(experiment), "--results", str(tmp_path / "r"), "--no-progress"]
    assert main(arguments) == 0
    cell = sorted((tmp_path / "r" / "runs").rglob("seed0.json"))[0]
    cell.write_text(cell.read_text()[:100])  # truncated
    why = _decode_error(cell)
    capsys.readouterr()
    assert main(arguments) == 0
    captured = capsys.readouterr()
    assert [line for line in captured.err.splitlines() if "cannot be read" in line] == [
        f"{cell}: cannot be read (JSONDecodeError: {why}); the cell is computed again"]
    assert "1 run" in captured.out and json.loads(cell.read_text())["status"] == "done"


def _decode_error(path: Path) -> str:
    try:
        json.loads(path.read_text())
    except json.JSONDecodeError as error:
        return str(error)
    raise AssertionError("the file parses")


@pytest.mark.parametrize("content", ["pickle", "bytes"])
def test_a_checkpoint_that_is_not_a_plain_tensor_file_is_refused_in_one_line(tmp_path, content):
    path = tmp_path / "training_state.pt"
    if content == "pickle":
        torch.save({"config_hash": "h", "payload": RunsACommand(tmp_path / "ran")}, path)
    else:
        path.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(GadbenchError) as refused:
        load_checkpoint(path, "h")
    message = str(refused.value)
    assert message.startswith(f"{path}: not a plain tensor file") and message.endswith("delete it to train again")
    assert "\n" not in message and "weights_only=False" not in message
    assert not (tmp_path / "ran").exists()


def test_without_hard_links_a_claim_is_created_exclusively_in_place(tmp_path, monkeypatch):
    def no_links(*_):
        raise PermissionError("hard links not supported")

    monkeypatch.setattr(os, "link", no_links)
    first, second = Claims(), Claims()
    claim = tmp_path / "seed0.claim"
    assert first.try_acquire(claim) and not second.try_acquire(claim)
    assert json.loads(claim.read_text())["token"] == first.owner["token"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seed0.claim"]


def test_the_sweep_reaches_a_feature_cache_outside_the_results_folder(tmp_path, tiny_experiment):
    """A run killed while it wrote a cached feature leaves a temporary file there (one a kill
    landed on in the SIGKILL test of test_reliability.py); the next run removes it."""
    cache = tmp_path / "elsewhere" / "features" / "abc" / "7f"
    cache.mkdir(parents=True)
    dead = cache / f".7f01.pt.{finished_pid()}@{Claims().owner['host']}.abcdefgh.tmp"
    dead.write_text("")
    catalogue = DataCatalogue(load_experiment(tiny_experiment), tmp_path / "results")
    assert catalogue.sweep_temporary_files() == 0 and dead.exists()  # not its results folder
    assert catalogue.sweep_temporary_files(tmp_path / "elsewhere" / "features") == 1 and not dead.exists()
