"""`gadbench bench`: every method timed in interleaved rounds, so that load on a shared machine
falls on all methods alike.

Round r measures method A, then B, then C ..., each in a fresh process (benchmark/outputs/
efficiency.py:measure, forked from a server that has only imported the libraries); `rounds` such
rounds run one after the other (A B C A B C ...). The first round trains the methods that train
(timed) and fixes the batch sizes; later rounds load its checkpoints and time the same batch sizes.
A row reports, per batch size, the median throughput over rounds and its spread ((max - min) /
median), marked noisy above NOISY_SPREAD, and the median over rounds of its throughput divided by
the reference method's in the same round: a ratio measured side by side, which is what carries to
another machine. Peak memory is the largest over rounds. When any method must be measured, the
reference method is measured again with it.

With `share_checkpoints` (`gadbench bench --checkpoints results/checkpoints`), the checkpoints
the first round trained for methods measured with their own config (no overrides) are copied
where `gadbench run` looks for them (<checkpoints>/<method>/<source>/): a checkpoint is found by
the hash of everything that shapes it, so a grid that needs the same model loads it instead of
training it again. ./run_all.sh runs the bench first for this reason.
"""

from __future__ import annotations

import multiprocessing
import shutil
import statistics
import tempfile
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import torch

from benchmark.atomic import atomic_file
from benchmark.config import config_hash
from benchmark.errors import GadbenchError
from benchmark.outputs.efficiency import BENCH_VERSION, device_name, device_slug, measure
from benchmark.run.results import read_cell, write_json_atomic

NOISY_SPREAD = 0.20
TIMING_KEYS = ("source", "target", "category", "settings", "batch_sizes", "warmup", "min_seconds", "max_batch_seconds",
               "rehearsal", "rounds", "reference")


def _spread(values: list[float]) -> float:
    return (max(values) - min(values)) / statistics.median(values) if len(values) > 1 else 0.0


def combine(rounds: list[dict], reference_rounds: list[dict] | None) -> dict:
    """One row from a method's rounds (all done): medians, spreads and the ratio to the reference."""
    first = rounds[0]
    sizes = list(first["per_batch"])
    per_batch = {}
    for size in sizes:
        throughputs = [r["per_batch"][size]["images_per_second"] for r in rounds]
        per_batch[size] = {"images_per_second": statistics.median(throughputs), "spread": _spread(throughputs),
                           "per_round": throughputs, "peak_memory_mib": max(r["per_batch"][size]["peak_memory_mib"] for r in rounds)}
    best = max(per_batch, key=lambda b: per_batch[b]["images_per_second"])
    row = {**first, "per_batch": per_batch, "rounds": len(rounds), "best_batch": best,
           "throughput_batch1": per_batch[sizes[0]]["images_per_second"], "throughput_batch1_spread": per_batch[sizes[0]]["spread"],
           "throughput_best": per_batch[best]["images_per_second"], "throughput_best_spread": per_batch[best]["spread"],
           "peak_memory_mib": per_batch[best]["peak_memory_mib"], "ratio_batch1": None, "ratio_batch1_spread": None}
    row["noisy"] = bool(max(row["throughput_batch1_spread"], row["throughput_best_spread"]) > NOISY_SPREAD)
    if reference_rounds and all(r["status"] == "done" for r in reference_rounds) and len(reference_rounds) == len(rounds):
        ratios = [r["per_batch"][sizes[0]]["images_per_second"] / ref["per_batch"][1]["images_per_second"]
                  for r, ref in zip(rounds, reference_rounds)]
        row["ratio_batch1"], row["ratio_batch1_spread"] = statistics.median(ratios), _spread(ratios)
    return row


# A measurement runs in a new process, forked from a server process that has imported these (and
# nothing else): each of the bench's processes then starts in a fraction of a second instead of
# importing torch and timm again (about 6 s on a 2-core CPU); none has run a tensor operation.
PRELOADED = ["torch", "timm", "benchmark.outputs.efficiency", "benchmark.run.engine", "benchmark.run.runner",
             "benchmark.run.experiment", "benchmark.features.service"]


def _fresh_process_context():
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return get_context("spawn")
    context = get_context("forkserver")
    context.set_forkserver_preload(PRELOADED)
    return context


def _measure_in_fresh_process(bench, entry, device, weights_dir, workdir, sizes) -> dict:
    with ProcessPoolExecutor(max_workers=1, mp_context=_fresh_process_context()) as pool:
        row = pool.submit(measure, bench, entry, str(device), weights_dir, str(workdir), sizes).result()
    if row["status"] == "done":  # JSON keys are strings; keep batch sizes as ints
        row["per_batch"] = {int(k): v for k, v in row["per_batch"].items()}
    return row


def share_trained(trained: Path, destination: Path) -> list[Path]:
    """Copy each checkpoint (<identity folder>/model.pt) under `trained` to the same identity folder
    under `destination`, atomically; one already there is never replaced. Returns the copies."""
    copied = []
    for model in sorted(Path(trained).glob("*/model.pt")):
        target = Path(destination) / model.parent.name / "model.pt"
        if not target.exists():
            with atomic_file(target) as temporary:
                shutil.copyfile(model, temporary)
            copied.append(target)
    return copied


def run_bench(bench: dict, results_root: Path, device: torch.device, weights_dir: str | None = None,
              force: bool = False, only: list[str] | None = None, echo=print,
              share_checkpoints: Path | None = None) -> list[dict]:
    """Measure what is not measured yet for this device (a row is redone when its key changes)."""
    from benchmark.run.experiment import load_method

    folder = Path(results_root) / "efficiency" / bench["name"] / device_slug(device)
    name = device_name(device)
    entries = [(order, entry, load_method(entry["method"], bench["path"]).name) for order, entry in enumerate(bench["methods"])]
    reference = bench.get("reference") or entries[0][2]
    if reference not in {method for _, _, method in entries}:
        raise GadbenchError(f"{bench['path']}: reference {reference!r} is not one of the bench's methods")
    keys = {method: config_hash({"entry": entry, "bench": {k: bench.get(k) for k in TIMING_KEYS}, "device": name,
                                 "version": BENCH_VERSION}) for _, entry, method in entries}
    existing = {method: read_cell(folder / f"{method}.json") for _, _, method in entries}
    wanted = [e for e in entries if not only or e[2] in only]
    todo = [e for e in wanted if force or not existing[e[2]] or existing[e[2]].get("key") != keys[e[2]]]
    if todo and reference not in {method for _, _, method in todo}:  # ratios are only measured side by side
        todo = [e for e in entries if e[2] == reference] + todo
    measured = _rounds(bench, todo, device, weights_dir, name, echo, share_checkpoints) if todo else {}
    rows = []
    for order, entry, method in wanted + [e for e in todo if e not in wanted]:
        if method in measured:
            rounds = measured[method]
            row = combine(rounds, measured.get(reference)) if all(r["status"] == "done" for r in rounds) else rounds[-1]
            row.update(key=keys[method], order=order, bench=bench["name"], rehearsal=bool(bench.get("rehearsal")),
                       reference=reference)
            write_json_atomic(row, folder / f"{method}.json")
            _echo_row(row, echo)
        else:
            row = existing[method]
            if row.get("order") != order:  # the table lists methods in the bench file's order
                row["order"] = order
                write_json_atomic(row, folder / f"{method}.json")
            echo(f"{method}: measured before on {name} (use --force to measure again)")
        rows.append(row)
    return rows


def _rounds(bench, todo, device, weights_dir, name, echo, share_checkpoints=None) -> dict[str, list[dict]]:
    """{method: [its row of each round]}: A B C, A B C, ... in fresh processes; a method skipped
    (missing weights) in the first round is not measured again."""
    measured = {method: [] for _, _, method in todo}
    with tempfile.TemporaryDirectory(prefix="gadbench-bench-") as work:
        for round_index in range(int(bench["rounds"])):
            for _, entry, method in todo:
                previous = measured[method]
                if previous and previous[0]["status"] != "done":
                    continue
                echo(f"{method}: round {round_index + 1}/{bench['rounds']} on {name} ...")
                sizes = list(previous[0]["per_batch"]) if previous else None
                row = _measure_in_fresh_process(bench, entry, device, weights_dir, Path(work) / method, sizes)
                if (share_checkpoints is not None and round_index == 0 and row["status"] == "done"
                        and not entry.get("config") and not entry.get("random_weights")):
                    for copy in share_trained(Path(work) / method, Path(share_checkpoints) / method / bench["source"]):
                        echo(f"  shared its checkpoint: {copy}")
                measured[method].append(row)
    return measured


def _echo_row(row: dict, echo) -> None:
    if row["status"] != "done":
        echo(f"  {row['method']} skipped: {row['reason']}")
        return
    ratio = f", {row['ratio_batch1']:.2f}x {row['reference']}" if row.get("ratio_batch1") is not None else ""
    echo(f"  {row['method']}: {row['throughput_batch1']:.2f} img/s at batch 1 (spread {100 * row['throughput_batch1_spread']:.0f} %"
         f" over {row['rounds']} rounds{ratio}), {row['throughput_best']:.2f} img/s at batch {row['best_batch']}, peak"
         f" {row['peak_memory_mib']:.0f} MiB" + (f", training {row['training_seconds']:.1f} s" if row.get("training_seconds") else ""))
