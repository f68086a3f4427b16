"""Two bases that take the common work off an adapter.

FeatureAdapter  a method on a frozen backbone of configs/backbones.yaml: the backbone, the
                preprocessing (the method's geometry with the backbone's own mean and std) and
                describe() come from here.
TrainedAdapter  a method that trains on the source domain: the harness keys its checkpoint by a
                hash of everything that shapes the model, trains it once (resumably, through
                benchmark/run/training.py), saves it atomically and loads it; the adapter says what
                shapes its model, trains, and loads a state.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import pandas as pd

from benchmark.adapter import Adapter, Domain
from benchmark.config import config_hash
from benchmark.data.images import file_sha256
from benchmark.data.preprocessing import Preprocessing
from benchmark.run.training import load_checkpoint, save_atomic


class FeatureAdapter(Adapter):
    """Config keys it reads: `backbone`, the input size under `size_key`, `allow_random_weights`,
    and `layers` (timm feature indices) when the method takes several levels."""

    size_key: ClassVar[str] = "input_size"

    def input_size(self) -> int:
        return int(self.config[self.size_key])

    def geometry(self) -> dict:
        """How images are brought to the input: squash, bicubic (NAGL); PatchCore and ResAD crop."""
        return {"resize": "squash", "interpolation": "bicubic"}

    def preprocessing(self) -> Preprocessing:
        return Preprocessing.for_backbone(self.config["backbone"], self.input_size(), **self.geometry())

    @property
    def backbone(self):
        layers = tuple(self.config["layers"]) if "layers" in self.config else None
        return self.context.features.backbone(self.config["backbone"], self.input_size(),
                                              bool(self.config.get("allow_random_weights")), layers)

    def trainable_parameters(self) -> int | None:
        return 0

    def describe_method(self) -> dict:
        """What a row should say of the method itself (options, training) besides the backbone."""
        return {}

    def describe(self) -> dict:
        backbone, trainable = self.backbone.describe(), self.trainable_parameters()
        return {"name": self.name, **backbone, "parameters_trainable": trainable,
                "parameters_total": backbone["parameters"] + (trainable or 0), **self.describe_method(),
                "preprocessing": self.preprocessing().describe()}


class TrainedAdapter(Adapter):
    trains_on_source = True
    checkpoint: Path | None = None

    # --- what the adapter says -------------------------------------------------------------
    def checkpoint_identity(self, setting) -> dict:
        """Everything of the config (and trainer) that shapes the model for this setting."""
        raise NotImplementedError

    def training_rows(self, source: Domain) -> pd.DataFrame:
        """The source images training reads: their contents are part of the checkpoint's identity."""
        return source.table

    def checkpoint_name(self, setting) -> str:
        return f"k{setting.k_normal}" if self.model_per_k else "all-k"

    def train(self, source: Domain, setting, target: Domain | None, folder: Path, digest: str) -> dict:
        """Train from scratch (or resume from `folder`); return the checkpoint's contents,
        {'state_dict': ..., 'history': [...], ...} (the harness adds the identity hash)."""
        raise NotImplementedError

    def load(self, state: dict) -> None:
        raise NotImplementedError

    # --- what the harness does ---------------------------------------------------------------
    def fit_source(self, source: Domain, seed: int, workdir: Path, setting=None, target: Domain | None = None) -> Path:
        """One checkpoint per identity: trained once, reused by every cell and seed that shares it."""
        identity = {"adapter": self.name, "version": self.version, **self.checkpoint_identity(setting),
                    "images": sorted(file_sha256(p) for p in self.training_rows(source).path)}
        if target is not None:
            identity["target_images"] = sorted(file_sha256(p) for p in target.table[target.table.split == "test"].path)
        digest = config_hash(identity)
        folder = Path(workdir) / f"{self.checkpoint_name(setting)}-{digest}"
        final = folder / "model.pt"
        if not final.exists():
            save_atomic({"config_hash": digest, **self.train(source, setting, target, folder, digest)}, final)
        state = load_checkpoint(final, digest)
        self.load(state)
        self.checkpoint, self.training_history = final, state.get("history", [])
        return final

    def training_summary(self) -> dict:
        history = getattr(self, "training_history", [])
        return {"training_seconds": sum(h["seconds"] for h in history), "training_epochs": len(history),
                "final_training_loss": history[-1]["loss"] if history else None}
