"""NAGL behind the harness's adapter contract.

Training: one model per k on the source domain's test split, in the harness's resumable loop
(benchmark/bases.py keys, saves and loads the checkpoint). At test time Residual Mining depends
only on the references, so it runs once per reference set, not once per query as in the code.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from benchmark.adapter import NORMAL_ABNORMAL, Domain, ImageBatch, Prediction, ReferenceSet
from benchmark.bases import FeatureAdapter, TrainedAdapter
from benchmark.data.batches import load_batch, model_space_masks
from benchmark.data.preprocessing import Preprocessing
from benchmark.errors import GadbenchError
from benchmark.run.maps import maps_at_original
from benchmark.run.metrics import auroc
from benchmark.run.training import resumable_epochs
from nagl.model import NAGL, downsample_mask
from nagl.similarity import flatten_patches
from nagl.train import EpisodeBank, TrainConfig, code_image_score, make_optimizer, run_episodes, sample_episode, train_epoch

# Part of every checkpoint's identity: bump when training changes in a way the config does not show
# (2: the model is initialised from the training seed; 3: the harness's checkpoint identity)
TRAINER_VERSION = 3
TRAINING_KEYS = {"epochs", "episodes_per_epoch", "batch_size", "learning_rate", "milestones", "gamma", "seed",
                 "image_loss", "pixel_loss_weight", "checkpoint_policy", "selection_start_epoch"}
TEST_TIME_KEYS = ("blur_sigma", "top_percent")  # change the scores, not the model


def train_nagl(model: NAGL, bank: EpisodeBank, config: TrainConfig, folder: Path, digest: str,
               device: torch.device = torch.device("cpu"), select=None, log=lambda message: None) -> dict:
    """Episodic training in the harness's resumable loop; returns {'epoch', 'state_dict', 'history'}:
    the last epoch, or under `official-target-selected` the best selected one (the last when none was)."""
    categories = bank.usable_categories(config.k_normal)
    if not categories:
        raise ValueError(f"no source category has {config.k_normal + 1} normal images and a defect with a mask")
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
    supports = (NORMAL_ABNORMAL,)
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
        "mask_resize": "pixel-centre",  # floor: the code's cv2 / torch nearest for the abnormal reference's mask
        "training": {},  # TrainConfig fields; the defaults are the paper's schedule
        "selection_episodes": 2000,  # official-target-selected: episodes drawn on the target per epoch
        "allow_random_weights": False,
    }
    rehearsal_config = {"training": {"epochs": 2, "episodes_per_epoch": 4, "batch_size": 2, "milestones": [1],
                                     "selection_start_epoch": 1}, "selection_episodes": 4}

    def __init__(self, config, context):
        super().__init__(config, context)
        self.config["training"] = self.merged_training_config(TRAINING_KEYS)
        self.model: NAGL | None = None
        self.training_seed = self.train_config(1).seed

    def geometry(self) -> dict:
        return {"resize": "squash", "interpolation": "bicubic", "mask_resize": self.config["mask_resize"]}

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

    # ------------------------------------------------------------------ training (bases.TrainedAdapter)
    def checkpoint_identity(self, setting) -> dict:
        config = {key: value for key, value in self.config.items() if key not in TEST_TIME_KEYS}
        return {"config": config, "k": setting.k_normal, "weights": self.backbone.weights_sha256}

    def training_rows(self, source: Domain):
        return source.table[source.table.split == "test"]

    def train(self, source: Domain, setting, target: Domain | None, folder: Path, digest: str) -> dict:
        """One model per k, trained with the config's seed (111): the cell's reference seed does not
        change the model, so all seeds of a k share one checkpoint, as in the paper."""
        config = self.train_config(setting.k_normal)
        bank = self.episode_bank(source)
        torch.manual_seed(config.seed)  # the initial weights come from the training seed alone
        model = self.build_model(bank.features.shape[-1])
        select = None
        if config.checkpoint_policy == "official-target-selected":
            select = self._target_selector(self.episode_bank(target), setting.k_normal, config.seed)
        return train_nagl(model, bank, config, folder, digest, self.context.device, select)

    def load(self, state: dict) -> None:
        model = self.build_model(state["state_dict"]["proxies.weight"].shape[1])
        model.load_state_dict(state["state_dict"], strict=True)
        self.model, self.checkpoint_epoch = model.eval().to(self.context.device), state["epoch"]

    def _target_selector(self, bank: EpisodeBank, k: int, seed: int):
        """The official checkpoint choice (train.py, utils/metrics.py), which leaks the target: each
        epoch, `selection_episodes` fresh episodes drawn on the TARGET (seeded by the training seed
        and the epoch: the code's are unseeded); image score = mean of the top-20 patch scores;
        pixel map = the patch score upsampled bilinearly to the input size and blurred with sigma
        4 there; image and pixel AUROC per category, each averaged over categories; value = sum."""
        count, device = self.config["selection_episodes"], self.context.device
        categories = bank.usable_categories(k)
        input_size = tuple(bank.pixel_masks.shape[-2:])  # the episodes' masks are at the model input
        squash = Preprocessing(size=input_size[0])

        def select(model: NAGL, epoch: int) -> float:
            rng = np.random.default_rng([seed, epoch])
            episodes = [sample_episode(rng, bank, k, categories) for _ in range(count)]
            image_aurocs, pixel_aurocs = [], []
            for category in sorted({bank.categories[e.query] for e in episodes}):
                chosen = [e for e in episodes if bank.categories[e.query] == category]
                scores, maps = [], []
                for start in range(0, len(chosen), 8):
                    output = run_episodes(model, bank, chosen[start:start + 8], device)
                    scores += code_image_score(output["score"]).cpu().tolist()
                    patch_maps = output["score"].reshape(-1, *bank.grid)
                    maps += maps_at_original(patch_maps, [input_size] * len(patch_maps), squash, sigma=4.0)[0]
                image_aurocs.append(auroc([e.label for e in chosen], scores))
                masks = np.stack([bank.pixel_masks[e.query].numpy() for e in chosen])
                pixel_aurocs.append(auroc(masks, np.stack(maps)))
            if np.isnan(image_aurocs).all() or np.isnan(pixel_aurocs).all():
                return float("nan")  # no category drew both labels: this epoch cannot be compared (never chosen)
            return float(np.nanmean(image_aurocs) + np.nanmean(pixel_aurocs))

        return select

    # ------------------------------------------------------------------ contract
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
        return Prediction(output["image_score"].cpu().numpy().astype(np.float64), output["score"].reshape(size, *grid))

    def trainable_parameters(self) -> int | None:
        return sum(p.numel() for p in self.model.parameters()) if self.model is not None else None

    def describe_method(self) -> dict:
        config = self.train_config(1)
        return {"checkpoint_policy": config.checkpoint_policy, "image_loss": config.image_loss,
                "checkpoint_epoch": getattr(self, "checkpoint_epoch", None), **self.training_summary(),
                "mask_downsample": self.config["mask_downsample"], "position_mask": self.config["position_mask"],
                "attention_mask_layout": self.config["attention_mask_layout"], "mask_resize": self.config["mask_resize"]}
