"""The one resumable epoch loop for adapters that train on the source domain.

After every epoch the state of each module / optimizer / scheduler, the numpy and torch RNG
states, the loss history and the best epoch so far are saved atomically, so a killed run resumes
at its last finished epoch and ends with the same weights as an uninterrupted one. An optional
selection (NAGL's official target-selected checkpoint) scores each epoch from `select_from` on and
keeps the best ('>=': a later equal epoch wins, as NAGL's code)."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from benchmark.api.atomic import atomic_file
from benchmark.api.tensor_files import load_tensors
from benchmark.errors import GadbenchError


def save_atomic(state: dict, path: Path) -> None:
    with atomic_file(path) as temp:
        torch.save(state, temp)


def load_checkpoint(path: Path, config_hash: str) -> dict:
    state = load_tensors(path, "delete it to train again")
    if not isinstance(state, dict) or state.get("config_hash") != config_hash:
        raise GadbenchError(f"{path}: checkpoint was trained with a different config; delete it to retrain")
    return state


def resumable_epochs(folder: Path, config_hash: str, epochs: int, stateful: dict, rng: np.random.Generator,
                     run_epoch: Callable[[int], float], log: Callable[[str], None] = lambda message: None,
                     select: Callable[[int], float] | None = None, select_from: int = 0,
                     selected: torch.nn.Module | None = None) -> tuple[list[dict], dict]:
    """Run epochs [resume point, epochs); `stateful` maps names to objects with state_dict().
    Returns the per-epoch history [{epoch, loss, seconds}] and the best selected epoch
    {score, epoch, state_dict} (state_dict None when nothing was selected)."""
    state_path = Path(folder) / "training_state.pt"
    start, history, best = 0, [], {"score": -math.inf, "epoch": None, "state_dict": None}
    if state_path.exists():
        state = load_checkpoint(state_path, config_hash)
        for name, item in stateful.items():
            item.load_state_dict(state[name])
        rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
        start, history, best = state["epoch"] + 1, state["history"], state["best"]
        log(f"resuming at epoch {start} from {state_path}")
    for epoch in range(start, epochs):
        started = time.perf_counter()
        loss = run_epoch(epoch)
        history.append({"epoch": epoch, "loss": float(loss), "seconds": time.perf_counter() - started})
        message = f"epoch {epoch + 1}/{epochs}: loss {loss:.4f}"
        if select is not None and epoch >= select_from:
            score = select(epoch)
            message += f", selection score {score:.4f}"
            if score >= best["score"]:  # '>=': a later equal epoch wins; NaN never does
                best = {"score": float(score), "epoch": epoch,
                        "state_dict": {k: v.detach().clone() for k, v in selected.state_dict().items()}}
        log(message)
        save_atomic({"config_hash": config_hash, "epoch": epoch, "rng": rng.bit_generator.state,
                     "torch_rng": torch.get_rng_state(), "history": history, "best": best,
                     **{name: item.state_dict() for name, item in stateful.items()}}, state_path)
    return history, best
