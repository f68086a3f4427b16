"""ResAD (Yao et al., NeurIPS 2024): residual features, a feature constraintor, and one
conditional normalising flow per feature level. Pure torch + FrEIA.

  residual      squared difference between a patch and its nearest reference patch (cosine
                neighbour), per level (the public code's pos_flag=True form)
  constraintor  one 3x3 conv + BN + ReLU per level, trained to keep normal residuals inside a
                thin shell of radius r = sqrt(|e| + 1) - 1 in [0.99 r_max, r_max] (r_max 0.4)
                with a weighted log-barrier, and to push anomalous ones beyond r_max
  flows         FrEIA AllInOneBlock x coupling_layers, conditioned on a 2-D sine position
                encoding; log-likelihood per dimension = (C ln(1/sqrt(2 pi)) - |z|^2 / 2 + log|J|) / C
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

GAUSSIAN_CONSTANT = -0.9189385332046727  # ln(1 / sqrt(2 pi))


def position_encoding(dim: int, height: int, width: int) -> torch.Tensor:
    """[dim, height, width]: sin/cos of x in the first half of the channels, of y in the second."""
    if dim % 4:
        raise ValueError(f"position encoding dim must be divisible by 4, not {dim}")
    encoding = torch.zeros(dim, height, width)
    half = dim // 2
    div = torch.exp(torch.arange(0.0, half, 2) * -(math.log(1e4) / half))
    pos_w, pos_h = torch.arange(0.0, width)[:, None], torch.arange(0.0, height)[:, None]
    encoding[0:half:2] = torch.sin(pos_w * div).T[:, None, :].expand(-1, height, -1)
    encoding[1:half:2] = torch.cos(pos_w * div).T[:, None, :].expand(-1, height, -1)
    encoding[half::2] = torch.sin(pos_h * div).T[:, :, None].expand(-1, -1, width)
    encoding[half + 1::2] = torch.cos(pos_h * div).T[:, :, None].expand(-1, -1, width)
    return encoding


def squared_residuals(features: list[torch.Tensor], references: list[torch.Tensor]) -> list[torch.Tensor]:
    """features: per level [B, C, h, w]; references: per level [R, C] (all reference patches).
    Each patch's squared difference to its nearest reference patch by cosine: [B, C, h, w]."""
    out = []
    for feature, bank in zip(features, references):
        b, c, h, w = feature.shape
        flat = feature.permute(0, 2, 3, 1).reshape(-1, c)
        nearest = (F.normalize(flat, dim=1) @ F.normalize(bank, dim=1).T).argmax(dim=1)
        matched = bank[nearest].reshape(b, h, w, c).permute(0, 3, 1, 2)
        out.append((feature - matched) ** 2)
    return out


def shell_barrier_loss(embedded: torch.Tensor, anomalous: torch.Tensor, r_max: float = 0.4) -> torch.Tensor:
    """The constraintor's one-class loss. embedded [N, C]; anomalous [N] in {0, 1}."""
    radius = torch.sqrt(embedded.norm(dim=1) + 1) - 1
    abnormal = radius[anomalous > 0]
    if len(abnormal):  # with anomalies: the shell sits inside the smallest anomalous radius
        r_max = min(0.9 * abnormal.min().item(), r_max)
    r_min = 0.99 * r_max
    loss = radius.new_zeros(())
    normal = radius[anomalous == 0]
    for outside, excess in ((normal[normal > r_max], lambda r: r - r_max), (normal[normal < r_min], lambda r: r_min - r)):
        if len(outside):
            amount = excess(outside)
            loss = loss + (F.softplus(amount) * torch.exp(amount).detach()).mean()  # -log sigmoid(-x) = softplus(x)
    if len(abnormal):
        inside = abnormal[abnormal < r_max]
        if len(inside):
            amount = r_max - inside
            loss = loss + (F.softplus(amount) * torch.exp(amount).detach()).mean()
    return loss


class ConvBnAct(nn.Sequential):
    def __init__(self, channels: int):
        super().__init__(nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU(inplace=True))


def conditional_flow(dim: int, condition_dim: int, coupling_layers: int, clamp: float):
    import FrEIA.framework as Ff
    import FrEIA.modules as Fm

    def subnet(dims_in, dims_out):
        return nn.Sequential(nn.Linear(dims_in, 2 * dims_in), nn.ReLU(), nn.Linear(2 * dims_in, dims_out))

    flow = Ff.SequenceINN(dim)
    for _ in range(coupling_layers):
        flow.append(Fm.AllInOneBlock, cond=0, cond_shape=(condition_dim,), subnet_constructor=subnet,
                    affine_clamping=clamp, global_affine_type="SOFTPLUS", permute_soft=True)
    return flow


class ResADModel(nn.Module):
    def __init__(self, channels: list[int], coupling_layers: int = 10, clamp: float = 1.9, position_dim: int = 256):
        super().__init__()
        self.position_dim = position_dim
        self.constraintor = nn.ModuleList(ConvBnAct(c) for c in channels)
        self.flows = nn.ModuleList(conditional_flow(c, position_dim, coupling_layers, clamp) for c in channels)

    def constrain(self, residuals: list[torch.Tensor]) -> list[torch.Tensor]:
        return [block(r) for block, r in zip(self.constraintor, residuals)]

    def level_log_likelihood(self, level: int, embedded: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Per-dimension log-likelihood of embedded rows [N, C] at positions [N, position_dim]."""
        z, log_jacobian = self.flows[level](embedded, [positions])
        dim = embedded.shape[1]
        return (dim * GAUSSIAN_CONSTANT - 0.5 * (z ** 2).sum(dim=1) + log_jacobian) / dim

    def log_likelihood_maps(self, residuals: list[torch.Tensor]) -> list[torch.Tensor]:
        """Constrained residuals per level -> [B, h, w] log-likelihood maps."""
        maps = []
        for level, embedded in enumerate(self.constrain(residuals)):
            b, c, h, w = embedded.shape
            positions = position_encoding(self.position_dim, h, w).to(embedded.device)
            positions = positions.permute(1, 2, 0).reshape(1, h * w, -1).expand(b, -1, -1).reshape(-1, self.position_dim)
            rows = embedded.permute(0, 2, 3, 1).reshape(-1, c)
            maps.append(self.level_log_likelihood(level, rows, positions).reshape(b, h, w))
        return maps
