"""The commands docs/adding-an-adapter.md shows are the ones this test runs."""

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from conftest import write_experiment

PROJECT = Path(__file__).resolve().parents[1]


def documented_commands() -> list[list[str]]:
    text = (PROJECT / "docs" / "adding-an-adapter.md").read_text()
    section = text.split("## Run the example", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [shlex.split(line) for line in block.splitlines() if line.startswith("gadbench ")]


def test_the_documented_example_adapter_runs_and_finds_defects(tmp_path, synthetic_root):
    commands = documented_commands()
    assert [c[1] for c in commands] == ["run", "tables"]
    assert all("examples/mean_patch_distance.py:MeanPatchDistance" in c for c in commands)
    experiment = write_experiment(tmp_path / "tiny.yaml", synthetic_root, settings=["N1"], seeds=[0])
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    for command in commands:  # the documented command, on a tiny grid and a temporary results folder
        extra = ["--experiment", str(experiment), "--results", str(tmp_path / "results")]
        run = subprocess.run([sys.executable, "-m", "benchmark", *command[1:], *extra]
                             + (["--no-progress"] if command[1] == "run" else []),
                             cwd=PROJECT, env=env, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr
    cells = [json.loads(p.read_text()) for p in (tmp_path / "results" / "runs" / "clean" / "mean_patch_distance").rglob("*.json")]
    assert len(cells) == 2 and all(c["status"] == "done" for c in cells)
    assert sum(c["metrics"]["mean"]["pixel_auroc"] for c in cells) / 2 > 0.7  # it locates painted defects
    assert (tmp_path / "results" / "tables" / "tiny" / "main.csv").is_file()
