"""The one way a method is opened: config checked, seeds set, kernels made deterministic, the
run context built, the model trained or loaded. The grid, the report, the efficiency bench,
`gadbench weights`, the timing tools and the contract test all open methods here, so a method
behaves the same wherever it runs."""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from benchmark.api import Adapter, RunContext, TrainingData
from benchmark.data.class_names import class_name
from benchmark.errors import GadbenchError
from benchmark.features.service import FeatureService
from benchmark.features.weights import WeightStore
from benchmark.run.checkpoints import fit_source


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise GadbenchError(f"--device {name}: CUDA is not available on this machine; use --device cpu or auto")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_deterministic(device: torch.device) -> None:
    """On CUDA: deterministic cuDNN and cuBLAS kernels (docs/reliability.md). The CPU path is
    deterministic already for a fixed thread count."""
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True, warn_only=True)


@dataclass
class OpenedMethod:
    adapter: Adapter
    checkpoint: Path | None = None
    fit_seconds: float | None = None  # training or loading, when the method trains


def open_method(method, *, device: torch.device, weights: WeightStore, workdir: Path,
                features: FeatureService | None = None, seed: int = 0, source: TrainingData | None = None,
                setting=None, target: Callable[[], TrainingData] | None = None,
                checkpoints: Path | None = None) -> OpenedMethod:
    """`method` is a benchmark.run.experiment.MethodSpec. With a `source` (and `setting`), a method
    that trains is trained on it, or its checkpoint loaded, from `checkpoints` (default: workdir);
    `target()` is called only for a training that reads the target (NAGL's official choice)."""
    seed_everything(seed)
    make_deterministic(device)
    context = RunContext(device=device, weights=weights, features=features or FeatureService(weights, device),
                         workdir=Path(workdir), allow_download=weights.allow_download, class_name=class_name)
    adapter = method.adapter_class(method.config, context)
    opened = OpenedMethod(adapter)
    if adapter.trains_on_source and source is not None:
        started = time.time()
        target_data = target() if target is not None and adapter.uses_target_for_training() else None
        opened.checkpoint = fit_source(adapter, source, Path(checkpoints or workdir), setting, target_data)
        opened.fit_seconds = time.time() - started
    return opened
