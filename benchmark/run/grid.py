"""A grid of cells: what is left of it, run here or in worker processes (benchmark/run/parallel.py)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from tqdm.auto import tqdm

from benchmark.run import parallel
from benchmark.run.experiment import Cell
from benchmark.run.planning import raise_for_shortages, shortages
from benchmark.run.record import DONE, ELSEWHERE, FAILED, SKIPPED
from benchmark.run.results import read_record
from benchmark.run.runner import Runner


def run_grid(runner: Runner, cells: list[Cell] | None = None, jobs: int = 1, scheduler: str | None = None,
             threads_per_job: int | None = None) -> dict:
    """Run what is left of the grid: in this process, in `jobs` local processes, or on the Dask
    scheduler at `scheduler`. Workers use this process's torch thread count unless
    `threads_per_job` says otherwise: CPU results are bit-identical only for equal thread counts
    (docs/reliability.md), and every cell records its count."""
    cells = runner.experiment.cells() if cells is None else cells
    raise_for_shortages(shortages(runner.data, cells), str(runner.experiment.path))  # before anything is written
    runner.data.sweep_temporary_files(runner.features.disk.root if runner.features.disk is not None else None)
    runner.data.preflight(cells)
    todo = [c for c in cells if not runner.is_finished(c, report=lambda line: tqdm.write(line, file=sys.stderr))]
    summary = {"total": len(cells), "already_done": len(cells) - len(todo), DONE: 0, FAILED: 0, SKIPPED: 0, ELSEWHERE: 0}
    if todo and (jobs > 1 or scheduler):
        statuses = _run_elsewhere(runner, todo, jobs, scheduler, threads_per_job or torch.get_num_threads())
    else:
        statuses = []
        bar = tqdm(todo, desc="cells", unit="cell", disable=not runner.show_progress)
        for cell in bar:
            bar.set_postfix_str(cell.id)
            statuses.append((cell.id, runner.run_claimed(cell)))
    for _, status in statuses:
        summary[status] += 1
    return summary


def summary_line(name: str, summary: dict) -> str:
    elsewhere = f", {summary[ELSEWHERE]} left to another run on this results folder" if summary[ELSEWHERE] else ""
    return (f"{name}: {summary['total']} cells: {summary['already_done']} already done, {summary[DONE]} run, "
            f"{summary[SKIPPED]} skipped, {summary[FAILED]} failed{elsewhere}")


def _run_elsewhere(runner: Runner, todo: list[Cell], jobs: int, scheduler: str | None, threads: int) -> list[tuple[str, str]]:
    spec = parallel.WorkerSpec(
        experiment=runner.experiment, results=str(runner.results_root.resolve()), device=str(runner.device),
        weights_dir=str(runner.weights.dir), allow_download=runner.weights.allow_download, batch_size=runner.batch_size,
        cache_dir=str(Path(runner.cache_dir).resolve()) if runner.cache_dir is not None else None, cwd=os.getcwd(),
        threads=threads)
    groups = parallel.group_cells(todo)
    statuses = parallel.run_dask(spec, groups, scheduler) if scheduler else parallel.run_joblib(spec, groups, jobs)
    for cell_id, status in statuses:
        if status not in (DONE, ELSEWHERE):
            record = read_record(runner.path(next(c for c in todo if c.id == cell_id)))
            tqdm.write(f"{status}: {cell_id}: {record.why_not if record else 'no cell file'}", file=sys.stderr)
    return statuses
