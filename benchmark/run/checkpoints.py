"""Training a method once per checkpoint identity: the harness's half of TrainedAdapter.

The identity is everything the adapter says shapes its model (config, k, the weights' sha256)
plus its name, version and the contents of every source image training reads; its hash names the
checkpoint folder, so every cell, seed and process that shares an identity shares one file."""

from __future__ import annotations

from pathlib import Path

from benchmark.api import TrainedAdapter, TrainingData
from benchmark.api.training import load_checkpoint, save_atomic
from benchmark.config import config_hash
from benchmark.data.images import file_sha256


def checkpoint_digest(adapter: TrainedAdapter, source: TrainingData, setting, target: TrainingData | None) -> str:
    identity = {"adapter": adapter.name, "version": adapter.version, **adapter.checkpoint_identity(setting),
                "images": sorted(file_sha256(p) for p in adapter.training_rows(source).path)}
    if "weights" not in identity:  # a model trained on other frozen weights is another model
        identity["weights"] = adapter.describe().get("weights_sha256")
    if target is not None:
        identity["target_images"] = sorted(file_sha256(p) for p in target.table[target.table.split == "test"].path)
    return config_hash(identity)


def fit_source(adapter: TrainedAdapter, source: TrainingData, workdir: Path, setting,
               target: TrainingData | None = None) -> Path:
    """Train (or resume, or find) the adapter's checkpoint for this setting in `workdir`, load it
    into the adapter and return its path. `target` only for adapters whose training reads it."""
    digest = checkpoint_digest(adapter, source, setting, target)
    folder = Path(workdir) / f"{adapter.checkpoint_name(setting)}-{digest}"
    final = folder / "model.pt"
    if not final.exists():
        save_atomic({"config_hash": digest, **adapter.train(source, setting, target, folder, digest)}, final)
    state = load_checkpoint(final, digest)
    adapter.load(state)
    adapter.checkpoint, adapter.training_history = final, state.get("history", [])
    return final
