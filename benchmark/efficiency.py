"""The efficiency table: parameters, source training time, inference throughput and peak memory.

`gadbench bench -e configs/experiments/efficiency.yaml` measures every listed method in a fresh
process of its own (so one method's memory never counts against the next) and writes one JSON per
(device, method) under <results>/efficiency/, then results/tables/efficiency.{csv,tex}.

What is timed, per method:
  - training: the method's fit_source on the bench's source domain, its configured schedule (with
    the bench's overrides, shown in the row), from scratch in a temporary folder;
  - inference: predict() on already decoded, preprocessed query images of the target category with
    the references set once: the backbone (the feature cache is off), the method's head and the
    map post-processing; image decoding and metrics are not timed. After `warmup` calls, calls are
    repeated for at least `min_seconds` (and twice); CUDA is synchronised around the clock. At
    batch 1 and at every batch size of `batch_sizes` until one call takes `max_batch_seconds`;
    the best is reported with its batch size;
  - peak memory during the timed inference: CUDA max allocated on a GPU, the process's peak
    resident set (sampled every 5 ms) on the CPU. The two are different quantities and are never
    put in one column: every device gets a table of its own.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import pandas as pd
import torch

from benchmark.atomic import write_text
from benchmark.config import check_keys, config_hash, load_yaml
from benchmark.errors import GadbenchError, MissingWeights
from benchmark.results import read_cell, write_json_atomic

BENCH_KEYS = {"name", "description", "data_root", "datasets", "source", "target", "category", "settings", "batch_sizes",
              "warmup", "min_seconds", "max_batch_seconds", "methods"}
METHOD_ENTRY_KEYS = {"method", "config", "random_weights", "label"}
BENCH_VERSION = 1  # in every row's key: bump when what is timed changes


def load_bench(path: str | Path, data_root: str | None = None) -> dict:
    path = Path(path)
    data = load_yaml(path)
    check_keys(str(path), data, BENCH_KEYS, {"source", "target", "methods"})
    bench = {"settings": {"normal": "N1", "normal+abnormal": "N1+A1"}, "batch_sizes": [1, 2, 4, 8, 16], "warmup": 1,
             "min_seconds": 2.0, "max_batch_seconds": 20.0, "category": None, **data, "path": str(path)}
    bench["data_root"] = data_root or os.environ.get("DATA_ROOT") or bench.get("data_root", "data")
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


def _throughput(adapter, batch, device, warmup: int, min_seconds: float) -> tuple[float, float]:
    """(images per second, seconds of one call) for one batch size."""
    for _ in range(warmup):
        adapter.predict(batch)
    _sync(device)
    calls, start = 0, time.perf_counter()
    while calls < 2 or time.perf_counter() - start < min_seconds:
        adapter.predict(batch)
        _sync(device)
        calls += 1
    elapsed = time.perf_counter() - start
    return len(batch) * calls / elapsed, elapsed / calls


def measure(bench: dict, entry: dict, device_string: str, weights_dir: str | None) -> dict:
    """Runs in a fresh process: train (if asked), then time inference, for one method."""
    import warnings

    from benchmark import registry
    from benchmark.adapter import NORMAL, Domain, RunContext
    from benchmark.batches import load_references
    from benchmark.datasets import read_dataset
    from benchmark.experiment import load_datasets, load_method
    from benchmark.features import FeatureService
    from benchmark.references import parse_setting
    from benchmark.runner import make_deterministic, seed_everything
    from benchmark.weights import WeightStore

    warnings.filterwarnings("ignore", category=FutureWarning)
    device = torch.device(device_string)
    make_deterministic(device)
    seed_everything(0)
    method = load_method(entry["method"], bench["path"])
    config = _merge(method.config, entry.get("config") or {})
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
        with tempfile.TemporaryDirectory() as workdir:
            adapter = adapter_class(config, RunContext(device, store, training_features, Path(workdir)))
            if adapter_class.trains_on_source:
                start = time.perf_counter()
                adapter.fit_source(Domain(source.name, read_dataset(source), source.mask_threshold), 0, Path(workdir),
                                   setting=setting, target=None)
                _sync(device)
                row["training_seconds"] = time.perf_counter() - start
                row["training_epochs"] = adapter.describe().get("training_epochs")
            adapter.context.features = timing_features
            preprocessing = adapter.preprocessing()
            table = read_dataset(target)
            category = bench["category"] or sorted(table.category.unique())[0]
            rows = table[table.category == category]
            normal = load_references(rows[(rows.split == "train") & (rows.label == 0)].head(setting.k_normal),
                                     preprocessing, target.mask_threshold, with_masks=False)
            abnormal = None
            if setting.k_abnormal:
                abnormal = load_references(rows[rows.label == 1].head(setting.k_abnormal), preprocessing,
                                           target.mask_threshold, with_masks=True)
            adapter.set_references(category, normal, abnormal)
            per_batch = _time_batch_sizes(adapter, rows[rows.split == "test"].reset_index(drop=True), preprocessing,
                                          device, bench)
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


def _time_batch_sizes(adapter, queries, preprocessing, device: torch.device, bench: dict) -> dict[int, dict]:
    """Throughput and peak memory at batch 1 and each bench batch size, until one call is too slow."""
    from benchmark.batches import load_batch

    per_batch = {}
    for size in sorted(set(bench["batch_sizes"]) | {1}):
        batch = load_batch(queries.iloc[[i % len(queries) for i in range(size)]], preprocessing)
        batch.images  # decode now: decoding is not part of the timed call
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        with PeakRSS() as rss:
            images_per_second, call_seconds = _throughput(adapter, batch, device, bench["warmup"], bench["min_seconds"])
        peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else rss.peak
        per_batch[size] = {"images_per_second": images_per_second, "seconds_per_call": call_seconds,
                           "peak_memory_mib": peak / 2**20}
        if call_seconds > bench["max_batch_seconds"]:
            break
    return per_batch


def _merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = _merge(out.get(key) or {}, value) if isinstance(value, dict) else value
    return out


def run_bench(bench: dict, results_root: Path, device: torch.device, weights_dir: str | None = None,
              force: bool = False, only: list[str] | None = None, echo=print) -> list[dict]:
    """Measure what is not measured yet for this device (a row is redone when its key changes)."""
    from benchmark.experiment import load_method

    folder = Path(results_root) / "efficiency" / device_slug(device)
    name = device_name(device)
    rows = []
    for order, entry in enumerate(bench["methods"]):
        method = load_method(entry["method"], bench["path"]).name
        if only and method not in only:
            continue
        key = config_hash({"entry": entry, "bench": {k: bench[k] for k in ("source", "target", "category", "settings",
                                                                          "batch_sizes", "warmup", "min_seconds",
                                                                          "max_batch_seconds")},
                           "device": name, "version": BENCH_VERSION})
        path = folder / f"{method}.json"
        existing = read_cell(path)
        if existing and existing.get("key") == key and not force:
            if existing.get("order") != order:  # the table lists methods in the bench file's order
                existing["order"] = order
                write_json_atomic(existing, path)
            rows.append(existing)
            echo(f"{method}: measured before on {name} (use --force to measure again)")
            continue
        echo(f"{method}: measuring on {name} ...")
        # a fresh process per method: peak memory and warm caches are its own
        with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
            row = pool.submit(measure, bench, entry, str(device), weights_dir).result()
        row["key"], row["order"] = key, order
        write_json_atomic(row, path)
        rows.append(row)
        if row["status"] == "done":
            echo(f"  {row['throughput_batch1']:.2f} img/s at batch 1, {row['throughput_best']:.2f} img/s at batch "
                 f"{row['best_batch']}, peak {row['peak_memory_mib']:.0f} MiB"
                 + (f", training {row['training_seconds']:.1f} s" if row.get("training_seconds") else ""))
        else:
            echo(f"  skipped: {row['reason']}")
    return rows


COLUMNS = [("label", "Method"), ("parameters_total_m", "Params (M)"), ("parameters_trainable_m", "Trainable (M)"),
           ("training_seconds", "Training (s)"), ("throughput_batch1", "img/s @1"), ("throughput_best", "img/s best"),
           ("best_batch", "best batch"), ("peak_memory_mib", "Peak mem (MiB)"), ("image_size", "Size")]


def efficiency_frame(results_root: Path) -> pd.DataFrame:
    rows = [read_cell(p) for p in sorted((Path(results_root) / "efficiency").glob("*/*.json"))]
    frame = pd.DataFrame([r for r in rows if r])
    if frame.empty:
        return frame
    frame = frame.sort_values(["device", "order"] if "order" in frame else ["device"], kind="stable")
    keep = ["method", "label", "status", "device", "device_name", "precision", "threads", "image_size",
            "parameters_total_m", "parameters_trainable_m", "training_seconds", "training_epochs", "source",
            "throughput_batch1", "best_batch", "throughput_best", "peak_memory_mib", "memory_kind", "random_weights",
            "overrides", "reason"]
    return frame.reindex(columns=keep)


def _cell(value, column: str) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "–"
    if column in ("best_batch", "image_size"):
        return str(int(value))
    if column in ("parameters_total_m", "parameters_trainable_m"):
        return f"{value:.2f}"
    if column in ("training_seconds", "peak_memory_mib"):
        return f"{value:.0f}"
    if column.startswith("throughput"):
        return f"{value:.2f}" if value < 100 else f"{value:.0f}"
    return str(value)


def write_efficiency_tables(results_root: Path, echo=print) -> list[Path]:
    """efficiency.csv (every row with its conditions) and efficiency.tex (one table per device)."""
    from tabulate import tabulate

    frame = efficiency_frame(results_root)
    if frame.empty:
        raise GadbenchError(f"{Path(results_root) / 'efficiency'}: nothing measured yet; run `gadbench bench` first")
    tables = Path(results_root) / "tables"
    csv_path, tex_path = tables / "efficiency.csv", tables / "efficiency.tex"
    write_text(frame.to_csv(index=False), csv_path)
    blocks = []
    for (device, name, precision, threads, memory_kind), group in frame.groupby(
            ["device", "device_name", "precision", "threads", "memory_kind"], dropna=False, sort=True):
        lines, notes = [], []
        for record in group.to_dict("records"):
            label = record["label"] + (" (random w.)" if record.get("random_weights") is True else "")
            if isinstance(record.get("overrides"), dict) and record["overrides"]:
                label += " §"
                notes.append(f"§ {record['label']}: measured with the config overrides {json.dumps(record['overrides'])}")
            if record["status"] != "done":
                lines.append([label] + ["–"] * (len(COLUMNS) - 1))
                continue
            lines.append([label] + [_cell(record[c], c) for c, _ in COLUMNS[1:]])
        conditions = (f"{name}, {precision}, {int(threads)} torch threads; memory: {memory_kind}; "
                      "throughput after warm-up, image decoding and metrics excluded")
        echo(f"\nEfficiency on {conditions}\n" + tabulate(lines, headers=[h for _, h in COLUMNS], tablefmt="github"))
        for note in notes:
            echo(note)
        header = " & ".join(h for _, h in COLUMNS)
        body = "\n".join(" & ".join(cell.replace("_", r"\_").replace("§", r"\S{}") for cell in line) + r" \\" for line in lines)
        blocks.append("\n".join([
            r"\begin{table}[t]", r"\centering", r"\small",
            rf"\caption{{Efficiency on {conditions.replace('_', ' ')}. Training: the configured schedule on "
            rf"{group.source.iloc[0].replace('_', ' ')}; random w.: random weights (timing only).}}",
            r"\begin{tabular}{l" + "r" * (len(COLUMNS) - 1) + "}", r"\toprule", header + r" \\", r"\midrule", body,
            r"\bottomrule", r"\end{tabular}",
            *[r"\par\footnotesize " + note.replace("_", r"\_").replace("{", r"\{").replace("}", r"\}").replace("§", r"\S{}")
              for note in notes],
            r"\end{table}"]))
    write_text("\n\n".join(blocks) + "\n", tex_path)
    return [csv_path, tex_path]
