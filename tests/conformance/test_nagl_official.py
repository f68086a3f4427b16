"""nagl/ and the harness against tensors computed by the official NAGL code (JasonKyng/NAGL@5466edf).

The fixtures (tests/fixtures/conformance/nagl/, PROVENANCE.md beside them) hold the official
outputs on fixed inputs and weights. Each test feeds the same inputs through this project's code
with the switches that reproduce the code (official-conv masks, the official position mask and
attention-mask layout, the code's image loss) and compares at float32 tolerance: a wrong formula
anywhere on the path fails here.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from benchmark.api.preprocessing import Preprocessing
from benchmark.run.maps import maps_at_original
from benchmark.features.pos_embed import dinov2_hub_resize
from nagl.model import NAGL, downsample_mask, from_official_state_dict, nearest_normal_index, sine_position_encoding
from nagl.train import TrainConfig, episode_loss
from official_fixtures import FIXTURES, features, load, official_weights

OFFICIAL_SWITCHES = {"mask_downsample": "official-conv", "position_mask": "official", "attention_mask_layout": "official"}
FORWARD_CASES = ["forward_k1", "forward_k2", "forward_k4", "forward_k1_448"]


def official_model(**switches) -> NAGL:
    model = NAGL(dim=384, heads=4, proxies=25, top_percent=1.0, **{**OFFICIAL_SWITCHES, **switches})
    model.load_state_dict(from_official_state_dict(official_weights()), strict=True)
    return model


def run_forward(case: dict, model: NAGL) -> dict:
    grid = tuple(case["grid"])
    query, normal, abnormal = features(case, "query"), features(case, "normal"), features(case, "abnormal")
    patch_mask = downsample_mask(case["abnormal_mask"][:, 0].float(), grid, model.mask_downsample)
    normal_bank = normal.reshape(1, -1, normal.shape[-1])
    residual_proxies = model.mine_residual_proxies(abnormal, patch_mask[:, None], normal_bank, grid)
    out = model(query, normal, grid, residual_proxies=residual_proxies)
    out.update(patch_mask=patch_mask, residual_proxies=residual_proxies,
               anomaly_proxies=model.learn_anomaly_proxies(query, normal_bank, residual_proxies, grid),
               query_nn_index=nearest_normal_index(query, normal_bank),
               abnormal_nn_index=nearest_normal_index(abnormal[:, 0], normal_bank))
    return out


def test_official_weights_load_strictly_and_the_parameter_count_matches():
    model = official_model()
    assert sum(p.numel() for p in model.parameters()) == 2_378_112
    with pytest.raises(ValueError, match="unknown official NAGL parameter"):
        from_official_state_dict({"rm_xx.weight": torch.zeros(1)})
    # a DDP checkpoint with its backbone: prefixes stripped, the backbone's keys dropped wherever they come
    plain = from_official_state_dict(official_weights())
    wrapped = {"module.vision_encoder.blocks.0.weight": torch.zeros(2),
               **{f"module.{k}": v for k, v in official_weights().items()}, "vision_encoder.norm.bias": torch.zeros(2)}
    assert from_official_state_dict(wrapped).keys() == plain.keys()


@pytest.mark.parametrize("name", FORWARD_CASES)
@torch.no_grad()
def test_forward_matches_the_official_code(name):
    case = load(name)
    out = run_forward(case, official_model())
    assert torch.equal(out["patch_mask"], case["patch_mask"][:, 0])
    assert torch.equal(out["query_nn_index"], case["query_nn_index"])
    assert torch.equal(out["abnormal_nn_index"], case["abnormal_nn_index"])
    # 2e-6: the float32 scores are in [0, 1], where the fixtures' CPU and this one may sum the
    # 384-channel cosines in another order (measured here: 1.13e-6, about 10 ulp at 1.0); a wrong
    # formula moves them by far more
    for key in ("s_n", "s_a", "score"):
        torch.testing.assert_close(out[key], case[key], atol=2e-6, rtol=0)
    torch.testing.assert_close(out["image_score"][0], case["image_score"], atol=2e-6, rtol=0)
    if "residual_proxies" in case:
        torch.testing.assert_close(out["residual_proxies"], case["residual_proxies"], atol=1e-5, rtol=0)
        torch.testing.assert_close(out["anomaly_proxies"], case["anomaly_proxies"], atol=1e-5, rtol=0)
    grid = tuple(case["grid"])
    squash = Preprocessing(size=case["input_size"][0])  # the harness's NAGL geometry: resize straight to the image
    [amap], _ = maps_at_original(out["score"].reshape(1, *grid), [tuple(case["original_size"])], squash, sigma=4.0)
    np.testing.assert_allclose(amap, case["anomaly_map"].numpy(), atol=1e-6, rtol=0)


@torch.no_grad()
def test_the_image_score_is_the_max_below_100_patches_and_the_top_10_mean_at_1024():
    small, large = load("forward_k1"), load("forward_k1_448")
    assert small["score"].shape[1] == 64 and large["score"].shape[1] == 1024
    torch.testing.assert_close(small["image_score"], small["score"].max(), atol=0, rtol=0)
    torch.testing.assert_close(large["image_score"], large["score"].topk(10).values.mean(), atol=1e-7, rtol=0)


@torch.no_grad()
def test_any_pixel_masks_differ_from_the_official_conv_where_the_fixture_says():
    case = load("forward_k1")
    any_pixel = downsample_mask(case["abnormal_mask"][:, 0].float(), (8, 8), "any-pixel")
    official = case["patch_mask"][0, 0]
    assert any_pixel.sum() == official.sum() == 20
    assert int((any_pixel[0] * official).sum()) == 15  # the README's 15 shared patches


@torch.no_grad()
def test_without_an_abnormal_reference_s_a_is_one_minus_s_n():
    case = load("forward_no_abnormal")
    out = official_model()(features(case, "query"), features(case, "normal"), tuple(case["grid"]))
    torch.testing.assert_close(out["s_n"], case["s_n"], atol=1e-6, rtol=0)
    torch.testing.assert_close(out["s_a"], case["s_a"], atol=1e-6, rtol=0)
    torch.testing.assert_close(out["score"], case["score"], atol=1e-6, rtol=0)
    torch.testing.assert_close(out["image_score"][0], case["image_score"], atol=1e-6, rtol=0)


def official_names(model: NAGL) -> dict[str, str]:
    """This module's parameter name -> the official one."""
    ours = from_official_state_dict(official_weights())
    official = [k for k in official_weights() if k != "mask_downsample.weight"]
    mapping = dict(zip(ours, official))
    assert set(mapping) == {name for name, _ in model.named_parameters()}
    return mapping


def train_step(**switches):
    case = load("train_step")
    model = official_model(**switches).train()
    grid = tuple(case["grid"])
    patch_mask = downsample_mask(case["abnormal_mask"][:, 0].float(), grid, model.mask_downsample)
    output = model(features(case, "query"), features(case, "normal"), grid, features(case, "abnormal"), patch_mask[:, None])
    config = TrainConfig(k_normal=1, image_loss="code")
    loss, parts = episode_loss(output, case["query_mask"].float(), case["query_label"], grid, config)
    loss.backward()
    grads = {official: parameter.grad for ours, official in official_names(model).items()
             for name, parameter in model.named_parameters() if name == ours}
    return case, output, loss, parts, patch_mask, grads


def test_one_training_step_matches_the_official_losses_and_gradients():
    case, output, loss, parts, patch_mask, grads = train_step()
    assert torch.equal(patch_mask, case["patch_mask"][:, 0])
    for key in ("s_n", "s_a", "score"):
        torch.testing.assert_close(output[key].detach(), case[key], atol=1e-6, rtol=0)
    assert parts["image_loss"] == pytest.approx(case["loss_i"].item(), abs=1e-6)
    assert parts["pixel_loss"] == pytest.approx(case["loss_p"].item(), abs=1e-6)
    assert loss.item() == pytest.approx(case["loss"].item(), abs=1e-6)
    for key, expected in case["grad_full"].items():
        torch.testing.assert_close(grads[key], expected, atol=1e-8, rtol=0, msg=key)
    for key in case["grad_sketch_keys"]:
        grad = grads[key].double()
        torch.testing.assert_close(grad[case["grad_rows_index"][key]].float(), case["grad_rows"][key], atol=1e-8, rtol=0)
        torch.testing.assert_close(grad.sum(1).float(), case["grad_row_sum"][key], atol=1e-8, rtol=1e-5)
        torch.testing.assert_close(grad.sum(0).float(), case["grad_col_sum"][key], atol=1e-8, rtol=1e-5)
        assert grad.norm().item() == pytest.approx(case["grad_fro_norm"][key], rel=1e-5)
        assert grad.abs().sum().item() == pytest.approx(case["grad_abs_sum"][key], rel=1e-5)


def test_the_per_sample_attention_layout_is_a_real_departure_in_training():
    case, output, *_ = train_step(attention_mask_layout="per-sample")
    assert (output["s_a"].detach() - case["s_a"]).abs().max() > 1e-3


def test_the_official_attention_mask_layout_hands_out_the_codes_masks():
    case = load("train_step")
    model = official_model()
    patches = case["patch_mask"][:, 0]
    batch, heads = patches.shape[0], model.heads
    distinct = torch.zeros(batch, patches.shape[1])
    distinct[torch.arange(batch), torch.arange(batch)] = 1  # sample b marks patch b alone
    mask = model.attention_mask(distinct, queries=3).reshape(batch, heads, 3, -1)
    received = (mask[:, :, 0] == 0).float().argmax(dim=-1)  # the only unmasked patch names the source sample
    assert torch.equal(received, case["attn_mask_source"])
    model.attention_mask_layout = "per-sample"
    own = (model.attention_mask(distinct, 3).reshape(batch, heads, 3, -1)[:, :, 0] == 0).float().argmax(-1)
    assert torch.equal(own, torch.arange(batch)[:, None].expand(-1, heads))


def test_sine_position_encoding_matches_detr_as_the_code_calls_it():
    case = load("sine_position_encoding")
    grid, dim = tuple(case["grid"]), case["dim"]
    torch.testing.assert_close(sine_position_encoding(*grid, dim)[0], case["pos_no_mask"], atol=1e-6, rtol=0)
    for key in ("a", "b"):
        padding = case[f"mask_{key}"][None]
        torch.testing.assert_close(sine_position_encoding(*grid, dim, padding)[0], case[f"pos_mask_{key}"], atol=1e-6, rtol=0)


def test_dinov2_position_embedding_is_resized_as_the_hub_model_does():
    case = load("dinov2_pos_embed_subset")
    source = case["pos_embed_int8"].float() * case["pos_scale"]
    grid = (case["image_size"][0] // case["patch_size"],) * 2
    resized = dinov2_hub_resize(source, grid, offset=case["interpolate_offset"], antialias=case["interpolate_antialias"])
    torch.testing.assert_close(resized, case["pos_embed_out"], atol=1e-6, rtol=0)
    # timm's load-time resize (antialiased, to an exact size) is measurably different
    from timm.layers import resample_abs_pos_embed

    timm_resized = resample_abs_pos_embed(source, new_size=list(grid), num_prefix_tokens=1)
    assert (timm_resized - case["pos_embed_out"]).abs().max() > 0.1


def test_the_dinov2_backbone_adds_the_hub_resized_embedding():
    from benchmark.features.backbones import build_backbone
    from benchmark.features.weights import WeightStore

    case = load("dinov2_pos_embed_subset")
    handle = build_backbone("dinov2_vits14", WeightStore(), input_size=448, allow_random=True)
    model = handle.module.model
    with torch.no_grad():
        model.pos_embed.zero_()
        model.cls_token.zero_()
        model.pos_embed[..., case["channels"]] = case["pos_embed_int8"].float() * case["pos_scale"]
        tokens = model._pos_embed(torch.zeros(1, 32, 32, model.embed_dim))
    torch.testing.assert_close(tokens[..., case["channels"]], case["pos_embed_out"], atol=1e-6, rtol=0)
    assert handle.pos_embed == "dinov2_hub" and "pos-dinov2_hub" in handle.id


def test_official_protocol_references_match_the_codes_choice(tmp_path):
    """The fixture's fake category, laid out on disk, through the harness's `official` protocol."""
    from benchmark.data.references import make_manifest
    from benchmark.data.settings import parse_setting
    from official_fixtures import fake_official_category

    table, root = fake_official_category(tmp_path)
    expected = pd.read_csv(FIXTURES / "references_official.csv", dtype=str, keep_default_na=False)
    for (seed, n_shot), rows in expected.groupby(["seed", "n_shot"]):
        setting = parse_setting(f"N{n_shot}+A1")
        manifest = make_manifest(table, root, "fakecat", setting, int(seed), "official", 4, 127, 1)
        normal = rows[rows.role == "normal"].sort_values("rank").reference_file.tolist()
        assert manifest[manifest.role == "normal"].path.tolist() == normal
        per_type = dict(zip(rows[rows.role == "abnormal"].query_type, rows[rows.role == "abnormal"].reference_file))
        ours = manifest[manifest.role == "abnormal"]
        assert dict(zip(ours.defect, ours.path)) == per_type
        assert set(ours["mask"]) == set(rows[rows.role == "abnormal"].mask_file)
        # every good query of one (category, setting, seed) shares one abnormal reference of a
        # type among the code's candidates
        assigned = set(manifest[manifest.role == "assignment"].defect)
        candidates = set(rows[rows.role == "abnormal_candidate"].reference_file)
        assert len(assigned) == 1 and per_type[assigned.pop()] in candidates
