"""NAGL behind the harness's adapter contract.

Training: one model per (k, j) on the source domain's test split, in the harness's resumable loop
(the harness keys, saves and loads the checkpoint: benchmark/run/checkpoints.py). At test time Residual Mining depends
only on the references, so it runs once per reference set, not once per query as in the code.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from benchmark.api import (ABNORMAL_ONLY, NORMAL_ABNORMAL, FeatureAdapter, GadbenchError, ImageBatch, Prediction, ReferenceSet,
                           TrainedAdapter, TrainingData, resumable_epochs)
from benchmark.features.similarity import flatten_patches
from nagl.model import NAGL, downsample_mask
from nagl.selection import target_selector
from nagl.train import EpisodeBank, TrainConfig, make_optimizer, train_epoch

# Part of every checkpoint's identity: bump when training changes in a way the config does not show
# (2: the model is initialised from the training seed; 3: the harness's checkpoint identity)
TRAINER_VERSION = 3
TRAINING_KEYS = {"epochs", "episodes_per_epoch", "batch_size", "learning_rate", "milestones", "gamma", "seed",
                 "image_loss", "pixel_loss_weight", "checkpoint_policy", "selection_start_epoch", "episode_sampler"}
TEST_TIME_KEYS = ("blur_sigma", "top_percent")  # change the scores, not the model


def train_nagl(model: NAGL, bank: EpisodeBank, config: TrainConfig, folder: Path, digest: str,
               device: torch.device = torch.device("cpu"), select=None, log=lambda message: None) -> dict:
    """Episodic training in the harness's resumable loop; returns {'epoch', 'state_dict', 'history'}:
    the last epoch, or under `official-target-selected` the best selected one (the last when none was)."""
    categories = bank.usable_categories(config.k_normal, config.episode_sampler, config.k_abnormal)
    if not categories:
        needed = bank.normal_images_needed(config.k_normal, config.episode_sampler)
        raise ValueError(f"no source category has {needed} normal images and a defect type with {config.k_abnormal} masked images")
    torch.manual_seed(config.seed)
    model.to(device)
    optimizer, scheduler = make_optimizer(model, config)
    rng = np.random.default_rng(config.seed)

    def run_epoch(epoch: int) -> float:
        loss = train_epoch(model, bank, config, optimizer, rng, categories, device)
        scheduler.step()
        return loss

    def score(epoch: int) -> float:
        model.eval()
        with torch.no_grad():
            return select(model, epoch)

    selected = select is not None and config.checkpoint_policy == "official-target-selected"
    history, best = resumable_epochs(folder, digest, config.epochs, {"model": model, "optimizer": optimizer, "scheduler": scheduler},
                                     rng, run_epoch, log, select=score if selected else None,
                                     select_from=config.selection_start_epoch, selected=model)
    if selected and best["state_dict"] is not None:
        return {"epoch": best["epoch"], "state_dict": best["state_dict"], "history": history}
    return {"epoch": config.epochs - 1, "state_dict": model.state_dict(), "history": history}


class NAGLAdapter(TrainedAdapter, FeatureAdapter):
    name = "nagl"
    version = TRAINER_VERSION
    supports = (NORMAL_ABNORMAL, ABNORMAL_ONLY)
    model_per_k = True  # one model per (k, j), as the code's n_<k>_a_<j>_best.pth
    training_keys = TRAINING_KEYS
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
        "mask_resize": "pixel-centre",  # floor: the code's cv2 / torch nearest for the abnormal reference's mask
        "reference_positions": "per-reference",  # 'official': the code's (h w n) RM positions for j > 1
        "training": {},  # TrainConfig fields; the defaults are the paper's schedule
        "selection_episodes": 2000,  # official-target-selected: episodes drawn on the target per epoch
        "allow_random_weights": False,
    }
    rehearsal_config = {"training": {"epochs": 2, "episodes_per_epoch": 4, "batch_size": 2, "milestones": [1],
                                     "selection_start_epoch": 1}, "selection_episodes": 4}

    def __init__(self, config, context):
        super().__init__(config, context)
        self.model: NAGL | None = None
        self.training_seed = self.train_config().seed

    @classmethod
    def setting_support(cls, setting) -> str | None:
        if setting.k_normal < 0:
            return "nagl trains one model per k; the official code has no Nall checkpoint"
        return super().setting_support(setting)

    def geometry(self) -> dict:
        return {"resize": "squash", "interpolation": "bicubic", "mask_resize": self.config["mask_resize"]}

    @classmethod
    def training_shortages(cls, config, source, target, setting) -> list[str]:
        """Episodes are drawn in a category of the test split with k + 1 normal images and a defect
        type with j masked images (EpisodeBank.usable_categories); the official checkpoint choice
        draws them on the target as well."""
        k, j, training = setting.k_normal, setting.k_abnormal, {**cls.default_config["training"], **(config.get("training") or {})}
        tables = [("source", source)] + ([("target", target)] if TrainConfig(k_normal=k, **training).checkpoint_policy
                                          == "official-target-selected" else [])
        problems = []
        for role, table in tables:
            tests = table[table.split == "test"]
            usable = [c for c, rows in tests.groupby("category") if (rows.label == 0).sum() > k
                      and (rows[(rows.label == 1) & rows["mask"].notna()].defect.value_counts() >= j).any()]
            if not usable:
                problems.append(f"nagl draws its training episodes in the {role}'s test split: no category has {k + 1}"
                                f" normal test images and a defect type with {j} masked images for {setting.label};"
                                " use a smaller k or j, or more test images")
        return problems

    def uses_target_for_training(self) -> bool:
        return self.train_config().checkpoint_policy == "official-target-selected"

    def train_config(self, setting=None) -> TrainConfig:
        """The schedule for a setting's model (k normal, j abnormal references per episode)."""
        k, j = (setting.k_normal, setting.k_abnormal) if setting is not None else (1, 1)
        return TrainConfig(k_normal=k, k_abnormal=j, **self.config["training"])

    @classmethod
    def checkpoint_name(cls, setting) -> str:
        return f"k{setting.k_normal}" + (f"_a{setting.k_abnormal}" if setting.k_abnormal != 1 else "")

    def build_model(self, dim: int) -> NAGL:
        return NAGL(dim=dim, heads=self.config["heads"], proxies=self.config["proxies"],
                    top_percent=self.config["top_percent"], mask_downsample=self.config["mask_downsample"],
                    position_mask=self.config["position_mask"], attention_mask_layout=self.config["attention_mask_layout"],
                    reference_positions=self.config["reference_positions"])

    def features(self, batch: ImageBatch) -> tuple[torch.Tensor, tuple[int, int]]:
        maps = self.context.features.extract(self.backbone, batch)
        return flatten_patches(maps), tuple(maps.shape[-2:])

    def episode_bank(self, domain: TrainingData, chunk: int = 16) -> EpisodeBank:
        """Features and masks of every test image of a domain (what episodes are drawn from)."""
        tests = domain.table[domain.table.split == "test"].reset_index(drop=True)
        preprocessing = self.preprocessing()
        features, pixel_masks, grid = [], [], None
        for start in range(0, len(tests), chunk):
            batch = domain.batch(tests.iloc[start:start + chunk], preprocessing)
            pixel_masks.extend(domain.masks(batch, preprocessing).bool())
            tokens, grid = self.features(batch)
            features.append(tokens.cpu())
        pixel_masks = torch.stack(pixel_masks)
        patch_masks = downsample_mask(pixel_masks, grid, self.config["mask_downsample"])
        return EpisodeBank(torch.cat(features), pixel_masks, patch_masks, list(tests.category),
                           list(tests.label), list(tests.defect), grid)

    # ------------------------------------------------------------------ training (api.TrainedAdapter)
    def checkpoint_identity(self, setting) -> dict:
        config = {key: value for key, value in self.config.items() if key not in TEST_TIME_KEYS}
        identity = {"config": config, "k": setting.k_normal, "weights": self.backbone.weights_sha256}
        if setting.k_abnormal != 1:  # one reference: the identity of every checkpoint made before j existed
            identity["abnormal"] = setting.k_abnormal
        else:
            config.pop("reference_positions")  # cannot matter with one reference
        return identity

    def training_rows(self, source: TrainingData):
        return source.table[source.table.split == "test"]

    def train(self, source: TrainingData, setting, target: TrainingData | None, folder: Path, digest: str) -> dict:
        """One model per (k, j), trained with the config's seed (111): the cell's reference seed does
        not change the model, so all seeds of a setting share one checkpoint, as in the paper."""
        config = self.train_config(setting)
        bank = self.episode_bank(source)
        torch.manual_seed(config.seed)  # the initial weights come from the training seed alone
        model = self.build_model(bank.features.shape[-1])
        select = None
        if config.checkpoint_policy == "official-target-selected":
            select = target_selector(self.episode_bank(target), setting.k_normal, config.seed,
                                     self.config["selection_episodes"], self.context.device, config.episode_sampler,
                                     setting.k_abnormal)
        return train_nagl(model, bank, config, folder, digest, self.context.device, select)

    def load(self, state: dict) -> None:
        model = self.build_model(state["state_dict"]["proxies.weight"].shape[1])
        model.load_state_dict(state["state_dict"], strict=True)
        self.model, self.checkpoint_epoch = model.eval().to(self.context.device), state["epoch"]

    # ------------------------------------------------------------------ contract
    @torch.no_grad()
    def set_references(self, category: str, normal: ReferenceSet, abnormal: ReferenceSet | None) -> None:
        if self.model is None:
            raise GadbenchError("nagl: set_references before training; the harness trains (or loads) the model first")
        if abnormal is None:
            raise GadbenchError("nagl needs abnormal references (settings N<k>+A<j>, N0+A<j>)")
        abnormal_tokens, grid = self.features(abnormal)
        self.grid = grid
        patch_mask = downsample_mask(abnormal.masks.to(abnormal_tokens.device), grid, self.config["mask_downsample"])
        try:
            self.abnormal_only = not len(normal)
            if len(normal):
                self.normal_tokens = self.features(normal)[0]
            else:  # N0: the abnormal references' normal region, as the code at n_shot 0
                self.normal_tokens = self.model.normal_from_abnormal(abnormal_tokens, patch_mask)
            normal_bank = self.normal_tokens.reshape(1, -1, self.normal_tokens.shape[-1])
            self.residual_proxies = self.model.mine_residual_proxies(abnormal_tokens[None], patch_mask[None], normal_bank, grid)
        except ValueError as error:
            paths = ", ".join(sample.get("path", "?") for sample in abnormal.samples)
            raise GadbenchError(f"{paths}: {error}") from None

    @torch.no_grad()
    def predict(self, batch: ImageBatch) -> Prediction:
        tokens, grid = self.features(batch)
        size = len(batch)
        normal = self.normal_tokens.reshape(1, -1, tokens.shape[-1]).expand(size, -1, -1)
        output = self.model(tokens, normal, grid, residual_proxies=self.residual_proxies.expand(size, -1, -1),
                            abnormal_only=self.abnormal_only)
        return Prediction(output["image_score"].cpu().numpy().astype(np.float64), output["score"].reshape(size, *grid))

    def trainable_parameters(self) -> int | None:
        return sum(p.numel() for p in self.model.parameters()) if self.model is not None else None

    def describe_method(self) -> dict:
        config = self.train_config()
        return {"checkpoint_policy": config.checkpoint_policy, "image_loss": config.image_loss,
                "checkpoint_epoch": getattr(self, "checkpoint_epoch", None), **self.training_summary(),
                "mask_downsample": self.config["mask_downsample"], "position_mask": self.config["position_mask"],
                "attention_mask_layout": self.config["attention_mask_layout"], "mask_resize": self.config["mask_resize"],
                "reference_positions": self.config["reference_positions"]}
