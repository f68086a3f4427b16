"""Deterministic weights made from each tensor's name, so that two implementations with the same
parameter names (an official code and this project) can be given identical weights without
storing them. Used for the InCTRL and ResAD fixtures: the generator that ran the official code
filled its model with the same function (see the fixtures' PROVENANCE.md)."""

from __future__ import annotations

import math
import zlib

import torch


def recipe_tensor(name: str, shape: tuple[int, ...]) -> torch.Tensor:
    generator = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    ints = torch.randint(-64, 65, tuple(shape), generator=generator).float()
    leaf = name.rsplit(".", 1)[-1]
    if leaf in ("w_perm", "w_perm_inv"):  # FrEIA's soft permutation: an orthogonal matrix and its inverse
        base = name[: -len("_inv")] if leaf == "w_perm_inv" else name
        square = recipe_tensor(base + ".source", (shape[0], shape[0]))
        orthogonal = torch.linalg.qr(square.double())[0].float()
        return (orthogonal.T if leaf == "w_perm_inv" else orthogonal).reshape(shape)
    if leaf == "running_var":
        return 1 + ints.abs() * 2 ** -8
    if len(shape) <= 1 and leaf == "weight":  # LayerNorm / BatchNorm scales
        return 1 + ints * 2 ** -9
    if leaf in ("bias", "running_mean") or len(shape) == 0:
        return ints * 2 ** -9
    if leaf in ("positional_embedding", "class_embedding", "token_embedding") or "embedding" in leaf:
        return ints * 2 ** -8
    fan_in = shape[0] if leaf in ("proj", "text_projection") else math.prod(shape[1:])
    return ints / 64 / math.sqrt(fan_in)


def fill(module: torch.nn.Module, skip: tuple[str, ...] = ("num_batches_tracked", "attn_mask")) -> list[str]:
    """Overwrite every float parameter and buffer of `module` with its recipe; returns the names."""
    names = []
    with torch.no_grad():
        for name, tensor in module.state_dict(keep_vars=True).items():
            if name.rsplit(".", 1)[-1] in skip or not tensor.is_floating_point():
                continue
            tensor.copy_(recipe_tensor(name, tuple(tensor.shape)))
            names.append(name)
    return names


def recipe_images(seed: int, count: int, size: int) -> torch.Tensor:
    """Smooth random 'images' [count, 3, size, size] (already normalised model inputs)."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.randn(count, 3, size // 16, size // 16, generator=generator)
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
