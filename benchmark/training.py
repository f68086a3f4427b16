"""Resumable epoch loops for adapters that train on the source domain.

After every epoch the state of each module / optimizer / scheduler, the numpy and torch RNG
states and the loss history are saved atomically, so a killed run resumes at its last finished
epoch and ends with the same weights as an uninterrupted one."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from benchmark.atomic import atomic_file
from benchmark.errors import GadbenchError


def save_atomic(state: dict, path: Path) -> None:
    with atomic_file(path) as temp:
        torch.save(state, temp)


def load_checkpoint(path: Path, config_hash: str) -> dict:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("config_hash") != config_hash:
        raise GadbenchError(f"{path}: checkpoint was trained with a different config; delete it to retrain")
    return state


def resumable_epochs(folder: Path, config_hash: str, epochs: int, stateful: dict, rng: np.random.Generator,
                     run_epoch: Callable[[int], float], log: Callable[[str], None] = lambda message: None) -> list[dict]:
    """Run epochs [resume point, epochs); `stateful` maps names to objects with state_dict().
    Returns the per-epoch history [{epoch, loss, seconds}]."""
    state_path = Path(folder) / "training_state.pt"
    start, history = 0, []
    if state_path.exists():
        state = load_checkpoint(state_path, config_hash)
        for name, item in stateful.items():
            item.load_state_dict(state[name])
        rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
        start, history = state["epoch"] + 1, state["history"]
        log(f"resuming at epoch {start} from {state_path}")
    for epoch in range(start, epochs):
        started = time.perf_counter()
        loss = run_epoch(epoch)
        history.append({"epoch": epoch, "loss": float(loss), "seconds": time.perf_counter() - started})
        save_atomic({"config_hash": config_hash, "epoch": epoch, "rng": rng.bit_generator.state,
                     "torch_rng": torch.get_rng_state(), "history": history,
                     **{name: item.state_dict() for name, item in stateful.items()}}, state_path)
    return history
