"""The efficiency table: parameters, source training time, inference throughput and peak memory.

`gadbench bench -e configs/experiments/efficiency.yaml` measures every listed method in
interleaved rounds (benchmark/outputs/bench_rounds.py), each method in a fresh process of its own
per round (so one method's memory never counts against the next), and writes one JSON per (device,
method) under <results>/efficiency/, then results/tables/<bench>/efficiency.{csv,tex}. This module
is what runs inside one such process (MethodUnderTest, serve).

What is timed, per method:
  - training: the method's fit_source on the bench's source domain, its configured schedule (with
    the bench's overrides, shown in the row), from scratch, once, in a process that times nothing
    else (every round's processes load its checkpoint);
  - inference: predict() on already decoded, preprocessed query images of the target category with
    the references set once: the backbone (the feature cache is off), the method's head and the
    map post-processing; image decoding and metrics are not timed. Calls are timed in short
    bursts, one method after the other (bench_rounds.py), each call on its own (CUDA synchronised
    around it), after `warmup` untimed calls; throughput = batch size / the MEDIAN call, so that a
    burst of load from elsewhere on a shared machine moves a few calls, not the figure. At batch
    1 and at every batch size of `batch_sizes` while a call is expected to take at most
    `max_batch_seconds` (expected: the last measured call's time per image x the batch size); the
    best is reported with its batch size;
  - peak memory during the timed inference: CUDA max allocated on a GPU, the process's peak
    resident set (sampled every 5 ms) on the CPU. The two are different quantities and are never
    put in one column: every device gets a table of its own.
"""

from __future__ import annotations

import os
import platform
import threading
import time
from pathlib import Path

import torch

from benchmark.config import check_keys, deep_merge, load_yaml
from benchmark.errors import GadbenchError, MissingWeights

BENCH_KEYS = {"name", "description", "data_root", "datasets", "source", "target", "category", "settings", "batch_sizes",
              "warmup", "min_seconds", "max_batch_seconds", "methods", "rounds", "bursts", "reference"}
METHOD_ENTRY_KEYS = {"method", "config", "random_weights", "label"}
BENCH_VERSION = 4  # in every row's key: bump when what is timed changes (3: median call; 4: bursts)


def load_bench(path: str | Path, data_root: str | None = None) -> dict:
    path = Path(path)
    data = load_yaml(path)
    check_keys(str(path), data, BENCH_KEYS, {"source", "target", "methods"})
    bench = {"settings": {"normal": "N1", "normal+abnormal": "N1+A1"}, "batch_sizes": [1, 2, 4, 8, 16], "warmup": 1,
             "min_seconds": 2.0, "max_batch_seconds": 20.0, "category": None, "rounds": 3, "bursts": 5, "reference": None, **data,
             "path": str(path)}
    bench["data_root"] = data_root or os.environ.get("DATA_ROOT") or bench.get("data_root", "data")
    bench.setdefault("name", path.stem)
    for entry in bench["methods"]:
        entry = {"method": entry} if isinstance(entry, str) else entry
        check_keys(f"{path}: methods", entry, METHOD_ENTRY_KEYS, {"method"})
    bench["methods"] = [{"method": e} if isinstance(e, str) else e for e in bench["methods"]]
    for key in ("rounds", "bursts"):
        if isinstance(bench[key], bool) or not isinstance(bench[key], int) or bench[key] < 1:
            raise GadbenchError(f"{path}: {key} must be a whole number of at least 1, not {bench[key]!r}")
    return bench


def device_slug(device: torch.device) -> str:
    return "cuda-" + torch.cuda.get_device_name(device).replace(" ", "_") if device.type == "cuda" else "cpu"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


class PeakRSS:
    """Samples the resident set of this process in a thread: the CPU has no peak counter to reset."""

    def __init__(self, every: float = 0.005):
        import psutil

        self.process, self.every, self.peak, self._stop = psutil.Process(), every, 0, threading.Event()

    def __enter__(self):
        self.peak = self.process.memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(self.every)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


MIN_TIMED_CALLS = 3


def timed_calls(call, warmup: int, min_calls: int, min_seconds: float, sync=lambda: None) -> list[float]:
    """Seconds of each of at least `min_calls` calls lasting at least `min_seconds` together,
    after `warmup` untimed calls; each call timed on its own (sync() waits for the device)."""
    for _ in range(warmup):
        call()
    sync()
    calls, start = [], time.perf_counter()
    while len(calls) < min_calls or time.perf_counter() - start < min_seconds:
        began = time.perf_counter()
        call()
        sync()
        calls.append(time.perf_counter() - began)
    return calls


class MethodUnderTest:
    """What one bench process holds between bursts: the method trained (or loaded from what the
    bench's training process trained in `workdir`), its references set, and decoded query
    batches, built under the bench's conditions. `skipped` says why not when its weights are not
    here."""

    def __init__(self, bench: dict, entry: dict, device_string: str, weights_dir: str | None, workdir: str,
                 train_only: bool = False):
        import warnings

        from benchmark import registry
        from benchmark.adapter import NORMAL
        from benchmark.data.references import parse_setting
        from benchmark.features.service import FeatureService
        from benchmark.features.weights import WeightStore
        from benchmark.run.experiment import load_datasets, load_method
        from benchmark.run.runner import make_deterministic, seed_everything

        warnings.filterwarnings("ignore", category=FutureWarning)
        self.device = device = torch.device(device_string)
        make_deterministic(device)
        seed_everything(0)
        method = load_method(entry["method"], bench["path"])
        config = deep_merge(method.config, entry.get("config") or {})
        if entry.get("random_weights"):
            config["allow_random_weights"] = True
        store = WeightStore(weights_dir)
        adapter_class = registry.resolve(method.adapter)
        setting = parse_setting(bench["settings"]["normal" if NORMAL in adapter_class.supports else "normal+abnormal"])
        datasets = load_datasets(bench.get("datasets"), Path(bench["data_root"]).resolve(), bench["path"])
        source, target = (datasets[bench[k]] for k in ("source", "target"))
        training_features = FeatureService(store, device)  # training may cache, as the runner's does
        timing_features = FeatureService(store, device, memory_bytes=0)  # every timed call runs the backbone
        self.row = {"method": method.name, "label": entry.get("label") or method.label, "adapter": method.adapter,
                    "device": device.type, "device_name": device_name(device), "precision": "float32",
                    "threads": torch.get_num_threads(), "setting": setting.label, "overrides": entry.get("config") or {},
                    "source": source.name, "target": target.name}
        self.skipped = None
        try:
            self._build(bench, adapter_class, config, store, setting, source, target, training_features, timing_features,
                        workdir, train_only)
        except MissingWeights as error:
            self.skipped = str(error)

    def _build(self, bench, adapter_class, config, store, setting, source, target, training_features, timing_features,
               workdir, train_only) -> None:
        from benchmark.adapter import Domain, RunContext
        from benchmark.data import read_dataset
        from benchmark.data.references import Plan, QueryGroup
        from benchmark.run.engine import references

        device = self.device
        self.adapter = adapter = adapter_class(config, RunContext(device, store, training_features, Path(workdir)))
        if adapter_class.trains_on_source:
            fresh = not any(Path(workdir).rglob("model.pt"))
            start = time.perf_counter()
            adapter.fit_source(Domain(source.name, read_dataset(source), source.mask_threshold), 0, Path(workdir),
                               setting=setting, target=None)
            _sync(device)
            if fresh:  # the training process trains and is timed; the rounds load its checkpoint
                self.row["training_seconds"] = time.perf_counter() - start
            self.row["training_epochs"] = adapter.describe().get("training_epochs")
        if train_only:
            return
        adapter.context.features = timing_features
        self.preprocessing = adapter.preprocessing()
        table = read_dataset(target)
        category = bench["category"] or sorted(table.category.unique())[0]
        rows = table[table.category == category]
        # the references: the first k normal training images and the first anomalous one
        group = QueryGroup(rows[rows.label == 1].iloc[0].to_dict() if setting.k_abnormal else None, rows.iloc[:0])
        plan = Plan(None, rows[(rows.split == "train") & (rows.label == 0)].head(setting.k_normal), [group], 0)
        adapter.set_references(category, *references(adapter, plan, group, target.mask_threshold, setting.k_abnormal))
        self.queries = rows[rows.split == "test"].reset_index(drop=True)
        self.batches, self.peaks = {}, {}
        description = adapter.describe()
        total, trainable = description.get("parameters_total"), description.get("parameters_trainable")
        self.row.update(image_size=self.preprocessing.size, category=category,
                        parameters_total_m=total / 1e6 if total is not None else None,
                        parameters_trainable_m=trainable / 1e6 if trainable is not None else 0.0,
                        random_weights=bool(description.get("random_weights")),
                        memory_kind="CUDA max allocated" if device.type == "cuda" else "process peak RSS")

    def burst(self, size: int, warmup: int, min_calls: int, min_seconds: float) -> dict:
        """Time calls at batch `size`: the method's prediction and the harness's map
        post-processing, on decoded images, as a run scores a batch. Returns the calls' seconds,
        when the burst began (time.monotonic, comparable between processes) and the peak memory
        at this size so far."""
        from benchmark.data.batches import load_batch
        from benchmark.run.engine import predict_at_original

        if size not in self.batches:
            batch = load_batch(self.queries.iloc[[i % len(self.queries) for i in range(size)]], self.preprocessing)
            batch.images  # decode now: decoding is not part of the timed call
            self.batches[size] = batch
            if self.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(self.device)
        began = time.monotonic()
        with PeakRSS() as rss:
            calls = timed_calls(lambda: predict_at_original(self.adapter, self.batches[size]), warmup, min_calls,
                                min_seconds, lambda: _sync(self.device))
        peak = torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else rss.peak
        self.peaks[size] = max(self.peaks.get(size, 0), peak)
        return {"began": began, "calls": calls, "peak_memory_mib": self.peaks[size] / 2**20}


def _error_reply(error: Exception) -> dict:
    import traceback

    return {"status": "error", "error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}


def serve(connection, bench: dict, entry: dict, device_string: str, weights_dir: str | None, workdir: str,
          train_only: bool = False) -> None:
    """A bench process: build the method (training it, or loading what was trained in
    `workdir`), answer with its row ("ready", or "skipped" for missing weights, or "error"), then
    time one burst per request (size, warmup, min_calls, min_seconds) until it receives None.
    With `train_only` it answers once trained, and ends. An error is answered, not raised: the
    bench stops with it."""
    try:
        method = MethodUnderTest(bench, entry, device_string, weights_dir, workdir, train_only)
    except Exception as error:
        connection.send(_error_reply(error))
        return
    if method.skipped:
        connection.send({**method.row, "status": "skipped", "reason": method.skipped})
        return
    connection.send({**method.row, "status": "ready"})
    if train_only:
        return
    while (request := connection.recv()) is not None:
        try:
            connection.send(method.burst(*request))
        except Exception as error:
            connection.send(_error_reply(error))
            return
