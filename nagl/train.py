"""Episodic training of NAGL on the source domain's test split. Pure torch + numpy.

The backbone is frozen and NAGL uses no augmentation, so every image's features are computed once
up front (the caller passes them in) and an episode only runs the attention modules.

Episode: a random category; k normal references from its normal images; a random defect type and
one abnormal reference of that type (with defect pixels); a query that is normal or abnormal with
p = 0.5 (an abnormal query shares the reference's type) and is never one of the references (the
official sampler tries to enforce this but discards the retry's result).
Schedule (the paper): 500 episodes per epoch, batch 8, 20 epochs, AdamW lr 1e-5 (0.9, 0.999),
lr x 0.1 at epochs 10 and 15, seed 111. Loss = image loss + pixel loss; pixel: sigmoid focal
(alpha 0.25, gamma 2) + Dice on [s_n, s_a] upsampled to the input against [1 - mask, mask];
image: 'code' = cross-entropy over [1 - s, s], s = mean of the top-20 patches; 'paper' = BCE on
the top-1 % mean. Training state is saved after every epoch, so an interrupted run resumes at the
last finished epoch and ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss

from nagl.model import NAGL
from nagl.similarity import top_percent_mean

IMAGE_LOSSES = ("code", "paper")
CHECKPOINT_POLICIES = ("last", "official-target-selected")


@dataclass
class TrainConfig:
    k_normal: int
    epochs: int = 20
    episodes_per_epoch: int = 500
    batch_size: int = 8
    learning_rate: float = 1e-5
    milestones: tuple[int, ...] = (10, 15)
    gamma: float = 0.1
    seed: int = 111
    image_loss: str = "code"
    pixel_loss_weight: float = 1.0
    checkpoint_policy: str = "last"
    selection_start_epoch: int = 5

    def __post_init__(self):
        if self.image_loss not in IMAGE_LOSSES:
            raise ValueError(f"image_loss must be one of {IMAGE_LOSSES}, not {self.image_loss!r}")
        if self.checkpoint_policy not in CHECKPOINT_POLICIES:
            raise ValueError(f"checkpoint_policy must be one of {CHECKPOINT_POLICIES}, not {self.checkpoint_policy!r}")
        self.milestones = tuple(self.milestones)


@dataclass
class EpisodeBank:
    """Everything an episode needs, for every image of the source test split.

    features [n, N, C] patch tokens; pixel_masks [n, H, W] at the model input size; patch_masks
    [n, N]; categories / labels / defects: one entry per image."""

    features: torch.Tensor
    pixel_masks: torch.Tensor
    patch_masks: torch.Tensor
    categories: list[str]
    labels: list[int]
    defects: list[str]
    grid: tuple[int, int]
    groups: dict = field(init=False)

    def __post_init__(self):
        self.groups = {}
        for index, (category, label, defect) in enumerate(zip(self.categories, self.labels, self.defects)):
            group = self.groups.setdefault(category, {"normal": [], "defects": {}})
            if label == 0:
                group["normal"].append(index)
            else:
                group["defects"].setdefault(defect, []).append(index)

    def usable_categories(self, k: int) -> list[str]:
        """Categories with k + 1 normal images and a defect type with an abnormal reference."""
        return sorted(c for c, g in self.groups.items() if len(g["normal"]) > k and self.reference_types(c))

    def reference_types(self, category: str) -> list[str]:
        defects = self.groups[category]["defects"]
        return sorted(t for t, items in defects.items() if any(self.patch_masks[i].any() for i in items))


@dataclass
class Episode:
    query: int
    normal: list[int]
    abnormal: int
    label: int


def sample_episode(rng: np.random.Generator, bank: EpisodeBank, k: int, categories: list[str]) -> Episode:
    category = categories[rng.integers(len(categories))]
    group = bank.groups[category]
    normal_pool = group["normal"]
    normal = [normal_pool[i] for i in rng.choice(len(normal_pool), size=k, replace=False)]
    types = bank.reference_types(category)
    defect = types[rng.integers(len(types))]
    candidates = [i for i in group["defects"][defect] if bank.patch_masks[i].any()]
    abnormal = candidates[rng.integers(len(candidates))]
    abnormal_queries = [i for i in group["defects"][defect] if i != abnormal]
    wants_abnormal = rng.random() < 0.5
    if wants_abnormal and abnormal_queries:
        return Episode(abnormal_queries[rng.integers(len(abnormal_queries))], normal, abnormal, 1)
    normal_queries = [i for i in normal_pool if i not in normal]
    return Episode(normal_queries[rng.integers(len(normal_queries))], normal, abnormal, 0)


def dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """The official Dice: softmax over the two channels, then per channel 1 - mean Dice, summed."""
    probabilities = logits.softmax(dim=1)
    total = 0.0
    for channel in range(logits.shape[1]):
        p = probabilities[:, channel].flatten(1)
        t = target[:, channel].flatten(1)
        dice = (2 * (p * t).sum(1) + smooth) / (p.sum(1) + t.sum(1) + smooth)
        total = total + 1 - dice.mean()
    return total


def episode_loss(output: dict, pixel_masks: torch.Tensor, labels: torch.Tensor, grid: tuple[int, int],
                 config: TrainConfig) -> tuple[torch.Tensor, dict]:
    batch = labels.shape[0]
    # the code treats the similarity maps [s_n, s_a] as logits of [normal, anomalous]
    maps = torch.stack([output["s_n"], output["s_a"]], dim=1).reshape(batch, 2, *grid)
    maps = F.interpolate(maps, size=pixel_masks.shape[-2:], mode="bilinear", align_corners=False)
    target = torch.stack([1 - pixel_masks, pixel_masks], dim=1)
    pixel = sigmoid_focal_loss(maps, target, alpha=0.25, gamma=2.0, reduction="mean") + dice_loss(maps, target)
    if config.image_loss == "code":
        score = output["score"].topk(min(20, output["score"].shape[1]), dim=1).values.mean(dim=1)
        image = F.cross_entropy(torch.stack([1 - score, score], dim=1), labels.long())
    else:
        score = top_percent_mean(output["score"], 1.0).clamp(1e-6, 1 - 1e-6)
        image = F.binary_cross_entropy(score, labels.float())
    loss = image + config.pixel_loss_weight * pixel
    return loss, {"image_loss": image.item(), "pixel_loss": pixel.item()}


def run_episodes(model: NAGL, bank: EpisodeBank, episodes: list[Episode], device: torch.device) -> dict:
    """One forward pass over a batch of episodes."""
    index = lambda ids: torch.as_tensor(ids, dtype=torch.long)
    query = bank.features[index([e.query for e in episodes])].to(device)
    normal = bank.features[index([e.normal for e in episodes])].to(device)
    abnormal = bank.features[index([[e.abnormal] for e in episodes])].to(device)
    abnormal_mask = bank.patch_masks[index([[e.abnormal] for e in episodes])].to(device)
    return model(query, normal, bank.grid, abnormal, abnormal_mask)


def _save_atomic(state: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(handle)
    try:
        torch.save(state, temp)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def train(model: NAGL, bank: EpisodeBank, config: TrainConfig, workdir: Path, config_hash: str,
          device: torch.device = torch.device("cpu"), select: Callable[[NAGL], float] | None = None,
          log: Callable[[str], None] = print) -> Path:
    """Train (or resume) and return the chosen checkpoint: {'config_hash', 'epoch', 'state_dict'}."""
    workdir = Path(workdir)
    state_path, final_path = workdir / "training_state.pt", workdir / "model.pt"
    categories = bank.usable_categories(config.k_normal)
    if not categories:
        raise ValueError(f"no source category has {config.k_normal + 1} normal images and a defect with a mask")
    torch.manual_seed(config.seed)
    model.to(device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.learning_rate, betas=(0.9, 0.999))
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(config.milestones), gamma=config.gamma)
    rng = np.random.default_rng(config.seed)
    start_epoch, best, history = 0, {"score": -np.inf, "epoch": None, "state_dict": None}, []
    if state_path.exists():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        if state["config_hash"] != config_hash:
            raise ValueError(f"{state_path} was written by a different training config; delete it to retrain")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
        start_epoch, best, history = state["epoch"] + 1, state["best"], state["history"]
        log(f"resuming NAGL training at epoch {start_epoch} from {state_path}")
    for epoch in range(start_epoch, config.epochs):
        model.train()
        losses, started = [], time.perf_counter()
        for _ in range(0, config.episodes_per_epoch, config.batch_size):
            episodes = [sample_episode(rng, bank, config.k_normal, categories) for _ in range(config.batch_size)]
            output = run_episodes(model, bank, episodes, device)
            masks = bank.pixel_masks[torch.as_tensor([e.query for e in episodes])].float().to(device)
            labels = torch.as_tensor([e.label for e in episodes], device=device)
            loss, _ = episode_loss(output, masks, labels, bank.grid, config)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        scheduler.step()
        history.append({"epoch": epoch, "loss": float(np.mean(losses)), "seconds": time.perf_counter() - started})
        message = f"epoch {epoch + 1}/{config.epochs}: loss {np.mean(losses):.4f}"
        if config.checkpoint_policy == "official-target-selected" and epoch >= config.selection_start_epoch:
            model.eval()
            with torch.no_grad():
                score = select(model)
            message += f", target selection score {score:.4f}"
            if score >= best["score"]:  # '>=' as the code: a later equal epoch wins
                best = {"score": float(score), "epoch": epoch, "state_dict": {k: v.clone() for k, v in model.state_dict().items()}}
        log(message)
        _save_atomic({"config_hash": config_hash, "epoch": epoch, "model": model.state_dict(),
                      "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                      "rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(), "best": best,
                      "history": history, "config": asdict(config)}, state_path)
    if config.checkpoint_policy == "official-target-selected" and best["state_dict"] is not None:
        chosen, epoch = best["state_dict"], best["epoch"]
    else:
        chosen, epoch = model.state_dict(), config.epochs - 1
    _save_atomic({"config_hash": config_hash, "epoch": epoch, "state_dict": chosen, "history": history}, final_path)
    return final_path
