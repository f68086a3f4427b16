"""ViT position embeddings resized to a new patch grid the way the DINOv2 hub model does it. Pure torch.

timm resizes a checkpoint's position embedding once, at load, to the exact new grid (bicubic with
antialias, `size=`). The DINOv2 hub model that NAGL's code loads keeps the 37 x 37 grid of its
518 px checkpoint and resizes at every forward pass, bicubic WITHOUT antialias, with a scale
factor of (new grid + interpolate_offset) / 37 instead of a target size
(dinov2/models/vision_transformer.py, interpolate_pos_encoding). At 448 px the two differ by up
to 0.34 on a field of magnitude 1.7 (tests/conformance). `pos_embed: dinov2_hub` in
configs/backbones.yaml selects this resize, `timm` keeps timm's.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

POS_EMBED_RESIZES = ("dinov2_hub", "timm")


def dinov2_hub_resize(pos_embed: torch.Tensor, grid: tuple[int, int], prefix_tokens: int = 1,
                      offset: float = 0.1, antialias: bool = False) -> torch.Tensor:
    """[1, prefix + M*M, C] -> [1, prefix + h*w, C] for the patch grid (h, w), as the hub model.

    The hub passes scale_factor=(sx, sy) with sx from the width; for the square grids NAGL uses
    (448 px -> 32 x 32) that is the same as (sy, sx), and the height scale is applied to the rows
    here so that non-square grids are laid out correctly."""
    prefix, patches = pos_embed[:, :prefix_tokens], pos_embed[:, prefix_tokens:]
    side = int(math.isqrt(patches.shape[1]))
    if side * side != patches.shape[1]:
        raise ValueError(f"position embedding has {patches.shape[1]} patch positions, not a square grid")
    height, width = grid
    if (height, width) == (side, side):
        return pos_embed
    dim = patches.shape[-1]
    square = patches.float().reshape(1, side, side, dim).permute(0, 3, 1, 2)
    if offset:
        scale = ((height + offset) / side, (width + offset) / side)
        resized = F.interpolate(square, scale_factor=scale, mode="bicubic", antialias=antialias, align_corners=False)
    else:
        resized = F.interpolate(square, size=(height, width), mode="bicubic", antialias=antialias, align_corners=False)
    if resized.shape[-2:] != (height, width):
        raise ValueError(f"resized position grid {tuple(resized.shape[-2:])} != patch grid {(height, width)}")
    resized = resized.permute(0, 2, 3, 1).reshape(1, height * width, dim).to(pos_embed.dtype)
    return torch.cat((prefix, resized), dim=1)
