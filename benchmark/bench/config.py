"""A bench file (configs/experiments/efficiency*.yaml) and the device it measures."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

from benchmark.config import check_keys, deep_merge, load_yaml
from benchmark.errors import GadbenchError
from benchmark.run.experiment import load_method

BENCH_KEYS = {"name", "description", "data_root", "datasets", "source", "target", "category", "settings", "batch_sizes",
              "warmup", "min_seconds", "max_batch_seconds", "methods", "rounds", "bursts", "reference"}

METHOD_ENTRY_KEYS = {"method", "config", "random_weights", "label"}

BENCH_VERSION = 5  # in every row's key: bump when what is timed changes (3: median call; 4: bursts; 5: evaluation cost)



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
    for entry in bench["methods"]:  # a misspelt override is refused here, before any process starts
        method = load_method(entry["method"], str(path))
        method.adapter_class.check_config(deep_merge(method.config, entry.get("config") or {}),
                                          f"{path}: method {method.name!r}")
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
