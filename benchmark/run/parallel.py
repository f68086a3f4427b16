"""Cells in parallel: local processes (joblib) or a Dask distributed cluster.

The parent does everything that must happen once: it sweeps temporary files, runs the pre-flight
(data sets read, reference manifests drawn and verified) and decides which cells are left. It then
sends groups of cells to workers. A group is every cell that shares a trained model (a trained
method's cells with one source), or a training-free method's cells on one target (they share
features); a worker runs its group in order, so a model is trained once and never by two workers
at the same time. Workers write only their own cell files (and checkpoints, and feature-cache
entries, all atomically); tables are built afterwards from the files, by `gadbench tables`.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from benchmark.errors import GadbenchError
from benchmark.run.experiment import Cell, Experiment


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker needs to rebuild the parent's Runner (all picklable)."""

    experiment: Experiment
    results: str
    device: str
    weights_dir: str | None
    allow_download: bool
    batch_size: int
    cache_dir: str | None
    cwd: str  # plugin adapters given as `file.py:Class` or `module:Class` resolve from here
    threads: int | None = None  # torch threads per worker (the parent's count keeps results bit-identical)


def group_cells(cells: list[Cell]) -> list[list[Cell]]:
    groups: dict[tuple, list[Cell]] = defaultdict(list)
    for cell in cells:
        trains = cell.method.adapter_class.trains_on_source
        groups[(cell.method.name, cell.source if trains else "*", "*" if trains else cell.target)].append(cell)
    return list(groups.values())


def run_group(spec: WorkerSpec, cell_ids: list[str]) -> list[tuple[str, str]]:
    """Runs in the worker: rebuild the runner, run the named cells, return (cell id, status)."""
    import torch

    from benchmark.run.runner import Runner
    from benchmark.run.session import pick_device
    from benchmark.features.weights import WeightStore

    if Path(spec.cwd).is_dir():
        os.chdir(spec.cwd)
    if spec.threads:
        torch.set_num_threads(spec.threads)
    runner = Runner(spec.experiment, Path(spec.results), pick_device(spec.device),
                    WeightStore(spec.weights_dir, spec.allow_download), batch_size=spec.batch_size,
                    show_progress=False, cache_dir=Path(spec.cache_dir) if spec.cache_dir else None)
    wanted = set(cell_ids)
    return [(cell.id, runner.run_claimed(cell)) for cell in spec.experiment.cells() if cell.id in wanted]


def run_joblib(spec: WorkerSpec, groups: list[list[Cell]], jobs: int) -> list[tuple[str, str]]:
    from joblib import Parallel, delayed

    # loky processes: each worker imports torch once and keeps its feature cache across groups
    results = Parallel(n_jobs=jobs, backend="loky")(delayed(run_group)(spec, [c.id for c in group]) for group in groups)
    return [status for statuses in results for status in statuses]


def run_dask(spec: WorkerSpec, groups: list[list[Cell]], scheduler: str) -> list[tuple[str, str]]:
    try:
        from distributed import Client
    except ImportError:
        raise GadbenchError("--backend dask needs the 'distributed' package: pip install 'dask[distributed]' -c constraints.txt") from None
    try:
        client = Client(scheduler, timeout="30s")
    except OSError as error:
        raise GadbenchError(f"--scheduler {scheduler}: no Dask scheduler answers there ({error}); "
                            "start one with `dask scheduler` or see docs/reproducing.md") from None
    with client:
        futures = client.map(run_group, [spec] * len(groups), [[c.id for c in g] for g in groups], pure=False)
        results = client.gather(futures)
    return [status for statuses in results for status in statuses]
