"""Episodic training of NAGL on the source domain's test split. Pure torch + numpy.

The backbone is frozen and NAGL uses no augmentation, so every image's features are computed once
up front (the caller passes them in) and an episode only runs the attention modules.

Episode: a random category; k normal references from its normal images; a random defect type
(uniform over the types, not over images) and j abnormal references of that type (with defect
pixels; j = 1 in the paper, any j as the code's --a_shot); a query that is normal or abnormal
with p = 0.5 (an abnormal query shares the references' type). k = 0 (the code's n_shot 0): the
normal patches are the abnormal references' own normal region, episode by episode. `episode_sampler`: 'clean' (the default) never makes the query one of the
references: it needs k + 1 normal images, and a type with one image gives a normal query;
'official' draws as the code's FSDataset.load_frame (JasonKyng/NAGL utils/dataset.py), whose check
against the references discards its retry's result, so the query may be one of them
(tests/conformance/test_nagl_episodes.py compares the two with episodes the code drew).
Schedule (the paper): 500 episodes per epoch, batch 8, 20 epochs, AdamW lr 1e-5 (0.9, 0.999),
lr x 0.1 at epochs 10 and 15, seed 111. Loss = image loss + pixel loss; pixel: sigmoid focal
(alpha 0.25, gamma 2) + Dice on [s_n, s_a] upsampled to the input against [1 - mask, mask];
image: 'code' = cross-entropy over [1 - s, s], s = mean of the top-20 patches; 'paper' = BCE on
the top-1 % mean. The epochs themselves run in the harness's resumable loop
(benchmark/api/training.py, called by nagl/adapter.py), which saves the state after every epoch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss

from nagl.model import NAGL
from benchmark.features.similarity import top_percent_mean

IMAGE_LOSSES = ("code", "paper")
EPISODE_SAMPLERS = ("clean", "official")
CHECKPOINT_POLICIES = ("last", "official-target-selected")


@dataclass
class TrainConfig:
    k_normal: int
    k_abnormal: int = 1
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
    episode_sampler: str = "clean"

    def __post_init__(self):
        if self.image_loss not in IMAGE_LOSSES:
            raise ValueError(f"image_loss must be one of {IMAGE_LOSSES}, not {self.image_loss!r}")
        if self.episode_sampler not in EPISODE_SAMPLERS:
            raise ValueError(f"episode_sampler must be one of {EPISODE_SAMPLERS}, not {self.episode_sampler!r}")
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

    @staticmethod
    def normal_images_needed(k: int, sampler: str) -> int:
        """k + 1 normal images per category (k under the official sampler, whose query may be a reference)."""
        return k if sampler == "official" else k + 1

    def usable_categories(self, k: int, sampler: str, j: int) -> list[str]:
        """Categories with a defect type with j abnormal references and enough normal images."""
        needed = self.normal_images_needed(k, sampler)
        return sorted(c for c, g in self.groups.items() if len(g["normal"]) >= needed and self.reference_types(c, j))

    def reference_types(self, category: str, j: int) -> list[str]:
        """The category's defect types with at least j images whose mask covers a patch."""
        defects = self.groups[category]["defects"]
        return sorted(t for t, items in defects.items() if sum(bool(self.patch_masks[i].any()) for i in items) >= j)


@dataclass
class Episode:
    query: int
    normal: list[int]
    abnormal: list[int]
    label: int


def sample_episode(rng: np.random.Generator, bank: EpisodeBank, k: int, categories: list[str],
                   sampler: str, j: int) -> Episode:
    category = categories[rng.integers(len(categories))]
    group = bank.groups[category]
    normal_pool = group["normal"]
    normal = [normal_pool[i] for i in rng.choice(len(normal_pool), size=k, replace=False)] if k else []
    types = bank.reference_types(category, j)
    defect = types[rng.integers(len(types))]
    candidates = [i for i in group["defects"][defect] if bank.patch_masks[i].any()]
    if j == 1:  # one draw, as gadbench has always drawn it
        abnormal = [candidates[rng.integers(len(candidates))]]
    else:  # without replacement, as the code's random.sample
        abnormal = [candidates[i] for i in rng.choice(len(candidates), size=j, replace=False)]
    if sampler == "official":  # any image of the pools, the references included
        if rng.random() < 0.5:
            pool = group["defects"][defect]
            return Episode(pool[rng.integers(len(pool))], normal, abnormal, 1)
        return Episode(normal_pool[rng.integers(len(normal_pool))], normal, abnormal, 0)
    abnormal_queries = [i for i in group["defects"][defect] if i not in abnormal]
    wants_abnormal = rng.random() < 0.5
    if wants_abnormal and abnormal_queries:
        return Episode(abnormal_queries[rng.integers(len(abnormal_queries))], normal, abnormal, 1)
    normal_queries = [i for i in normal_pool if i not in normal]
    return Episode(normal_queries[rng.integers(len(normal_queries))], normal, abnormal, 0)


def code_image_score(patch_scores: torch.Tensor, top: int = 20) -> torch.Tensor:
    """The image score of the code's training and validation: mean of the top-20 patch scores."""
    return patch_scores.topk(min(top, patch_scores.shape[1]), dim=1).values.mean(dim=1)


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
        score = code_image_score(output["score"])
        image = F.cross_entropy(torch.stack([1 - score, score], dim=1), labels.long())
    else:
        score = top_percent_mean(output["score"], 1.0).clamp(1e-6, 1 - 1e-6)
        image = F.binary_cross_entropy(score, labels.float())
    loss = image + config.pixel_loss_weight * pixel
    return loss, {"image_loss": image.item(), "pixel_loss": pixel.item()}


def run_episodes(model: NAGL, bank: EpisodeBank, episodes: list[Episode], device: torch.device) -> dict:
    """One forward pass over a batch of episodes. Without normal references (k = 0) each episode's
    normal patches are its abnormal references' normal region, whose size differs between
    episodes: they run one by one and their outputs are stacked (every loss term is a mean over
    samples, so the batch's loss is unchanged)."""
    index = lambda ids: torch.as_tensor(ids, dtype=torch.long)
    query = bank.features[index([e.query for e in episodes])].to(device)
    abnormal = bank.features[index([e.abnormal for e in episodes])].to(device)
    abnormal_mask = bank.patch_masks[index([e.abnormal for e in episodes])].to(device)
    if episodes[0].normal:
        normal = bank.features[index([e.normal for e in episodes])].to(device)
        return model(query, normal, bank.grid, abnormal, abnormal_mask)
    outputs = [model(query[b:b + 1], model.normal_from_abnormal(abnormal[b], abnormal_mask[b]), bank.grid,
                     abnormal[b:b + 1], abnormal_mask[b:b + 1], abnormal_only=True) for b in range(len(episodes))]
    return {key: torch.cat([output[key] for output in outputs]) for key in outputs[0]}


def make_optimizer(model: NAGL, config: TrainConfig):
    """AdamW (0.9, 0.999) over the trainable parameters, lr x gamma at each milestone (the code's)."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.learning_rate, betas=(0.9, 0.999))
    return optimizer, torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(config.milestones), gamma=config.gamma)


def train_epoch(model: NAGL, bank: EpisodeBank, config: TrainConfig, optimizer, rng: np.random.Generator,
                categories: list[str], device: torch.device = torch.device("cpu")) -> float:
    """episodes_per_epoch episodes in batches; one optimizer step per batch. Returns the mean loss."""
    model.train()
    losses = []
    for _ in range(0, config.episodes_per_epoch, config.batch_size):
        episodes = [sample_episode(rng, bank, config.k_normal, categories, config.episode_sampler, config.k_abnormal)
                    for _ in range(config.batch_size)]
        output = run_episodes(model, bank, episodes, device)
        masks = bank.pixel_masks[torch.as_tensor([e.query for e in episodes])].float().to(device)
        labels = torch.as_tensor([e.label for e in episodes], device=device)
        loss, _ = episode_loss(output, masks, labels, bank.grid, config)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return float(np.mean(losses))
