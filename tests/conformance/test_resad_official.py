"""ResAD against the official code (xcyao00/ResAD@0afc30e): residuals, position encoding, the
constraintor's loss and gradients, and the flows' training (stage 1 and stage 2, one optimizer
step per row chunk, moving boundaries), on inputs and recipe weights (recipe_weights.py) that the
official functions were run on."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from baselines.resad_model import FlowSchedule, ResADModel, constraint_loss, position_encoding, squared_residuals, train_flows
from recipe_weights import fill, recipe_tensor

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "conformance" / "resad" / "resad_official.pt"


@pytest.fixture(scope="module")
def case():
    return torch.load(FIXTURE, weights_only=True)


def residuals(case):
    features = [f.float() * case["feature_scale"] for f in case["features_int8"]]
    banks = {k: [r.float() * case["feature_scale"] for r in v] for k, v in case["references_int8"].items()}
    per_image = [squared_residuals([f[i:i + 1] for f in features], banks[name]) for i, name in enumerate("ab")]
    return [torch.cat([levels[level] for levels in per_image]) for level in range(len(features))]


def model_with_official_weights(case) -> ResADModel:
    model = ResADModel(case["channels"], case["coupling_layers"], case["clamp_alpha"], case["pos_embed_dim"])
    with torch.no_grad():  # official MultiScaleConv names its levels l1_proj, l2_proj, l3_proj
        for name, tensor in model.constraintor.state_dict(keep_vars=True).items():
            level, rest = name.split(".", 1)
            if tensor.is_floating_point():
                tensor.copy_(recipe_tensor(f"l{int(level) + 1}_proj.{rest}", tuple(tensor.shape)))
    for level, flow in enumerate(model.flows):
        assert fill(flow) == case["flow_keys"][level]
    return model


def test_position_encoding_matches_the_code(case):
    torch.testing.assert_close(position_encoding(16, 4, 6), case["position_encoding"], atol=0, rtol=0)


def test_residuals_are_the_codes_squared_differences_to_the_cosine_nearest_reference(case):
    for ours, official in zip(residuals(case), case["residuals"]):
        torch.testing.assert_close(ours, official, atol=0, rtol=0)


def test_the_constraintor_loss_and_gradients_match_the_code(case):
    model = model_with_official_weights(case).train()
    inputs = residuals(case)
    embedded = model.constrain(inputs)
    loss = 0
    for level, (e, target) in enumerate(zip(embedded, inputs)):
        mask = F.interpolate(case["masks"], size=e.shape[-2:], mode="nearest").reshape(-1)
        rows = lambda x: x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])  # noqa: E731
        level_loss = constraint_loss(rows(e), mask, rows(target))
        assert level_loss.item() == pytest.approx(case[f"constraint_loss_level{level}"].item(), rel=1e-5)
        loss = loss + level_loss
    loss.backward()
    grads = {f"l{int(n.split('.')[0]) + 1}_proj.{n.split('.', 1)[1]}": p.grad for n, p in model.constraintor.named_parameters()}
    # a conv bias before BatchNorm has zero gradient in exact arithmetic: its float32 values are
    # rounding noise, so the absolute tolerance follows the largest gradient of all
    scale = max(g.abs().max().item() for g in case["constraint_grads"].values())
    for name, expected in case["constraint_grads"].items():
        torch.testing.assert_close(grads[name], expected, atol=1e-6 * scale, rtol=1e-4, msg=lambda m: f"{name}: {m}")
    for ours, official in zip(embedded, case["embedded"]):
        torch.testing.assert_close(ours.detach(), official, atol=1e-5, rtol=1e-5)


def flows_trained_as_the_code(case, updates: str):
    model = model_with_official_weights(case)
    optimizer = torch.optim.Adam(model.flows.parameters(), lr=case["lr"], weight_decay=case["weight_decay"])
    schedule = FlowSchedule(rows_per_step=case["chunk_rows"], updates=updates, stage2_loss="code",
                            boundary_beta=case["pos_beta"], boundary_margin=case["margin_tau"],
                            push_pull_weight=case["bgspp_lambda"])
    results = []
    for stage in (1, 2):
        torch.manual_seed(99 + stage)  # the fixture's seed before each call of the code's train()
        total, steps = train_flows(model, [e.clone() for e in case["embedded"]], case["masks"], optimizer, schedule,
                                   first_stage=stage == 1)
        results.append((total, steps, [float(b) for b in schedule.boundaries],
                        [{k: v.clone() for k, v in f.state_dict().items()} for f in model.flows]))
    return results


def test_flow_training_steps_once_per_chunk_and_matches_the_codes_losses_and_weights(case):
    for stage, (total, steps, boundaries, states) in enumerate(flows_trained_as_the_code(case, "per-chunk"), start=1):
        assert steps == case[f"stage{stage}_steps"] == 3  # 128 rows of level 1 in chunks of 40; levels 2-3 too small
        assert total == pytest.approx(case[f"stage{stage}_loss_total"], rel=1e-5)
        assert boundaries == pytest.approx(case[f"stage{stage}_boundaries"], rel=1e-5, abs=1e-7)
        for ours, official in zip(states, case[f"stage{stage}_flow_state"]):
            for key, value in official.items():
                torch.testing.assert_close(ours[key], value, atol=1e-5, rtol=1e-4, msg=lambda m: f"stage {stage} {key}: {m}")


def test_one_step_per_batch_is_a_different_schedule(case):
    _, steps, _, states = flows_trained_as_the_code(case, "per-batch")[0]
    assert steps == 3  # one per level, the coarse levels included
    coarse = case["stage1_flow_state"][2]
    assert any(not torch.allclose(states[2][k], v) for k, v in coarse.items())  # level 3 trains here, not in the code
