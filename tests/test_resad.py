"""ResAD on a small configuration: mechanics, training, reload, batch invariance, config hash."""

import numpy as np
import pytest
import torch

from baselines.resad import ResADAdapter
from baselines.resad_model import constraint_loss, position_encoding, squared_residuals
from benchmark.api import ImageBatch, ReferenceSet
from benchmark.data.mvtec import read_mvtec
from benchmark.features.service import FeatureService
from benchmark.data.settings import parse_setting
from benchmark.features.weights import WeightStore
from stored_features import scored
from tests.contexts import run_context
from benchmark.run.checkpoints import fit_source
from benchmark.data.batches import training_data

TINY = {"backbone": "lite0_imagenet", "image_size": 64, "coupling_layers": 2, "position_dim": 16,
        "training": {"epochs": 6, "first_stage_epochs": 1, "batch_size": 6, "learning_rate": 3e-3,
                     "milestones": [100], "flow_rows_per_step": 512, "train_reference_shot": 2}}


def adapter(tmp_path, **overrides):
    store = WeightStore(tmp_path / "w")
    context = run_context(torch.device("cpu"), store, FeatureService(store, torch.device("cpu")), tmp_path)
    return ResADAdapter({**TINY, **overrides}, context)


def batch(images, cls=ImageBatch):
    return cls(images, [f"r{float(images[i].sum()):.5f}" for i in range(len(images))], [(70, 90)] * len(images), [{}] * len(images))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, synthetic_root):
    tmp = tmp_path_factory.mktemp("resad")
    model = adapter(tmp)
    domain = training_data("objects", read_mvtec(synthetic_root / "objects"))
    checkpoint = fit_source(model, domain, tmp / "ckpt", parse_setting("N1"))
    return model, checkpoint, domain, tmp


def test_residuals_are_squared_differences_to_the_cosine_nearest_reference():
    feature = torch.tensor([[[[1.0]], [[0.0]]]])  # one patch, 2 channels: (1, 0)
    bank = torch.tensor([[10.0, 1.0], [0.0, 5.0]])  # cosine picks (10, 1), L2 would pick (0, 5)
    (residual,) = squared_residuals([feature], [bank])
    assert torch.allclose(residual[0, :, 0, 0], torch.tensor([81.0, 1.0]))


def test_shell_loss_is_zero_inside_the_shell_and_grows_outside():
    radius_to_norm = lambda r: (r + 1) ** 2 - 1  # invert r = sqrt(|e| + 1) - 1
    inside = torch.tensor([[radius_to_norm(0.398), 0.0]])
    assert constraint_loss(inside, torch.zeros(1)).item() == 0.0
    far = torch.tensor([[radius_to_norm(1.0), 0.0]])
    assert constraint_loss(far, torch.zeros(1)).item() > 0.5


def test_anomalous_rows_inside_the_push_boundary_get_a_gradient():
    """The branch that pushes anomalies out is alive: r_max is 0.9 x the smallest anomalous
    radius, and anomalies are pushed beyond r_max + 0.1, which includes that smallest one."""
    radius_to_norm = lambda r: (r + 1) ** 2 - 1
    normal = torch.tensor([[radius_to_norm(0.3), 0.0]])
    anomalous = torch.tensor([[radius_to_norm(0.35), 0.0]], requires_grad=True)
    loss = constraint_loss(torch.cat([normal, anomalous]), torch.tensor([0.0, 1.0]), torch.cat([normal, anomalous]).detach())
    loss.backward()
    assert anomalous.grad[0, 0] < 0  # descending the loss grows the anomalous radius


def test_position_encoding_shape_and_distinct_positions():
    encoding = position_encoding(16, 3, 4)
    assert encoding.shape == (16, 3, 4)
    flat = encoding.reshape(16, -1).T
    assert len({tuple(row.tolist()) for row in flat}) == 12


def test_training_lowers_the_loss_and_reloads_to_identical_scores(trained):
    model, checkpoint, domain, tmp = trained
    history = model.training_history
    assert len(history) == 6 and history[-1]["loss"] < 0.8 * history[1]["loss"]  # within the second stage
    torch.manual_seed(1)
    refs, queries = torch.randn(1, 3, 64, 64), torch.randn(4, 3, 64, 64)
    model.set_references("washer", batch(refs, ReferenceSet), None)
    prediction = scored(model, batch(queries))
    assert prediction.anomaly_maps[0].shape == (70, 90) and np.isfinite(prediction.image_scores).all()
    again = adapter(tmp)
    assert fit_source(again, domain, tmp / "ckpt", parse_setting("N4")) == checkpoint  # one model for every k
    again.set_references("washer", batch(refs, ReferenceSet), None)
    np.testing.assert_array_equal(scored(again, batch(queries)).image_scores, prediction.image_scores)
    assert model.describe()["parameters_trainable"] == sum(p.numel() for p in model.model.parameters())


def test_batch_of_one_equals_batch_of_four(trained):
    model = trained[0]
    torch.manual_seed(2)
    model.set_references("tablet", batch(torch.randn(2, 3, 64, 64), ReferenceSet), None)
    queries = torch.randn(4, 3, 64, 64)
    together = scored(model, batch(queries)).image_scores
    single = [scored(model, batch(queries[i:i + 1])).image_scores[0] for i in range(4)]
    np.testing.assert_allclose(together, single, rtol=1e-4, atol=1e-5)


def test_the_config_hash_changes_when_a_training_key_changes(trained):
    _, checkpoint, domain, tmp = trained
    other = adapter(tmp, training={**TINY["training"], "epochs": 1, "margin": 0.5})
    assert fit_source(other, domain, tmp / "ckpt", parse_setting("N1")) != checkpoint


def test_two_trainings_after_different_global_numpy_states_give_identical_weights(tmp_path, synthetic_root):
    """FrEIA draws its soft permutations from numpy's global RNG, which other cells and seeds move:
    the training seed alone must decide the weights (trainer version 4)."""
    domain = training_data("objects", read_mvtec(synthetic_root / "objects"))
    weights = []
    for index, global_seed in enumerate((1, 2)):
        np.random.seed(global_seed)
        model = adapter(tmp_path / str(index), training={**TINY["training"], "epochs": 1})
        checkpoint = fit_source(model, domain, tmp_path / str(index) / "ckpt", parse_setting("N1"))
        weights.append(torch.load(checkpoint, weights_only=True)["state_dict"])
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


@pytest.mark.parametrize("cap", [None, 1])
def test_an_epoch_takes_every_full_batch_unless_capped(tmp_path, synthetic_root, cap):
    """Stage 1 runs over train/good, stage 2 over train and test, in full batches (the code's
    drop_last); batches_per_epoch (the rehearsal's) keeps the first of them."""
    from unittest import mock

    domain = training_data("objects", read_mvtec(synthetic_root / "objects"))
    model = adapter(tmp_path, training={**TINY["training"], "epochs": 2, "batches_per_epoch": cap})
    with mock.patch.object(ResADAdapter, "_train_step", return_value=0.0) as step:
        fit_source(model, domain, tmp_path / "ckpt", parse_setting("N1"))
    table = domain.table
    normals = ((table.split == "train") & (table.label == 0)).sum()
    full = [normals // 6, len(table) // 6]
    assert step.call_count == (2 if cap else sum(full)) and min(full) > 1
