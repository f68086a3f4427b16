"""What WinCLIP and InCTRL share: an open_clip model from a local weights file, built once per
process and shared by every cell (with the text features computed so far), OpenAI CLIP's
normalisation, the weights they need, and what a row says of them."""

from __future__ import annotations

import json
from typing import ClassVar

from benchmark.api import Adapter, Preprocessing
from benchmark.features.weights import RANDOM, WeightFile

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


class ClipAdapter(Adapter):
    """Config keys it reads: `clip_model`, `clip_model_config`, `image_size`, `weights`,
    `class_names`, `allow_random_weights`."""

    weights_name: ClassVar[str] = "clip"  # the name `gadbench weights` lists the file under

    def required_weights(self) -> list[WeightFile]:
        if self.config["allow_random_weights"]:
            return []
        return [WeightFile.from_config(self.weights_name, self.config["weights"])]

    def geometry(self) -> dict:
        return {"resize": "shorter", "resize_to": self.config["image_size"]}

    def preprocessing(self) -> Preprocessing:
        return Preprocessing(size=self.config["image_size"], interpolation="bicubic", mean=OPENAI_MEAN, std=OPENAI_STD,
                             **self.geometry())

    def shared_model(self, build, *key_parts) -> tuple:
        """build() -> (model, weights sha256, text features {}), once per process for this
        architecture, weights file (a new version on disk is a new model), device and `key_parts`
        (FeatureService.frozen_model)."""
        weights = None
        if not self.config["allow_random_weights"]:  # the file, by its path, pinned sha256 and version on disk
            weight = self.required_weights()[0]
            path = self.context.weights.candidate_path(weight)
            stat = path.stat() if path.is_file() else None
            weights = (str(path), weight.expected, stat and (stat.st_mtime_ns, stat.st_size))
        architecture = json.dumps(self.config["clip_model_config"], sort_keys=True)  # a file's path, or a mapping
        key = (self.name, self.config["clip_model"], architecture, *key_parts, weights, str(self.context.device))
        return self.context.features.frozen_model(key, build)

    def prompt_name(self, category: str) -> str:
        """The object name the prompts use for a category, in the config's `class_names` style."""
        return self.context.class_name(category, self.config["class_names"])

    def describe_clip(self, model, weights_sha256: str, trainable: int) -> dict:
        return {"name": self.name, "backbone": self.config["clip_model"], "weights_sha256": weights_sha256,
                "random_weights": weights_sha256 == RANDOM,
                "parameters_total": sum(p.numel() for p in model.parameters()) + trainable,
                "parameters_trainable": trainable, "class_names": self.config["class_names"],
                "preprocessing": self.preprocessing().describe()}
