"""The adapter contract: what the harness gives a method and what it expects back.

The harness owns data, references, seeds, preprocessing, caching, timing and metrics. An adapter
owns only its method: it turns (references, query images) into (image scores, anomaly maps) and,
for trained methods, learns on the source domain first (benchmark/api/bases.py).
"""

from __future__ import annotations

from typing import ClassVar

from benchmark.api.preprocessing import Preprocessing
from benchmark.api.records import ABNORMAL_ONLY, ALL_NORMAL, NORMAL, NORMAL_ABNORMAL, ImageBatch, Prediction, ReferenceSet, RunContext
from benchmark.errors import GadbenchError, closest

# keys every adapter accepts besides its default_config's
COMMON_KEYS = frozenset({"allow_random_weights"})


class Adapter:
    """Base class for every method. Subclasses set the class attributes and override the hooks."""

    name: ClassVar[str] = "adapter"
    # part of every cell's key: bump it when the method's results change without a config change
    version: ClassVar[int] = 1
    supports: ClassVar[tuple[str, ...]] = (NORMAL,)
    trains_on_source: ClassVar[bool] = False
    # for run-time estimates: whether training makes one model per k (NAGL, InCTRL) or one for all k
    model_per_k: ClassVar[bool] = False
    pixel_level: ClassVar[bool] = True
    # where the harness blurs a map with the config's `blur_sigma`: at the image's 'original' size
    # (the map resized straight there: NAGL's dists2map) or at the model 'input' (upsampled to it,
    # blurred, then put back on the image: PatchCore's segmentor, ResAD, WinCLIP)
    map_blur_at: ClassVar[str] = "original"
    default_config: ClassVar[dict] = {}
    # the keys of the config's `training:` block, for adapters that train
    training_keys: ClassVar[frozenset] = frozenset()
    # merged into the config by `gadbench rehearse`: the shortest schedule that still takes every
    # code path of training (benchmark/run/rehearsal.py)
    rehearsal_config: ClassVar[dict] = {}

    def __init__(self, config: dict | None, context: RunContext):
        self.check_config(config or {})
        self.config = {**self.default_config, **(config or {})}
        if self.training_keys:
            self.config["training"] = {**self.default_config.get("training", {}), **(self.config.get("training") or {})}
        self.context = context

    @classmethod
    def check_config(cls, config: dict, where: str = "") -> None:
        """Every key (and every `training:` key) must be one this adapter knows: a misspelt key
        (say `blur_sigm`) would otherwise be ignored silently. One line with the closest names."""
        prefix = where or cls.name
        known = set(cls.default_config) | COMMON_KEYS
        for key in config:
            if key not in known:
                raise GadbenchError(f"{prefix}: unknown config key {key!r}{closest(key, known)}"
                                    f" ({cls.name} knows {', '.join(sorted(known))})")
        training = config.get("training") or {}
        if not isinstance(training, dict):
            raise GadbenchError(f"{prefix}: `training` must be a mapping of {', '.join(sorted(cls.training_keys))}")
        for key in training:
            if key not in cls.training_keys:
                raise GadbenchError(f"{prefix}: unknown training key {key!r}{closest(key, cls.training_keys)}")

    @classmethod
    def setting_support(cls, setting) -> str | None:
        """None when this method can run the setting (k_normal: -1 for Nall, 0 for N0; k_abnormal),
        else why not, in a few words: the cell is then 'n/a' with that reason in every table and
        the report. The default reads `supports`; override it for finer rules."""
        if setting.k_abnormal and NORMAL_ABNORMAL not in cls.supports:
            return f"{cls.name} uses normal references only"
        if not setting.k_abnormal and NORMAL not in cls.supports:
            return f"{cls.name} needs an abnormal reference"
        if setting.k_normal == 0 and ABNORMAL_ONLY not in cls.supports:
            return f"{cls.name} needs normal references (N0 is not one of its settings)"
        if setting.k_normal < 0 and ALL_NORMAL not in cls.supports:
            return f"{cls.name} does not run with every train/good image as references (Nall)"
        return None

    # --- what the harness asks of every method -------------------------------------------
    def preprocessing(self) -> Preprocessing:
        """How the harness must prepare images (size, resize mode, crop, mean, std)."""
        raise NotImplementedError

    def set_references(self, category: str, normal: ReferenceSet, abnormal: ReferenceSet | None) -> None:
        """Called once per (target category, setting, seed, abnormal reference group)."""
        raise NotImplementedError

    def predict(self, batch: ImageBatch) -> Prediction:
        raise NotImplementedError

    def describe(self) -> dict:
        """Parameter counts, backbone, weights checksum, preprocessing: written into every row."""
        return {"name": self.name, "preprocessing": self.preprocessing().describe()}

    def required_weights(self) -> list:
        """The weight files this configuration loads (benchmark.features.weights.WeightFile), for
        `gadbench weights`; answered from the config, without building a model."""
        return []
