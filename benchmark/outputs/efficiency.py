"""The efficiency table: parameters, source training time, inference throughput and peak memory.

`gadbench bench -e configs/experiments/efficiency.yaml` measures every listed method in
interleaved rounds (benchmark/outputs/bench_rounds.py), each measurement in a fresh process of its
own (so one method's memory never counts against the next), and writes one JSON per (device,
method) under <results>/efficiency/, then results/tables/<bench>/efficiency.{csv,tex}. This module
is what runs inside one such process.

What is timed, per method:
  - training: the method's fit_source on the bench's source domain, its configured schedule (with
    the bench's overrides, shown in the row), from scratch, in the first round only (later rounds
    load its checkpoint);
  - inference: predict() on already decoded, preprocessed query images of the target category with
    the references set once: the backbone (the feature cache is off), the method's head and the
    map post-processing; image decoding and metrics are not timed. After `warmup` calls, calls are
    repeated for at least `min_seconds` (and at least three times), each timed on its own (CUDA
    synchronised around it); throughput = batch size / the MEDIAN call, so that a burst of load
    from elsewhere on a shared machine moves a few calls, not the figure. At batch 1 and at every
    batch size of `batch_sizes` while a call is expected to take at most `max_batch_seconds`
    (expected: the last measured call's time per image x the batch size); the best is reported
    with its batch size;
  - peak memory during the timed inference: CUDA max allocated on a GPU, the process's peak
    resident set (sampled every 5 ms) on the CPU. The two are different quantities and are never
    put in one column: every device gets a table of its own.
"""

from __future__ import annotations

import os
import platform
import statistics
import threading
import time
from pathlib import Path

import torch

from benchmark.config import check_keys, deep_merge, load_yaml
from benchmark.errors import MissingWeights

BENCH_KEYS = {"name", "description", "data_root", "datasets", "source", "target", "category", "settings", "batch_sizes",
              "warmup", "min_seconds", "max_batch_seconds", "methods", "rounds", "reference"}
METHOD_ENTRY_KEYS = {"method", "config", "random_weights", "label"}
BENCH_VERSION = 3  # in every row's key: bump when what is timed changes (3: median call)


def load_bench(path: str | Path, data_root: str | None = None) -> dict:
    path = Path(path)
    data = load_yaml(path)
    check_keys(str(path), data, BENCH_KEYS, {"source", "target", "methods"})
    bench = {"settings": {"normal": "N1", "normal+abnormal": "N1+A1"}, "batch_sizes": [1, 2, 4, 8, 16], "warmup": 1,
             "min_seconds": 2.0, "max_batch_seconds": 20.0, "category": None, "rounds": 3, "reference": None, **data,
             "path": str(path)}
    bench["data_root"] = data_root or os.environ.get("DATA_ROOT") or bench.get("data_root", "data")
    bench.setdefault("name", path.stem)
    for entry in bench["methods"]:
        entry = {"method": entry} if isinstance(entry, str) else entry
        check_keys(f"{path}: methods", entry, METHOD_ENTRY_KEYS, {"method"})
    bench["methods"] = [{"method": e} if isinstance(e, str) else e for e in bench["methods"]]
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


def _throughput(adapter, batch, device, warmup: int, min_seconds: float) -> tuple[float, float]:
    """(images per second, seconds of the median call) for one batch size: the method's prediction
    and the harness's map post-processing, as a run scores a batch."""
    from benchmark.run.engine import predict_at_original

    for _ in range(warmup):
        predict_at_original(adapter, batch)
    _sync(device)
    calls, start = [], time.perf_counter()
    while len(calls) < MIN_TIMED_CALLS or time.perf_counter() - start < min_seconds:
        began = time.perf_counter()
        predict_at_original(adapter, batch)
        _sync(device)
        calls.append(time.perf_counter() - began)
    median = statistics.median(calls)
    return len(batch) / median, median


def measure(bench: dict, entry: dict, device_string: str, weights_dir: str | None, workdir: str,
            sizes: list[int] | None = None) -> dict:
    """Runs in a fresh process: train (or load what an earlier round trained in `workdir`), then
    time inference at `sizes` (default: batch 1 and the bench's sizes until one call is too slow)."""
    import warnings

    from benchmark import registry
    from benchmark.adapter import NORMAL, Domain, RunContext
    from benchmark.data.references import Plan, QueryGroup
    from benchmark.run.engine import references
    from benchmark.data import read_dataset
    from benchmark.run.experiment import load_datasets, load_method
    from benchmark.features.service import FeatureService
    from benchmark.data.references import parse_setting
    from benchmark.run.runner import make_deterministic, seed_everything
    from benchmark.features.weights import WeightStore

    warnings.filterwarnings("ignore", category=FutureWarning)
    device = torch.device(device_string)
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
    row = {"method": method.name, "label": entry.get("label") or method.label, "adapter": method.adapter,
           "device": device.type, "device_name": device_name(device), "precision": "float32", "threads": torch.get_num_threads(),
           "setting": setting.label, "overrides": entry.get("config") or {}, "source": source.name, "target": target.name}
    try:
        adapter = adapter_class(config, RunContext(device, store, training_features, Path(workdir)))
        if adapter_class.trains_on_source:
            fresh = not any(Path(workdir).rglob("model.pt"))
            start = time.perf_counter()
            adapter.fit_source(Domain(source.name, read_dataset(source), source.mask_threshold), 0, Path(workdir),
                               setting=setting, target=None)
            _sync(device)
            if fresh:  # the first round trains and is timed; later rounds load its checkpoint
                row["training_seconds"] = time.perf_counter() - start
            row["training_epochs"] = adapter.describe().get("training_epochs")
        adapter.context.features = timing_features
        preprocessing = adapter.preprocessing()
        table = read_dataset(target)
        category = bench["category"] or sorted(table.category.unique())[0]
        rows = table[table.category == category]
        # the references: the first k normal training images and the first anomalous one
        group = QueryGroup(rows[rows.label == 1].iloc[0].to_dict() if setting.k_abnormal else None, rows.iloc[:0])
        plan = Plan(None, rows[(rows.split == "train") & (rows.label == 0)].head(setting.k_normal), [group], 0)
        adapter.set_references(category, *references(adapter, plan, group, target.mask_threshold, setting.k_abnormal))
        per_batch = _time_batch_sizes(adapter, rows[rows.split == "test"].reset_index(drop=True), preprocessing,
                                      device, bench, sizes)
        best = max(per_batch, key=lambda b: per_batch[b]["images_per_second"])
        description = adapter.describe()
    except MissingWeights as error:
        return {**row, "status": "skipped", "reason": str(error)}
    total, trainable = description.get("parameters_total"), description.get("parameters_trainable")
    return {**row, "status": "done", "image_size": preprocessing.size, "category": category,
            "parameters_total_m": total / 1e6 if total is not None else None,
            "parameters_trainable_m": trainable / 1e6 if trainable is not None else 0.0,
            "random_weights": bool(description.get("random_weights")),
            "throughput_batch1": per_batch[1]["images_per_second"], "best_batch": best,
            "throughput_best": per_batch[best]["images_per_second"], "per_batch": per_batch,
            "peak_memory_mib": per_batch[best]["peak_memory_mib"],
            "memory_kind": "CUDA max allocated" if device.type == "cuda" else "process peak RSS"}


def _time_batch_sizes(adapter, queries, preprocessing, device: torch.device, bench: dict,
                      sizes: list[int] | None = None) -> dict[int, dict]:
    """Throughput and peak memory at batch 1 and each bench batch size while a call is expected to
    take at most max_batch_seconds (or at exactly `sizes`: the later rounds time what the first
    one did)."""
    from benchmark.data.batches import load_batch

    per_batch, seconds_per_image = {}, 0.0
    for size in sizes or sorted(set(bench["batch_sizes"]) | {1}):
        if sizes is None and seconds_per_image * size > bench["max_batch_seconds"]:
            break  # expected to take longer than max_batch_seconds a call: larger sizes are not timed
        batch = load_batch(queries.iloc[[i % len(queries) for i in range(size)]], preprocessing)
        batch.images  # decode now: decoding is not part of the timed call
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        with PeakRSS() as rss:
            images_per_second, call_seconds = _throughput(adapter, batch, device, bench["warmup"], bench["min_seconds"])
        peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else rss.peak
        per_batch[size] = {"images_per_second": images_per_second, "seconds_per_call": call_seconds,
                           "peak_memory_mib": peak / 2**20}
        seconds_per_image = call_seconds / size
    return per_batch
