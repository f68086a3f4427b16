"""How close a grid run comes to its physical limit: one backbone pass per unique image.

In one process: (1) runs the training-free methods of an experiment (default: the mini grid) from
scratch, into a temporary results folder with an empty feature cache, and times the whole run
(reference manifests, data, features, scoring, metrics, cell files); (2) times decoding,
preprocessing and one backbone pass, in batches, over exactly the unique (backbone, preprocessing,
image) triples that run needed (the feature-cache misses it recorded); prints both and their ratio
(target: at most 1.2). A second run of the grid on the warm cache, into a new results folder, is
timed too: it must report only cache hits, and its ratio to the backbone pass is what a rerun
costs beyond the backbone (target: at most 0.15). Run:

    .venv/bin/python tools/timing/grid_cost.py [-e configs/experiments/mini.yaml]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path

import torch

from benchmark.run.session import open_method
from benchmark.data.batches import load_batch
from benchmark.config import CONFIG_DIR
from benchmark.run.experiment import load_experiment
from benchmark.features.service import FeatureService
from benchmark.run.runner import Runner
from benchmark.run.grid import run_grid


class RecordingFeatureService(FeatureService):
    """Remembers, for every cache miss, which backbone and which image row it was: the misses the
    service itself counts, not a second guess at its lookup."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.missed: dict[tuple[str, str], tuple] = {}
        self._batch_misses: set[tuple[str, str]] = set()

    def _lookup(self, handle, key):
        levels = super()._lookup(handle, key)
        if levels is None:
            self._batch_misses.add((handle.id, key))
        return levels

    def extract_layers(self, handle, batch):
        self._batch_misses.clear()
        out = super().extract_layers(handle, batch)
        for key, sample in zip(batch.keys, batch.samples):
            if (handle.id, key) in self._batch_misses:
                self.missed.setdefault((handle.id, key), (handle, sample["path"], key.split(":")[1]))
        return out


def timed_grid(experiment, results: Path, cache: Path, recording: bool) -> tuple[float, Runner, dict]:
    runner = Runner(experiment, results, show_progress=False, cache_dir=cache)
    if recording:
        runner.features = RecordingFeatureService(runner.weights, runner.device, disk=runner.features.disk)
    start = time.perf_counter()
    summary = run_grid(runner)
    return time.perf_counter() - start, runner, summary


def one_pass(runner: Runner, experiment, batch_size: int = 16) -> tuple[float, int]:
    """Decode + preprocess + backbone, once per recorded unique image, grouped by backbone."""
    preprocessings = {}
    for method in experiment.methods:
        adapter = open_method(method, device=runner.device, weights=runner.weights, features=runner.features,
                              workdir=Path(tempfile.gettempdir())).adapter
        preprocessing = adapter.preprocessing()
        preprocessings[preprocessing.key] = preprocessing
    groups: dict[tuple, tuple] = {}
    for handle, path, prep_key in runner.features.missed.values():
        groups.setdefault((handle.id, prep_key), (handle, preprocessings[prep_key], []))[2].append(path)
    start = time.perf_counter()
    with torch.no_grad():
        for handle, preprocessing, paths in groups.values():
            for begin in range(0, len(paths), batch_size):
                batch = load_batch([{"path": p} for p in paths[begin:begin + batch_size]], preprocessing)
                handle.module(batch.images.to(runner.device))
    return time.perf_counter() - start, sum(len(g[2]) for g in groups.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-e", "--experiment", default=str(CONFIG_DIR / "experiments" / "mini.yaml"))
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=FutureWarning)
    full = load_experiment(args.experiment)
    free = [m.name for m in full.methods if not m.adapter_class.trains_on_source]
    experiment = load_experiment(args.experiment, methods=free)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # draw the reference manifests and generate data first: a one-off that a rerun never pays
        Runner(experiment, tmp / "cold", show_progress=False).preflight(experiment.cells())
        cold_seconds, runner, summary = timed_grid(experiment, tmp / "cold", tmp / "cache", recording=True)
        pass_seconds, images = one_pass(runner, experiment)
        warm_seconds, _, warm_summary = timed_grid(experiment, tmp / "warm", tmp / "cache", recording=False)
        cells = [json.loads(p.read_text()) for p in (tmp / "warm" / "runs").rglob("*.json")]
        misses = sum(c["provenance"].get("feature_cache_misses", 0) for c in cells)
        hits = sum(c["provenance"].get("feature_cache_hits", 0) for c in cells)
    print(f"grid: {experiment.name}, training-free methods {free}; cells: {summary['done']} done, "
          f"{summary['skipped']} skipped (missing weights), {summary['failed']} failed; "
          f"{torch.get_num_threads()} torch threads on {runner.device}")
    print(f"one backbone pass over the {images} unique (backbone, preprocessing, image) triples: {pass_seconds:7.1f} s")
    print(f"full grid, cold feature cache:                                  {cold_seconds:7.1f} s")
    print(f"ratio grid / one pass:                                          {cold_seconds / pass_seconds:7.2f}  (target <= 1.2)")
    print(f"same grid again into a new results folder, warm feature cache:  {warm_seconds:7.1f} s "
          f"({hits} cache hits, {misses} misses)")
    print(f"ratio warm grid / one pass:                                     {warm_seconds / pass_seconds:7.2f}  (target <= 0.15)")


if __name__ == "__main__":
    main()
