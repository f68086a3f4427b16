"""NAGL with j abnormal references and with none of the normal kind (N0), against the official
forward (JasonKyng/NAGL@5466edf, models/model.py in test mode as utils/detection.py calls it) at
a_shot = 2 (n_shot = 1) and at n_shot = 0 (a_shot = 1 and 2): fixtures forward_k1_a2,
forward_n0_a1 and forward_n0_a2 (PROVENANCE.md: the inputs of forward_k1 plus a second abnormal
reference, masks fed as 0/255 as the code reads them)."""

from __future__ import annotations

import pytest
import torch

from nagl.model import downsample_mask
from official_fixtures import features, load
from test_nagl_official import official_model

CASES = ["forward_k1_a2", "forward_n0_a1", "forward_n0_a2"]


def official_forward(case: dict, reference_positions: str = "official") -> dict:
    """The case through this project's model as the adapter runs it: references first, then the query."""
    model = official_model(reference_positions=reference_positions)
    grid = tuple(case["grid"])
    abnormal = features(case, "abnormal")  # [1, A, N, C]
    patch_mask = downsample_mask(case["abnormal_mask"][0].float(), grid, model.mask_downsample)  # [A, N]
    if case["k"]:
        normal = features(case, "normal").reshape(1, -1, abnormal.shape[-1])
    else:  # N0: the abnormal references' own normal patches
        normal = model.normal_from_abnormal(abnormal[0], patch_mask)
    proxies = model.mine_residual_proxies(abnormal, patch_mask[None], normal, grid)
    out = model(features(case, "query"), normal, grid, residual_proxies=proxies, abnormal_only=not case["k"])
    return {**out, "patch_mask": patch_mask}


@pytest.mark.parametrize("name", CASES)
@torch.no_grad()
def test_forward_with_several_or_only_abnormal_references_matches_the_official_code(name):
    case = load(name)
    out = official_forward(case)
    assert torch.equal(out["patch_mask"], case["patch_mask"][0])
    # the tolerance of test_nagl_official.py (float32 summation order; a wrong rule moves far more)
    torch.testing.assert_close(out["score"], case["score"], atol=2e-6, rtol=0)


@torch.no_grad()
def test_with_two_references_the_official_position_layout_is_not_the_per_reference_one():
    """The code lays the RM positions out (h w n) against (n h w) keys: with one reference both
    layouts agree, with two only `reference_positions: official` reproduces it."""
    two = load("forward_k1_a2")
    torch.testing.assert_close(official_forward(two)["score"], two["score"], atol=2e-6, rtol=0)
    per_reference = official_forward(two, "per-reference")["score"]
    assert (per_reference - two["score"]).abs().max() > 1e-4
    one = load("forward_n0_a1")
    torch.testing.assert_close(official_forward(one, "per-reference")["score"], one["score"], atol=2e-6, rtol=0)


@torch.no_grad()
def test_n0_takes_exactly_the_unmasked_patches_of_the_abnormal_references():
    case = load("forward_n0_a2")
    model = official_model()
    abnormal = features(case, "abnormal")[0]
    patch_mask = case["patch_mask"][0]
    normal = model.normal_from_abnormal(abnormal, patch_mask)
    assert normal.shape[1] == int((patch_mask == 0).sum()) == 2 * 64 - 36
    assert torch.equal(normal[0], abnormal.reshape(-1, abnormal.shape[-1])[patch_mask.flatten() == 0])
    with pytest.raises(ValueError, match="no normal patch"):
        model.normal_from_abnormal(abnormal, torch.ones_like(patch_mask))
