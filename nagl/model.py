"""NAGL: Normal-Abnormal Guided Generalist Anomaly Detection (NeurIPS 2025). Pure torch.

Works on frozen backbone features ([B, N, C] patch tokens of an h x w grid):
  s_n   normal-guided map: max over all normal-reference patches of (1 + cos) / 2
  RM    Residual Mining: M learnable proxies attend over the abnormal reference(s); keys = their
        features + 2-D sine encoding, values = their residuals to the nearest normal patch (raw dot
        product), logits -1e9 on non-anomalous patches; then proxy self-attention
  AFL   Anomaly Feature Learning: RM's proxies attend over the query; keys = the query's residuals
        + encoding, values = the query's features; then self-attention
  s_a   abnormal-guided map: mean over the M proxies of (1 + cos(query patch, proxy)) / 2
  score (s_a + 1 - s_n) / 2 per patch; image score = mean of the top 1 % patches
Attention layers: multi-head, post-norm (add then LayerNorm), dropout 0, no FFN.

Options that reproduce details of the official code (docs/protocol.md):
  mask_downsample  'any-pixel' (a patch is anomalous if any mask pixel falls in it) or
                   'official-conv' (a ones-kernel conv with stride = patch size and padding 1, as
                   the code: its windows are shifted by one pixel)
  position_mask    'official' (the RM encoding treats the anomaly mask as DETR's padding mask, as
                   the code does) or 'none' (a plain grid encoding)
  attention_mask_layout  'per-sample' (each episode's own mask) or 'official' (the code's
                   repeat(nheads, ...) layout, which hands head h of sample b the mask of sample
                   (b * heads + h) % B when B > 1: it mixes masks across a training batch)
  reference_positions  with several abnormal references: 'per-reference' (each key token gets
                   its own reference's grid position) or 'official' (the code lays the RM encoding
                   out (h w n) while its keys are (n h w), so key t of the flattened references
                   gets the position of patch t // A of reference t % A); equal for one reference
With no normal reference (N0) the caller passes the abnormal references' normal patches (mask 0)
as `normal` (the residuals' bank) and `abnormal_only`: s_n is then 1 - s_a, as in the code at
n_shot = 0, so the score is s_a alone.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.features.similarity import top_percent_mean

MASK_DOWNSAMPLE = ("any-pixel", "official-conv")
POSITION_MASK = ("official", "none")
ATTENTION_MASK_LAYOUT = ("per-sample", "official")
REFERENCE_POSITIONS = ("per-reference", "official")


def sine_position_encoding(height: int, width: int, dim: int, padding: torch.Tensor | None = None,
                           temperature: float = 10000.0) -> torch.Tensor:
    """DETR's normalised 2-D sine encoding: [B, height * width, dim] (y half, then x half).

    padding: [B, height, width] bool, True where DETR would see padding (cumulative positions skip
    those cells). None = no padding, batch of one."""
    if padding is None:
        padding = torch.zeros(1, height, width, dtype=torch.bool)
    not_padding = (~padding).float()
    y_embed = not_padding.cumsum(1)
    x_embed = not_padding.cumsum(2)
    eps, scale = 1e-6, 2 * math.pi
    y_embed = y_embed / (y_embed[:, -1:, :] + eps) * scale
    x_embed = x_embed / (x_embed[:, :, -1:] + eps) * scale
    half = dim // 2
    dim_t = torch.arange(half, dtype=torch.float32, device=padding.device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / half)
    pos_x = x_embed[..., None] / dim_t
    pos_y = y_embed[..., None] / dim_t
    pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).flatten(3)
    pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).flatten(3)
    return torch.cat((pos_y, pos_x), dim=3).flatten(1, 2)


def downsample_mask(mask: torch.Tensor, grid: tuple[int, int], mode: str = "any-pixel") -> torch.Tensor:
    """Pixel masks [B, H, W] (model input size) -> patch masks [B, h * w] in {0, 1}."""
    mask = mask.float()[:, None]
    h, w = grid
    if mode == "any-pixel":
        out = F.adaptive_max_pool2d(mask, (h, w))
    elif mode == "official-conv":
        kernel = mask.shape[-2] // h
        out = F.conv2d(mask, torch.ones(1, 1, kernel, kernel, device=mask.device), stride=kernel, padding=1)
        out = (out >= 1).float()
        if out.shape[-2:] != (h, w):
            out = F.interpolate(out, size=(h, w), mode="nearest")
    else:
        raise ValueError(f"mask_downsample must be one of {MASK_DOWNSAMPLE}, not {mode!r}")
    return (out[:, 0] > 0).flatten(1).float()


def cosine_to_unit(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(1 + cos) / 2 between every row of a [B, N, C] and of b [B, Q, C]: [B, N, Q]."""
    return (1 + F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).transpose(1, 2)) / 2


def normal_similarity(query: torch.Tensor, normal: torch.Tensor) -> torch.Tensor:
    """s_n: [B, N] from query [B, N, C] and each sample's normal patches [B, Q, C]."""
    return cosine_to_unit(query, normal).amax(dim=-1)


def nearest_normal_index(features: torch.Tensor, normal: torch.Tensor) -> torch.Tensor:
    """For each patch of features [B, N, C], the index of its nearest patch in normal [B, Q, C],
    chosen by raw dot product (as the official code, not by cosine): [B, N]."""
    return (features @ normal.transpose(1, 2)).argmax(dim=-1)


def nearest_normal_residual(features: torch.Tensor, normal: torch.Tensor) -> torch.Tensor:
    """Each patch minus its nearest normal patch (nearest_normal_index): [B, N, C]."""
    nearest = nearest_normal_index(features, normal)
    return features - torch.gather(normal, 1, nearest[..., None].expand(-1, -1, normal.shape[-1]))


# official parameter name prefix -> this module's (the official code's models/model.py)
OFFICIAL_PREFIXES = {"learnable_proxies.": "proxies.",
                     "rm_ca.multihead_attn.": "rm_cross.attention.", "rm_ca.norm.": "rm_cross.norm.",
                     "rm_sa.self_attn.": "rm_self.attention.", "rm_sa.norm.": "rm_self.norm.",
                     "afl_ca.multihead_attn.": "afl_cross.attention.", "afl_ca.norm.": "afl_cross.norm.",
                     "afl_sa.self_attn.": "afl_self.attention.", "afl_sa.norm.": "afl_self.norm."}


def from_official_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An official NAGL state_dict or checkpoint (n_<k>_a_<j>_best.pth, DDP 'module.' prefixes
    allowed) -> this module's names. The backbone is not part of this model and is dropped; the
    frozen mask_downsample kernel is a fixed all-ones conv here and must be all ones there."""
    out = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        if key.startswith("vision_encoder."):
            continue
        if key == "mask_downsample.weight":
            if not torch.all(value == 1):
                raise ValueError("mask_downsample.weight is not the official all-ones kernel")
            continue
        prefix = next((p for p in OFFICIAL_PREFIXES if key.startswith(p)), None)
        if prefix is None:
            raise ValueError(f"unknown official NAGL parameter {key!r}")
        out[OFFICIAL_PREFIXES[prefix] + key[len(prefix):]] = value
    return out


class AttentionLayer(nn.Module):
    """Multi-head attention, residual add, LayerNorm (post-norm), no FFN, dropout 0."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.attention = nn.MultiheadAttention(dim, heads, dropout=0.0, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        for parameter in self.attention.parameters():
            if parameter.dim() > 1:
                nn.init.xavier_uniform_(parameter)

    def forward(self, query, key, value, attn_mask=None):
        return self.norm(query + self.attention(query, key, value, attn_mask=attn_mask, need_weights=False)[0])


class NAGL(nn.Module):
    def __init__(self, dim: int = 384, heads: int = 4, proxies: int = 25, top_percent: float = 1.0,
                 mask_downsample: str = "any-pixel", position_mask: str = "official",
                 attention_mask_layout: str = "per-sample", reference_positions: str = "per-reference"):
        super().__init__()
        for value, allowed, name in ((mask_downsample, MASK_DOWNSAMPLE, "mask_downsample"),
                                     (position_mask, POSITION_MASK, "position_mask"),
                                     (attention_mask_layout, ATTENTION_MASK_LAYOUT, "attention_mask_layout"),
                                     (reference_positions, REFERENCE_POSITIONS, "reference_positions")):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, not {value!r}")
        if dim % heads or dim % 4:
            raise ValueError(f"feature dim {dim} must be divisible by heads ({heads}) and by 4 (sine encoding)")
        self.dim, self.heads, self.top_percent = dim, heads, top_percent
        self.mask_downsample, self.position_mask, self.attention_mask_layout = mask_downsample, position_mask, attention_mask_layout
        self.reference_positions = reference_positions
        self.proxies = nn.Embedding(proxies, dim)
        self.rm_cross, self.rm_self = AttentionLayer(dim, heads), AttentionLayer(dim, heads)
        self.afl_cross, self.afl_self = AttentionLayer(dim, heads), AttentionLayer(dim, heads)

    # ------------------------------------------------------------------ pieces
    def attention_mask(self, anomalous: torch.Tensor, queries: int) -> torch.Tensor:
        """anomalous [B, S] in {0, 1} -> additive float mask [B * heads, queries, S]."""
        additive = -1e9 * (1 - anomalous)
        if self.attention_mask_layout == "per-sample":
            return additive[:, None, None, :].expand(-1, self.heads, queries, -1).reshape(-1, queries, anomalous.shape[1])
        return additive[:, None, :].repeat(self.heads, queries, 1)  # the official layout (see module doc)

    def mine_residual_proxies(self, abnormal: torch.Tensor, abnormal_patch_mask: torch.Tensor, normal: torch.Tensor,
                              grid: tuple[int, int]) -> torch.Tensor:
        """RM. abnormal [B, A, N, C], abnormal_patch_mask [B, A, N] in {0, 1}, normal [B, Q, C] -> [B, M, C].

        Depends on the references only: at test time it runs once per reference set."""
        batch, refs, patches, dim = abnormal.shape
        if (abnormal_patch_mask.flatten(1).sum(dim=1) == 0).any():
            raise ValueError("abnormal reference mask has no anomalous patch: Residual Mining needs at least one"
                             " (an all-normal mask would let the proxies attend to normal patches)")
        flat = abnormal.reshape(batch, refs * patches, dim)
        residuals = nearest_normal_residual(flat, normal)
        padding = None
        if self.position_mask == "official":
            padding = abnormal_patch_mask.reshape(batch * refs, *grid).bool()
        position = sine_position_encoding(*grid, dim, padding).to(flat.device)
        position = position.expand(batch * refs, -1, -1).reshape(batch, refs, patches, dim)
        if self.reference_positions == "official":  # the code's (h w n) layout against (n h w) keys
            position = position.transpose(1, 2)
        position = position.reshape(batch, refs * patches, dim)
        proxies = self.proxies.weight[None].expand(batch, -1, -1)
        mask = self.attention_mask(abnormal_patch_mask.reshape(batch, refs * patches), proxies.shape[1])
        proxies = self.rm_cross(proxies, flat + position, residuals, attn_mask=mask)
        return self.rm_self(proxies, proxies, proxies)

    def learn_anomaly_proxies(self, query: torch.Tensor, normal: torch.Tensor, residual_proxies: torch.Tensor,
                              grid: tuple[int, int]) -> torch.Tensor:
        """AFL. query [B, N, C], normal [B, Q, C], residual proxies [B, M, C] -> anomaly proxies [B, M, C]."""
        residuals = nearest_normal_residual(query, normal)
        position = sine_position_encoding(*grid, self.dim).to(query.device)
        proxies = self.afl_cross(residual_proxies, residuals + position, query)
        return self.afl_self(proxies, proxies, proxies)

    # ------------------------------------------------------------------ whole model
    def normal_from_abnormal(self, abnormal: torch.Tensor, abnormal_patch_mask: torch.Tensor) -> torch.Tensor:
        """N0: the normal patches of one sample's abnormal references [A, N, C] (mask [A, N] = 0),
        in the code's order (reference, then patch): [1, n, C]."""
        normal = abnormal[abnormal_patch_mask == 0]
        if not len(normal):
            raise ValueError("the abnormal references have no normal patch: with no normal reference (N0) NAGL"
                             " takes its normal patches from them")
        return normal[None]

    def forward(self, query: torch.Tensor, normal: torch.Tensor, grid: tuple[int, int],
                abnormal: torch.Tensor | None = None, abnormal_patch_mask: torch.Tensor | None = None,
                residual_proxies: torch.Tensor | None = None, abnormal_only: bool = False) -> dict[str, torch.Tensor]:
        """query [B, N, C]; normal [B, K, N, C] (all patches of every normal reference); abnormal
        [B, A, N, C] with abnormal_patch_mask [B, A, N], or precomputed residual_proxies [B, M, C].
        abnormal_only (N0): `normal` holds the abnormal references' normal patches, which serve the
        residuals only; s_n is 1 - s_a, so the score is s_a, as the code at n_shot 0.
        Returns s_n, s_a, score ([B, N]) and image_score ([B])."""
        normal = normal.reshape(normal.shape[0], -1, normal.shape[-1])
        s_n = None if abnormal_only else normal_similarity(query, normal)
        if residual_proxies is None and abnormal is not None:
            residual_proxies = self.mine_residual_proxies(abnormal, abnormal_patch_mask, normal, grid)
        if residual_proxies is None:
            s_a = 1 - s_n  # no abnormal reference: NAGL reduces to the normal-guided map (as the code)
        else:
            anomaly_proxies = self.learn_anomaly_proxies(query, normal, residual_proxies, grid)
            s_a = cosine_to_unit(query, anomaly_proxies).mean(dim=-1)
        if abnormal_only:
            s_n = 1 - s_a
        score = (s_a + 1 - s_n) / 2
        return {"s_n": s_n, "s_a": s_a, "score": score, "image_score": top_percent_mean(score, self.top_percent)}
