"""The efficiency table: parameters, source training time, inference throughput and peak memory.

`gadbench bench -e configs/experiments/efficiency.yaml` measures every listed method in
interleaved rounds (benchmark/bench/rounds.py), each method in a fresh process of its own
per round (so one method's memory never counts against the next), and writes one JSON per (device,
method) under <results>/efficiency/, then results/tables/<bench>/efficiency.{csv,tex}. This module
is what runs inside one such process (MethodUnderTest, serve).

What is timed, per method:
  - training: the method trained on the bench's source domain, its configured schedule (with
    the bench's overrides, shown in the row), from scratch, once, in a process that times nothing
    else (every round's processes load its checkpoint);
  - inference: predict() on already decoded, preprocessed query images of the target category with
    the references set once: the backbone (the feature cache is off), the method's head and the
    map post-processing; image decoding and metrics are not timed. Calls are timed in short
    bursts, one method after the other (bench/bursts.py), each call on its own (CUDA synchronised
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

import time
import traceback
import warnings
from pathlib import Path

import torch

from benchmark.api import NORMAL
from benchmark.bench.config import device_name
from benchmark.bench.measure import PeakRSS, _sync, timed_calls
from benchmark.config import deep_merge
from benchmark.data import read_dataset
from benchmark.data.batches import load_batch, training_data
from benchmark.data.references import Plan, QueryGroup
from benchmark.data.settings import parse_setting
from benchmark.errors import MissingWeights
from benchmark.features.service import FeatureService
from benchmark.features.weights import WeightStore
from benchmark.run.engine import predict_at_original, references
from benchmark.run.experiment import load_datasets, load_method
from benchmark.run.session import open_method


class MethodUnderTest:
    """What one bench process holds between bursts: the method trained (or loaded from what the
    bench's training process trained in `workdir`), its references set, and decoded query
    batches, built under the bench's conditions. `skipped` says why not when its weights are not
    here."""

    def __init__(self, bench: dict, entry: dict, device_string: str, weights_dir: str | None, workdir: str,
                 train_only: bool = False):
        warnings.filterwarnings("ignore", category=FutureWarning)
        self.device = device = torch.device(device_string)
        method = load_method(entry["method"], bench["path"])
        method.config = deep_merge(method.config, entry.get("config") or {})
        if entry.get("random_weights"):
            method.config["allow_random_weights"] = True
        setting = parse_setting(bench["settings"]["normal" if NORMAL in method.adapter_class.supports else "normal+abnormal"])
        datasets = load_datasets(bench.get("datasets"), Path(bench["data_root"]).resolve(), bench["path"])
        source, target = (datasets[bench[k]] for k in ("source", "target"))
        self.row = {"method": method.name, "label": entry.get("label") or method.label, "adapter": method.adapter,
                    "device": device.type, "device_name": device_name(device), "precision": "float32",
                    "threads": torch.get_num_threads(), "setting": setting.label, "overrides": entry.get("config") or {},
                    "source": source.name, "target": target.name}
        self.skipped = None
        try:
            self._open(method, WeightStore(weights_dir), setting, source, Path(workdir))
            if not train_only:
                self._set_references(bench, setting, target)
        except MissingWeights as error:
            self.skipped = str(error)

    def _open(self, method, store: WeightStore, setting, source, workdir: Path) -> None:
        """Train (timed, in the training process) or load the method; training may use the
        feature cache, as a run's does."""
        trains = method.adapter_class.trains_on_source
        fresh = trains and not any(workdir.rglob("model.pt"))
        start = time.perf_counter()
        self.adapter = open_method(method, device=self.device, weights=store, workdir=workdir, seed=0,
                                   source=training_data(source.name, read_dataset(source), source.mask_threshold) if trains else None,
                                   setting=setting).adapter
        _sync(self.device)
        if fresh:  # the training process trains and is timed; the rounds load its checkpoint
            self.row["training_seconds"] = time.perf_counter() - start
        if trains:
            self.row["training_epochs"] = self.adapter.describe().get("training_epochs")

    def _set_references(self, bench: dict, setting, target) -> None:
        """The first k normal training images (and the first anomalous one) of the category as
        references, its test images as queries; every timed call runs the backbone."""
        adapter = self.adapter
        adapter.context.features = FeatureService(adapter.context.weights, self.device, memory_bytes=0)
        self.preprocessing = adapter.preprocessing()
        table = read_dataset(target)
        category = bench["category"] or sorted(table.category.unique())[0]
        rows = table[table.category == category]
        group = QueryGroup(rows[rows.label == 1].head(setting.k_abnormal).to_dict("records"), rows.iloc[:0])
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
                        memory_kind="CUDA max allocated" if self.device.type == "cuda" else "process peak RSS")

    def burst(self, size: int, warmup: int, min_calls: int, min_seconds: float) -> dict:
        """Time calls at batch `size`: the method's prediction and the harness's map
        post-processing, on decoded images, as a run scores a batch. Returns the calls' seconds,
        when the burst began (time.monotonic, comparable between processes) and the peak memory
        at this size so far."""
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
