"""NAGL behind the harness's adapter contract.

fit_source trains one model per k on the source domain's test split (idempotent: the checkpoint
is named by the hash of everything that shapes it). At test time Residual Mining depends only on
the references, so it runs once per reference set, not once per query as in the official code.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from benchmark.adapter import NORMAL_ABNORMAL, Adapter, Domain, ImageBatch, Prediction, ReferenceSet
from benchmark.config import config_hash
from benchmark.errors import GadbenchError
from benchmark.batches import load_batch, model_space_masks
from benchmark.images import file_sha256
from benchmark.maps import to_image_maps
from benchmark.metrics import image_metrics, pixel_metrics
from benchmark.preprocessing import Preprocessing
from nagl.model import NAGL, downsample_mask
from nagl.similarity import flatten_patches
from nagl.train import EpisodeBank, TrainConfig, run_episodes, sample_episode, train

# Part of every checkpoint's identity: bump when training changes in a way the config does not show
# (2: the model is initialised from the training seed, not from whatever ran before in the process).
TRAINER_VERSION = 2
TRAINING_KEYS = {"epochs", "episodes_per_epoch", "batch_size", "learning_rate", "milestones", "gamma", "seed",
                 "image_loss", "pixel_loss_weight", "checkpoint_policy", "selection_start_epoch"}


class NAGLAdapter(Adapter):
    name = "nagl"
    version = TRAINER_VERSION
    supports = (NORMAL_ABNORMAL,)
    trains_on_source = True
    model_per_k = True
    default_config = {
        "backbone": "dinov2_vits14",
        "input_size": 448,
        "proxies": 25,
        "heads": 4,
        "top_percent": 1.0,
        "blur_sigma": 4.0,
        "mask_downsample": "any-pixel",
        "position_mask": "official",
        "attention_mask_layout": "per-sample",
        "training": {},  # TrainConfig fields; the defaults are the paper's schedule
        "selection_episodes": 2000,  # official-target-selected: episodes drawn on the target per epoch
        "allow_random_weights": False,
    }

    def __init__(self, config, context):
        super().__init__(config, context)
        self.config["training"] = self.merged_training_config(TRAINING_KEYS)
        self.model: NAGL | None = None
        self.checkpoint: Path | None = None

    # ------------------------------------------------------------------ shared pieces
    def preprocessing(self) -> Preprocessing:
        return Preprocessing.for_backbone(self.config["backbone"], self.config["input_size"], resize="squash",
                                          interpolation="bicubic")

    @property
    def backbone(self):
        return self.context.features.backbone(self.config["backbone"], self.config["input_size"],
                                              self.config["allow_random_weights"])

    def uses_target_for_training(self) -> bool:
        return self.train_config(1).checkpoint_policy == "official-target-selected"

    def train_config(self, k: int) -> TrainConfig:
        return TrainConfig(k_normal=k, **self.config["training"])

    def build_model(self, dim: int) -> NAGL:
        return NAGL(dim=dim, heads=self.config["heads"], proxies=self.config["proxies"],
                    top_percent=self.config["top_percent"], mask_downsample=self.config["mask_downsample"],
                    position_mask=self.config["position_mask"], attention_mask_layout=self.config["attention_mask_layout"])

    def features(self, batch: ImageBatch) -> tuple[torch.Tensor, tuple[int, int]]:
        maps = self.context.features.extract(self.backbone, batch)
        return flatten_patches(maps), tuple(maps.shape[-2:])

    def episode_bank(self, domain: Domain, chunk: int = 16) -> EpisodeBank:
        """Features and masks of every test image of a domain (what episodes are drawn from)."""
        tests = domain.table[domain.table.split == "test"].reset_index(drop=True)
        preprocessing = self.preprocessing()
        features, pixel_masks, grid = [], [], None
        for start in range(0, len(tests), chunk):
            batch = load_batch(tests.iloc[start:start + chunk], preprocessing)
            pixel_masks.extend(model_space_masks(batch, preprocessing, domain.mask_threshold).bool())
            tokens, grid = self.features(batch)
            features.append(tokens.cpu())
        pixel_masks = torch.stack(pixel_masks)
        patch_masks = downsample_mask(pixel_masks, grid, self.config["mask_downsample"])
        return EpisodeBank(torch.cat(features), pixel_masks, patch_masks, list(tests.category),
                           list(tests.label), list(tests.defect), grid)

    # ------------------------------------------------------------------ contract
    def fit_source(self, source: Domain, seed: int, workdir: Path, setting=None, target: Domain | None = None) -> Path:
        """One model per k, trained with the config's seed (111): the cell's reference seed does not
        change the model, so all seeds of a k share one checkpoint, as in the paper."""
        k = setting.k_normal
        config = self.train_config(k)
        tests = source.table[source.table.split == "test"]
        identity = {"config": {key: value for key, value in self.config.items() if key not in ("blur_sigma", "top_percent")},
                    "k": k, "source_images": sorted(file_sha256(p) for p in tests.path), "trainer_version": TRAINER_VERSION,
                    "weights": self.backbone.weights_sha256}
        if config.checkpoint_policy == "official-target-selected":
            identity["target_images"] = sorted(file_sha256(p) for p in target.table[target.table.split == "test"].path)
        digest = config_hash(identity)
        folder = Path(workdir) / f"k{k}-{digest}"
        final = folder / "model.pt"
        if not final.exists():
            bank = self.episode_bank(source)
            torch.manual_seed(config.seed)  # the initial weights come from the training seed alone
            model = self.build_model(bank.features.shape[-1])
            select = None
            if config.checkpoint_policy == "official-target-selected":
                select = self._target_selector(self.episode_bank(target), k)
            train(model, bank, config, folder, digest, self.context.device, select, log=lambda m: None)
        self._load(final, digest)
        return final

    def _load(self, path: Path, digest: str) -> None:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state.get("config_hash") != digest:
            raise GadbenchError(f"{path}: checkpoint was trained with a different config; delete it to retrain")
        dim = state["state_dict"]["proxies.weight"].shape[1]
        model = self.build_model(dim)
        model.load_state_dict(state["state_dict"], strict=True)
        self.model, self.checkpoint = model.eval().to(self.context.device), path
        self.checkpoint_epoch = state["epoch"]
        self.training_history = state.get("history", [])

    def _target_selector(self, bank: EpisodeBank, k: int):
        """The official choice: image + pixel AUROC of episodes drawn on the TARGET (it leaks the target)."""
        episodes_count, batch_size = self.config["selection_episodes"], 8
        categories = bank.usable_categories(k)

        def select(model: NAGL) -> float:
            rng = np.random.default_rng(0)
            labels, scores, masks, maps = [], [], [], []
            for start in range(0, episodes_count, batch_size):
                episodes = [sample_episode(rng, bank, k, categories) for _ in range(min(batch_size, episodes_count - start))]
                output = run_episodes(model, bank, episodes, self.context.device)
                labels += [e.label for e in episodes]
                scores += output["image_score"].cpu().tolist()
                size = bank.pixel_masks.shape[-2:]
                grid_maps = output["score"].reshape(-1, 1, *bank.grid)
                upsampled = torch.nn.functional.interpolate(grid_maps, size=size, mode="bilinear", align_corners=False)[:, 0]
                maps += list(upsampled.cpu().numpy())
                masks += [bank.pixel_masks[e.query].numpy() for e in episodes]
            return image_metrics(labels, scores)["image_auroc"] + pixel_metrics(masks, maps)["pixel_auroc"]

        return select

    @torch.no_grad()
    def set_references(self, category: str, normal: ReferenceSet, abnormal: ReferenceSet | None) -> None:
        if self.model is None:
            raise GadbenchError("nagl: set_references before fit_source; the runner trains (or loads) the model first")
        if abnormal is None:
            raise GadbenchError("nagl needs an abnormal reference (settings N<k>+A1)")
        self.normal_tokens, grid = self.features(normal)
        abnormal_tokens, self.grid = self.features(abnormal)
        patch_mask = downsample_mask(abnormal.masks.to(abnormal_tokens.device), grid, self.config["mask_downsample"])
        normal_bank = self.normal_tokens.reshape(1, -1, self.normal_tokens.shape[-1])
        try:
            self.residual_proxies = self.model.mine_residual_proxies(abnormal_tokens[None], patch_mask[None], normal_bank, grid)
        except ValueError as error:
            sample = abnormal.samples[0].get("path", "?")
            raise GadbenchError(f"{sample}: {error}") from None

    @torch.no_grad()
    def predict(self, batch: ImageBatch) -> Prediction:
        tokens, grid = self.features(batch)
        size = len(batch)
        normal = self.normal_tokens.reshape(1, -1, tokens.shape[-1]).expand(size, -1, -1)
        output = self.model(tokens, normal, grid, residual_proxies=self.residual_proxies.expand(size, -1, -1))
        maps = to_image_maps(output["score"].reshape(size, *grid), batch.original_sizes, self.config["blur_sigma"])
        return Prediction(output["image_score"].cpu().numpy().astype(np.float64), maps)

    def describe(self) -> dict:
        backbone = self.backbone.describe()
        trainable = sum(p.numel() for p in self.model.parameters()) if self.model is not None else None
        config = self.train_config(1)
        return {"name": self.name, **backbone, "parameters_trainable": trainable,
                "parameters_total": backbone["parameters"] + (trainable or 0),
                "checkpoint_policy": config.checkpoint_policy, "image_loss": config.image_loss,
                "checkpoint_epoch": getattr(self, "checkpoint_epoch", None),
                "training_seconds": sum(h["seconds"] for h in getattr(self, "training_history", [])),
                "training_epochs": len(getattr(self, "training_history", [])),
                "final_training_loss": (getattr(self, "training_history", None) or [{}])[-1].get("loss"),
                "mask_downsample": self.config["mask_downsample"], "position_mask": self.config["position_mask"],
                "attention_mask_layout": self.config["attention_mask_layout"],
                "preprocessing": self.preprocessing().describe()}
