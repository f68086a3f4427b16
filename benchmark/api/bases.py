"""Two bases that take the common work off an adapter.

FeatureAdapter  a method on a frozen backbone of configs/backbones.yaml: the backbone, the
                preprocessing (the method's geometry with the backbone's own mean and std), the
                weights it needs and describe() come from here, through the run context's
                feature service.
TrainedAdapter  a method that trains on the source domain: it says what shapes its model, trains
                it (in the resumable epoch loop of benchmark/api/training.py) and loads a state;
                the harness keys the checkpoint by a hash of that identity, trains it once, saves
                it atomically and loads it (benchmark/run/checkpoints.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import pandas as pd

from benchmark.api.adapter import Adapter
from benchmark.api.preprocessing import Preprocessing
from benchmark.api.records import TrainingData


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
        return self.context.features.preprocessing(self.config["backbone"], self.input_size(), **self.geometry())

    def required_weights(self) -> list:
        if self.config.get("allow_random_weights"):
            return []
        return self.context.features.required_weights(self.config["backbone"])

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
    training_history: tuple = ()  # the harness sets the loaded checkpoint's history

    def checkpoint_identity(self, setting) -> dict:
        """Everything of the config (and trainer) that shapes the model for this setting, the
        weights' sha256 included (the harness adds the adapter's name, version and source images)."""
        raise NotImplementedError

    def training_rows(self, source: TrainingData) -> pd.DataFrame:
        """The source images training reads: their contents are part of the checkpoint's identity."""
        return source.table

    @classmethod
    def checkpoint_name(cls, setting) -> str:
        """The model's folder name: one model per name (estimates count models by it)."""
        return f"k{setting.k_normal}" if cls.model_per_k else "all-k"

    @classmethod
    def training_shortages(cls, config: dict, source: pd.DataFrame, target: pd.DataFrame, setting) -> list[str]:
        """What the source (or, for a training that reads it, the target) lacks for training this
        configuration at this setting, one line each with what fixes it ([] when nothing): the
        planning pass reports it before anything runs. Sample tables as TrainingData.table."""
        return []

    def uses_target_for_training(self) -> bool:
        """True for a training that reads the target too (NAGL's official checkpoint choice):
        the harness then passes it, and every row says so."""
        return False

    def train(self, source: TrainingData, setting, target: TrainingData | None, folder: Path, digest: str) -> dict:
        """Train from scratch (or resume from `folder`); return the checkpoint's contents,
        {'state_dict': ..., 'history': [...], ...} (the harness adds the identity hash)."""
        raise NotImplementedError

    def load(self, state: dict) -> None:
        raise NotImplementedError

    def training_summary(self) -> dict:
        history = self.training_history
        return {"training_seconds": sum(h["seconds"] for h in history), "training_epochs": len(history),
                "final_training_loss": history[-1]["loss"] if history else None}
