"""ResAD (Yao et al., NeurIPS 2024): residual features, a feature constraintor, and one
conditional normalising flow per feature level. Pure torch + FrEIA.

  residual      squared difference between a patch and its nearest reference patch (cosine
                neighbour), per level (the public code's pos_flag=True form)
  constraintor  one 3x3 conv + BN + ReLU per level, trained with the code's loss: normal
                residuals kept in a thin shell of radius r = sqrt(|e| + 1) - 1 in
                [0.99 r_max, r_max] (r_max 0.4, or 0.9 x the smallest anomalous radius) by a
                weighted log-barrier; anomalous ones kept close to their input (MSE + 1 - cos)
                and pushed beyond r_max + 0.1 by the same barrier
  flows         FrEIA AllInOneBlock x coupling_layers, conditioned on a 2-D sine position
                encoding; log-likelihood per dimension = (C ln(1/sqrt(2 pi)) - |z|^2 / 2 + log|J|) / C
  flow training the code's train.py: one optimizer step per chunk of `rows_per_step` permuted
                rows of a level (the remainder is dropped, so a level with fewer rows than a
                chunk is never trained), or one step per batch on at most that many rows;
                stage 2 with the code's loss (normal and abnormal likelihoods, focal, boundary
                push-pull with a moving-average boundary) or the paper's margin hinge
Checked against the official code in tests/conformance/test_resad_official.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.features.similarity import max_cosine

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
        _, nearest = max_cosine(flat, bank)
        matched = bank[nearest].reshape(b, h, w, c).permute(0, 3, 1, 2)
        out.append((feature - matched) ** 2)
    return out


def _barrier(excess: torch.Tensor) -> torch.Tensor:
    """The code's weighted log-barrier: mean of -log sigmoid(-x) * exp(x), the weight held constant."""
    return (F.softplus(excess) * torch.exp(excess).detach()).mean()


def constraint_loss(embedded: torch.Tensor, anomalous: torch.Tensor, target: torch.Tensor | None = None,
                    r_max: float = 0.4) -> torch.Tensor:
    """The code's calculate_log_barrier_bi_occ_loss. embedded [N, C] (constrained residuals),
    anomalous [N] in {0, 1}, target [N, C] (the residuals before the constraintor)."""
    radius = torch.sqrt(embedded.norm(dim=1) + 1) - 1
    abnormal = radius[anomalous > 0]
    if len(abnormal):  # the shell sits inside the smallest anomalous radius
        r_max = min(0.9 * abnormal.min().item(), r_max)
    r_min = 0.99 * r_max
    loss = radius.new_zeros(())
    normal = radius[anomalous == 0]
    if len(normal):
        for excess in (normal[normal > r_max] - r_max, r_min - normal[normal < r_min]):
            if len(excess):
                loss = loss + _barrier(excess)
    if len(abnormal) and target is not None:
        features, kept = embedded[anomalous > 0], target[anomalous > 0]
        loss = loss + F.mse_loss(features, kept) + (1 - F.cosine_similarity(features, kept)).mean()
        boundary = r_max + 0.1  # anomalies are pushed beyond the shell by a margin
        inside = abnormal[abnormal < boundary]
        if len(inside):
            loss = loss + _barrier(boundary - inside)
    return loss


def normal_log_likelihood(z: torch.Tensor, log_jacobian: torch.Tensor) -> torch.Tensor:
    """Per-dimension log-likelihood under N(0, I): (C ln(1/sqrt(2 pi)) - |z|^2 / 2 + log|J|) / C."""
    dim = z.shape[1]
    return (dim * GAUSSIAN_CONSTANT - 0.5 * (z ** 2).sum(dim=1) + log_jacobian) / dim


def abnormal_log_likelihood(z: torch.Tensor, log_jacobian: torch.Tensor) -> torch.Tensor:
    """The code's abnormal distribution: the same, centred at 1 (get_logp_a)."""
    return normal_log_likelihood(z - 1, log_jacobian)


def code_focal_loss(probabilities: torch.Tensor, labels: torch.Tensor, gamma: float = 2.0, smooth: float = 1e-5) -> torch.Tensor:
    """The code's FocalLoss on class probabilities [N, 2] with labels [N] in {0, 1}: one-hot
    targets clamped to [smooth, 1 - smooth], pt = <target, p> + smooth, -(1 - pt)^gamma log pt."""
    target = F.one_hot(labels.long(), probabilities.shape[1]).float().clamp(smooth, 1 - smooth)
    pt = (target * probabilities).sum(dim=1) + smooth
    return (-(1 - pt) ** gamma * pt.log()).mean()


def normal_boundary(log_likelihoods: torch.Tensor, anomalous: torch.Tensor, beta: float) -> torch.Tensor | None:
    """The code's get_normal_boundary: the int(beta * n)-th smallest normal log-likelihood."""
    normal = log_likelihoods[anomalous == 0]
    if not len(normal):
        return None
    return normal.sort().values[int(len(normal) * beta)]


FLOW_UPDATES = ("per-chunk", "per-batch")
STAGE2_LOSSES = ("code", "paper")


@dataclass
class FlowSchedule:
    """How the flows learn from one batch (train.py's train() and its arguments)."""

    rows_per_step: int = 8192
    updates: str = "per-chunk"
    stage2_loss: str = "code"
    boundary_beta: float = 0.05  # pos_beta
    boundary_margin: float = 0.1  # margin_tau: the abnormal boundary lies this far below the normal one
    push_pull_weight: float = 1.0  # bgspp_lambda
    margin: float = 0.1  # the paper variant's hinge margin
    momentum: float = 0.9  # of the moving-average normal boundary
    boundaries: list = field(default_factory=list)  # one per level, moving averages (start at 0)

    def __post_init__(self):
        if self.updates not in FLOW_UPDATES:
            raise ValueError(f"flow updates must be one of {FLOW_UPDATES}, not {self.updates!r}")
        if self.stage2_loss not in STAGE2_LOSSES:
            raise ValueError(f"stage-2 flow loss must be one of {STAGE2_LOSSES}, not {self.stage2_loss!r}")

    def ensure_levels(self, levels: int) -> None:
        while len(self.boundaries) < levels:
            self.boundaries.append(torch.zeros(()))  # the code's BoundaryAverager starts at 0

    def update_boundary(self, level: int, log_likelihoods: torch.Tensor, anomalous: torch.Tensor) -> None:
        self.ensure_levels(level + 1)
        value = normal_boundary(log_likelihoods.detach(), anomalous, self.boundary_beta)
        if value is not None:
            self.boundaries[level] = self.boundaries[level] * self.momentum + (1 - self.momentum) * value


    # the boundaries are training state: saved and restored with the epochs (benchmark/api/training.py)
    def state_dict(self) -> dict:
        return {"boundaries": [torch.as_tensor(b) for b in self.boundaries]}

    def load_state_dict(self, state: dict) -> None:
        self.boundaries = list(state["boundaries"])


def flow_loss(schedule: FlowSchedule, level: int, z: torch.Tensor, log_jacobian: torch.Tensor,
              anomalous: torch.Tensor, first_stage: bool) -> torch.Tensor:
    """One chunk's flow loss; updates the level's moving boundary as the code does."""
    logp = normal_log_likelihood(z, log_jacobian)
    schedule.update_boundary(level, logp, anomalous)
    normal, abnormal = anomalous == 0, anomalous > 0
    if first_stage or not abnormal.any():
        return -F.logsigmoid(logp).mean()
    if schedule.stage2_loss == "paper":  # anomalies `margin` below the normal positions' mean
        loss = -F.logsigmoid(logp[normal]).mean() if normal.any() else logp.new_zeros(())
        if normal.any():
            loss = loss + F.softplus(logp[abnormal] - (logp[normal].mean().detach() - schedule.margin)).mean()
        return loss
    logp_abnormal = abnormal_log_likelihood(z, log_jacobian)
    # an all-anomalous chunk has no normal term (the code would take the mean of nothing: NaN)
    loss = -F.logsigmoid(logp[normal]).mean() if normal.any() else logp.new_zeros(())
    loss = loss - F.logsigmoid(logp_abnormal[abnormal]).mean()
    loss = loss + code_focal_loss(torch.stack([logp, logp_abnormal], dim=-1).softmax(dim=-1), anomalous)
    b_normal = schedule.boundaries[level]
    b_abnormal = b_normal - schedule.boundary_margin
    pull = logp[normal][logp[normal] <= b_normal]
    push = logp[abnormal][logp[abnormal] >= b_abnormal]
    push_pull = (F.softplus(b_normal - pull).mean() if len(pull) else 0) + (F.softplus(push - b_abnormal).mean() if len(push) else 0)
    return loss + schedule.push_pull_weight * push_pull


def train_flows(model: "ResADModel", embedded: list[torch.Tensor], masks: torch.Tensor, optimizer: torch.optim.Optimizer,
                schedule: FlowSchedule, first_stage: bool) -> tuple[float, int]:
    """The code's train(): per level, the constrained residuals [B, C, h, w] (detached) as rows,
    masks [B, 1, H, W] brought to the level's grid (nearest), one random permutation of the rows
    (torch's global RNG, one randperm per level), then optimizer steps. Returns (loss sum, steps)."""
    total, steps = 0.0, 0
    schedule.ensure_levels(len(embedded))
    for level, features in enumerate(embedded):
        batch, dim, height, width = features.shape
        rows = features.permute(0, 2, 3, 1).reshape(-1, dim)
        anomalous = F.interpolate(masks, size=(height, width), mode="nearest").reshape(-1)
        positions = position_encoding(model.position_dim, height, width).to(features.device)
        positions = positions.permute(1, 2, 0).reshape(1, height * width, -1).expand(batch, -1, -1).reshape(-1, model.position_dim)
        order = torch.randperm(len(rows), device=features.device)
        size = schedule.rows_per_step
        chunks = ([order[i * size:(i + 1) * size] for i in range(len(rows) // size)] if schedule.updates == "per-chunk"
                  else [order[:size]])
        for chunk in chunks:
            z, log_jacobian = model.flows[level](rows[chunk], [positions[chunk]])
            loss = flow_loss(schedule, level, z, log_jacobian, anomalous[chunk], first_stage)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if math.isfinite(loss.item()):
                total += loss.item()
                steps += 1
    return total, steps


class ConvBnAct(nn.Module):
    """3x3 conv, BatchNorm, ReLU (the code's ConvBnAct)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.bn = nn.BatchNorm2d(channels)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


def conditional_flow(dim: int, condition_dim: int, coupling_layers: int, clamp: float, soft_permutation: bool):
    import FrEIA.framework as Ff
    import FrEIA.modules as Fm

    def subnet(dims_in, dims_out):
        return nn.Sequential(nn.Linear(dims_in, 2 * dims_in), nn.ReLU(), nn.Linear(2 * dims_in, dims_out))

    flow = Ff.SequenceINN(dim)
    for _ in range(coupling_layers):
        flow.append(Fm.AllInOneBlock, cond=0, cond_shape=(condition_dim,), subnet_constructor=subnet,
                    affine_clamping=clamp, global_affine_type="SOFTPLUS", permute_soft=soft_permutation)
    return flow


class ResADModel(nn.Module):
    """for_loading: the permutations are about to be overwritten by a checkpoint, so skip drawing
    random orthogonal ones (FrEIA's soft permutation: minutes for 1024 channels x 10 couplings)."""

    def __init__(self, channels: list[int], coupling_layers: int, clamp: float, position_dim: int, for_loading: bool = False):
        super().__init__()
        self.position_dim = position_dim
        self.constraintor = nn.ModuleList(ConvBnAct(c) for c in channels)
        self.flows = nn.ModuleList(conditional_flow(c, position_dim, coupling_layers, clamp, not for_loading) for c in channels)

    def constrain(self, residuals: list[torch.Tensor]) -> list[torch.Tensor]:
        return [block(r) for block, r in zip(self.constraintor, residuals)]

    def level_log_likelihood(self, level: int, embedded: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Per-dimension log-likelihood of embedded rows [N, C] at positions [N, position_dim]."""
        z, log_jacobian = self.flows[level](embedded, [positions])
        return normal_log_likelihood(z, log_jacobian)

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
