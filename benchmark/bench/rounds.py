"""`gadbench bench`: every method timed in interleaved rounds and, within a round, in interleaved
bursts, so that load on a shared machine falls on all methods alike.

First, each method that trains is trained from scratch (timed) in a process of its own
(benchmark/bench/process.py:serve, forked from a server that has only imported the
libraries). A round then starts one fresh process per method, one after the other: each loads
its method (the checkpoint trained before), sets its references and waits. Then,
for each batch size, the round asks for `bursts` short bursts of timed calls in turn, A B C, B C A,
C A B, ...: each burst lasts about min_seconds / bursts, so the methods' calls that are compared
are seconds apart, not minutes, and the order rotates so that no method always follows the same
one. `rounds` such rounds run one after the other. The first round fixes the batch sizes; later
rounds time the same ones.

Per round and batch size a method's throughput is the batch size over its median call. Its ratio
to the reference method is taken burst by burst (the reference's median call in that burst cycle
over the method's: a throughput ratio measured side by side) and the round's ratio is the median
over its bursts. A row reports, per batch size, the median throughput over rounds and its spread
((max - min) / median), marked noisy above NOISY_SPREAD, and the median ratio over rounds with
its spread. Peak memory is the largest over rounds. When any method must be measured, the
reference method is measured again with it.

With `share_checkpoints` (`gadbench bench --checkpoints results/checkpoints`), the checkpoints
the bench trained for methods measured with their own config (no overrides) are copied
where `gadbench run` looks for them (<checkpoints>/<method>/<source>/): a checkpoint is found by
the hash of everything that shapes it, so a grid that needs the same model loads it instead of
training it again. ./run_all.sh runs the bench first for this reason.
"""

from __future__ import annotations

import multiprocessing
import shutil
import sys
import tempfile
from multiprocessing import get_context
from pathlib import Path

import torch

from benchmark.api.atomic import atomic_file
from benchmark.bench.bursts import combine, round_row, time_in_bursts
from benchmark.bench.config import BENCH_VERSION, device_name, device_slug
from benchmark.bench.evaluation import evaluation_ms_per_mpx
from benchmark.bench.measure import cpu_times, steal_share
from benchmark.bench.process import serve
from benchmark.config import config_hash
from benchmark.errors import GadbenchError
from benchmark.run.experiment import load_method
from benchmark.run.results import read_cell, write_json_atomic

TIMING_KEYS = ("source", "target", "category", "settings", "batch_sizes", "warmup", "min_seconds", "max_batch_seconds",
               "rehearsal", "rounds", "bursts", "reference")

# A measurement runs in a new process, forked from a server process that has imported these (and
# nothing else): each of the bench's processes then starts in a fraction of a second instead of
# importing torch and timm again (about 6 s on a 2-core CPU); none has run a tensor operation.
PRELOADED = ["torch", "timm", "benchmark.bench.process", "benchmark.run.engine", "benchmark.run.session",
             "benchmark.run.experiment", "benchmark.features.service"]



def _fresh_process_context():
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return get_context("spawn")
    context = get_context("forkserver")
    context.set_forkserver_preload(PRELOADED)
    return context


class BenchProcess:
    """One method's process for one round (efficiency.serve) and the pipe to it."""

    def __init__(self, context, method: str, args: tuple):
        self.method = method
        self.connection, child = context.Pipe()
        self.process = context.Process(target=serve, args=(child, *args), name=f"bench-{method}")
        self.process.start()
        child.close()

    def receive(self) -> dict:
        try:
            reply = self.connection.recv()
        except EOFError:
            self.process.join(timeout=5)
            raise GadbenchError(f"{self.method}: its bench process ended without answering (exit code "
                                f"{self.process.exitcode}; out of memory?)") from None
        if reply.get("status") == "error":  # a failing method is a bug: its traceback, then one line
            print(reply["traceback"], file=sys.stderr)
            raise GadbenchError(f"{self.method}: {reply['error']} (in its bench process; traceback above)")
        return reply

    def burst(self, size: int, warmup: int, min_calls: int, min_seconds: float) -> dict:
        self.connection.send((size, warmup, min_calls, min_seconds))
        return self.receive()

    def close(self) -> None:
        if self.process.is_alive():
            try:
                self.connection.send(None)
            except (BrokenPipeError, OSError):
                pass
            self.process.join(timeout=30)
            if self.process.is_alive():
                self.process.kill()
                self.process.join()
        self.connection.close()


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
    measured = _rounds(bench, todo, device, weights_dir, name, echo, share_checkpoints, reference) if todo else {}
    evaluation = evaluation_ms_per_mpx(device) if measured else None  # method-independent: once per run
    rows = []
    for order, entry, method in wanted + [e for e in todo if e not in wanted]:
        if method in measured:
            rounds = measured[method]
            row = combine(rounds) if all(r["status"] == "done" for r in rounds) else rounds[-1]
            row.update(key=keys[method], order=order, bench=bench["name"], rehearsal=bool(bench.get("rehearsal")),
                       reference=reference, evaluation_ms_per_mpx=evaluation)
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


def _rounds(bench, todo, device, weights_dir, name, echo, share_checkpoints=None, reference=None) -> dict[str, list[dict]]:
    """{method: [its row of each round]}. The methods that train are trained first, each in a
    process of its own (timed); every round's processes load those checkpoints, so that no timed
    process has trained (training leaves a process's memory allocator in another state, which
    made a method's first-round calls up to 40 % faster than its later ones). A method skipped
    (missing weights) is not measured again."""
    measured = {method: [] for _, _, method in todo}
    with tempfile.TemporaryDirectory(prefix="gadbench-bench-") as work:
        context = _fresh_process_context()
        arguments = {method: (bench, entry, str(device), weights_dir, str(Path(work) / method)) for _, entry, method in todo}
        training = _train(bench, todo, context, arguments, measured, name, echo, share_checkpoints)
        for round_index in range(int(bench["rounds"])):
            _round(bench, todo, context, arguments, measured, training, round_index, name, echo, reference)
    return measured


def _train(bench, todo, context, arguments, measured, name, echo, share_checkpoints) -> dict[str, dict]:
    """Train each method that trains, in a process of its own; {method: its training figures}.
    A method whose weights are missing gets its "skipped" row in `measured`."""
    training = {}
    for _, entry, method in todo:
        if not load_method(entry["method"], bench["path"]).adapter_class.trains_on_source:
            continue
        echo(f"{method}: training on {name} ...")
        process = BenchProcess(context, method, (*arguments[method], True))
        try:
            reply = process.receive()
        finally:
            process.close()
        if reply["status"] != "ready":
            measured[method].append(reply)
            continue
        training[method] = {key: reply.get(key) for key in ("training_seconds", "training_epochs")}
        if share_checkpoints is not None and not entry.get("config") and not entry.get("random_weights"):
            for copy in share_trained(Path(arguments[method][-1]), Path(share_checkpoints) / method / bench["source"]):
                echo(f"  shared its checkpoint: {copy}")
    return training


def _round(bench, todo, context, arguments, measured, training, round_index, name, echo, reference) -> None:
    """One round: a fresh process per method, then its bursts; appends each method's row."""
    processes = {}
    try:
        for _, _, method in todo:
            if measured[method] and measured[method][0]["status"] != "done":
                continue
            echo(f"{method}: round {round_index + 1}/{bench['rounds']} on {name} ...")
            process = BenchProcess(context, method, arguments[method])
            reply = process.receive()
            if reply["status"] != "ready":
                process.close()
                measured[method].append(reply)
                continue
            processes[method] = process
            measured[method].append({**reply, **training.get(method, {}), "status": "done"})
        sizes = {m: list(measured[m][0]["per_batch"]) for m in processes} if round_index else None
        before = cpu_times()
        timings = time_in_bursts(bench, {m: p.burst for m, p in processes.items()}, sizes or None)
        steal = steal_share(before, cpu_times())
    finally:
        for process in processes.values():
            process.close()
    for method, per_batch in timings.items():
        measured[method][-1].update(round_row(per_batch, timings.get(reference)), cpu_steal_share=steal)


def _echo_row(row: dict, echo) -> None:
    if row["status"] != "done":
        echo(f"  {row['method']} skipped: {row['reason']}")
        return
    ratio = f", {row['ratio_batch1']:.2f}x {row['reference']}" if row.get("ratio_batch1") is not None else ""
    steal = f", CPU steal up to {100 * row['cpu_steal_share']:.0f} %" if row.get("cpu_steal_share") is not None else ""
    echo(f"  {row['method']}: {row['throughput_batch1']:.2f} img/s at batch 1 (spread {100 * row['throughput_batch1_spread']:.0f} %"
         f" over {row['rounds']} rounds{ratio}{steal}), {row['throughput_best']:.2f} img/s at batch {row['best_batch']}, peak"
         f" {row['peak_memory_mib']:.0f} MiB" + (f", training {row['training_seconds']:.1f} s" if row.get("training_seconds") else ""))
