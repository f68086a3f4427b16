"""The official checkpoint choice (train.py, utils/metrics.py), which leaks the target: each epoch
is scored on the TARGET and the best kept. Pure torch, numpy, scipy and scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter
from sklearn.metrics import roc_auc_score

from nagl.model import NAGL
from nagl.train import EpisodeBank, code_image_score, run_episodes, sample_episode


def _auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    labels = np.asarray(labels).ravel().astype(bool)
    if labels.all() or not labels.any():
        return math.nan
    return float(roc_auc_score(labels, np.asarray(scores).ravel()))


def episode_maps(patch_scores: torch.Tensor, input_size: tuple[int, int], sigma: float = 4.0) -> np.ndarray:
    """[n, h, w] patch scores -> [n, H, W] maps at the model input: bilinear upsampling, then a
    Gaussian blur (scipy's, 'reflect' border), as the code's selection maps."""
    upsampled = F.interpolate(patch_scores[:, None].float().cpu(), size=input_size, mode="bilinear", align_corners=False)[:, 0]
    return np.stack([gaussian_filter(m, sigma=sigma) for m in upsampled.numpy()])


def target_selector(bank: EpisodeBank, k: int, seed: int, count: int, device: torch.device, sampler: str = "clean",
                    j: int = 1):
    """A function (model, epoch) -> selection value. Each epoch, `count` fresh episodes are drawn
    on the target (seeded by the training seed and the epoch: the code's are unseeded); image
    score = mean of the top-20 patch scores; pixel map = the patch score upsampled bilinearly to
    the input size and blurred with sigma 4 there; image and pixel AUROC per category, each
    averaged over categories; value = their sum (NaN when no category drew both labels)."""
    categories = bank.usable_categories(k, sampler, j)
    input_size = tuple(bank.pixel_masks.shape[-2:])  # the episodes' masks are at the model input

    def select(model: NAGL, epoch: int) -> float:
        rng = np.random.default_rng([seed, epoch])
        episodes = [sample_episode(rng, bank, k, categories, sampler, j) for _ in range(count)]
        image_aurocs, pixel_aurocs = [], []
        for category in sorted({bank.categories[e.query] for e in episodes}):
            chosen = [e for e in episodes if bank.categories[e.query] == category]
            scores, maps = [], []
            for start in range(0, len(chosen), 8):
                output = run_episodes(model, bank, chosen[start:start + 8], device)
                scores += code_image_score(output["score"]).cpu().tolist()
                maps.append(episode_maps(output["score"].reshape(-1, *bank.grid), input_size))
            image_aurocs.append(_auroc(np.array([e.label for e in chosen]), np.array(scores)))
            masks = np.stack([bank.pixel_masks[e.query].numpy() for e in chosen])
            pixel_aurocs.append(_auroc(masks, np.concatenate(maps)))
        if np.isnan(image_aurocs).all() or np.isnan(pixel_aurocs).all():
            return float("nan")  # no category drew both labels: this epoch cannot be compared (never chosen)
        return float(np.nanmean(image_aurocs) + np.nanmean(pixel_aurocs))

    return select
