"""ResAD's training losses against closed forms computed here in float64 from the official
code's definitions (losses/loss.py, losses/focal_loss.py, train.py's train() at xcyao00/ResAD
0afc30e): each case is built so that every branch and every boundary comparison decides the
value (rows exactly on a shell or boundary, chunks with and without normal rows)."""

import math

import numpy as np
import pytest
import torch

from baselines.resad_model import FlowSchedule, ResADModel, code_focal_loss, constraint_loss, flow_loss


def softplus(x):
    return math.log1p(math.exp(x))


def log_likelihood(z, log_jacobian):  # the code's get_logp / C
    z = np.asarray(z, dtype=float)
    return (z.shape[1] * -0.5 * math.log(2 * math.pi) - 0.5 * (z ** 2).sum(axis=1) + np.asarray(log_jacobian)) / z.shape[1]


def focal(p_normal, p_abnormal, labels, smooth=1e-5):
    """FocalLoss(gamma=2, smooth) on [p_n, p_a] rows: one-hot clamped to [smooth, 1 - smooth], in float32."""
    total = 0.0
    for pn, pa, label in zip(p_normal, p_abnormal, labels):
        high, low = float(np.float32(1 - smooth)), float(np.float32(smooth))  # the code's FloatTensor one-hot
        target = [high, low] if label == 0 else [low, high]
        pt = target[0] * pn + target[1] * pa + smooth
        total += -((1 - pt) ** 2) * math.log(pt)
    return total / len(labels)


def norm_for_radius(r):  # radius = sqrt(|e| + 1) - 1
    return (r + 1) ** 2 - 1


# ------------------------------------------------------------------ constraint (shell) loss
def rows(*norms):
    return torch.tensor([[n, 0.0] for n in norms], dtype=torch.float64)


def test_normal_rows_on_the_shell_edges_cost_nothing_and_outside_cost_the_weighted_barrier():
    # radius exactly r_max (norm 3 -> radius 1) and exactly r_min = 0.99 r_max: inside, loss 0
    assert constraint_loss(rows(3.0), torch.zeros(1), r_max=1.0).item() == 0.0
    assert constraint_loss(rows(3.0), torch.zeros(1), r_max=1 / 0.99).item() == 0.0
    # beyond r_max by 0.5, below r_min by 0.2: softplus(x) * exp(x) each, averaged per side
    outer, inner = norm_for_radius(1.5), norm_for_radius(0.79)
    loss = constraint_loss(rows(outer, inner, 3.0), torch.zeros(3), r_max=1.0).item()
    assert loss == pytest.approx(softplus(0.5) * math.exp(0.5) + softplus(0.2) * math.exp(0.2), rel=1e-9)


def test_anomalous_rows_set_the_shell_keep_their_input_and_are_pushed_past_the_boundary():
    # one anomaly at radius 1 -> r_max = min(0.9 x 1, 1.0) and the push boundary r_max + 0.1 = 1.0:
    # on it, no push; the normal row sits in the shell [0.891, 0.9]
    anomalous = torch.tensor([0.0, 1.0])
    embedded = torch.tensor([[norm_for_radius(0.895), 0.0], [3.0, 0.0]], dtype=torch.float64)
    assert constraint_loss(embedded, anomalous, embedded.clone(), r_max=1.0).item() == pytest.approx(0.0, abs=1e-12)
    assert constraint_loss(embedded, anomalous, embedded.clone()).item() > 0.5  # r_max 0.4 by default: 0.895 is outside
    # an anomaly at radius 0.5: r_max = 0.45, r_min = 0.4455, boundary 0.55; the normal row at
    # radius 0.3 is below r_min; the anomaly differs from its target (MSE + 1 - cos)
    embedded = torch.tensor([[norm_for_radius(0.3), 0.0], [norm_for_radius(0.5), 0.0]], dtype=torch.float64)
    target = torch.tensor([[0.0, 0.0], [norm_for_radius(0.5), 1.0]], dtype=torch.float64)
    a = norm_for_radius(0.5)
    mse = (0.0 + 1.0) / 2
    cosine = a / math.sqrt(a * a + 1)
    expected = (softplus(0.4455 - 0.3) * math.exp(0.4455 - 0.3) + mse + (1 - cosine)
                + softplus(0.05) * math.exp(0.05))
    assert constraint_loss(embedded, anomalous, target, r_max=1.0).item() == pytest.approx(expected, rel=1e-9)
    # without a target, only the shell term of the normal row
    no_target = constraint_loss(embedded, anomalous, r_max=1.0).item()
    assert no_target == pytest.approx(softplus(0.4455 - 0.3) * math.exp(0.4455 - 0.3), rel=1e-9)


# ------------------------------------------------------------------ focal loss
def test_code_focal_loss_is_the_smoothed_focal_loss_of_the_code():
    probabilities = torch.tensor([[0.7, 0.3], [0.2, 0.8], [0.999999, 1e-6], [0.4, 0.6]], dtype=torch.float64)
    labels = torch.tensor([0, 1, 1, 0])
    expected = focal(probabilities[:, 0].tolist(), probabilities[:, 1].tolist(), labels.tolist())
    assert code_focal_loss(probabilities, labels).item() == pytest.approx(expected, rel=1e-12)
    # all normal labels: two classes all the same (one_hot must not infer one class)
    zeros = torch.zeros(2, dtype=torch.long)
    assert code_focal_loss(probabilities[:2], zeros).item() == pytest.approx(
        focal([0.7, 0.2], [0.3, 0.8], [0, 0]), rel=1e-12)
    # a confident right answer: the smoothing alone decides the (tiny) loss
    sure = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    assert code_focal_loss(sure, torch.zeros(1, dtype=torch.long)).item() == pytest.approx(
        focal([1.0], [0.0], [0]), rel=1e-9)


# ------------------------------------------------------------------ flow loss
Z = [[0.1, -0.2], [1.5, 0.3], [2.0, 2.5], [0.9, 1.2], [0.2, 0.1], [3.0, -1.0]]
LOG_JACOBIAN = [0.3, -0.1, 0.5, 0.2, -0.4, 0.8]
ANOMALOUS = [0, 0, 0, 1, 1, 1]


def schedule(stage2_loss="code", start=-2.0):
    s = FlowSchedule(stage2_loss=stage2_loss, boundary_beta=0.34, boundary_margin=0.3, push_pull_weight=0.5, margin=0.2)
    s.ensure_levels(2)
    s.boundaries[1] = torch.tensor(start, dtype=torch.float64)
    return s


def call(s, first_stage, z=Z, log_jacobian=LOG_JACOBIAN, anomalous=ANOMALOUS):
    return flow_loss(s, 1, torch.tensor(z, dtype=torch.float64), torch.tensor(log_jacobian, dtype=torch.float64),
                     torch.tensor(anomalous, dtype=torch.float64), first_stage).item()


def moved_boundary(logp, anomalous, start):
    normal = np.sort(logp[np.asarray(anomalous) == 0])
    return start * 0.9 + 0.1 * normal[int(len(normal) * 0.34)]


def test_the_first_stage_fits_every_row_to_the_gaussian_and_moves_the_boundary():
    s = schedule()
    logp = log_likelihood(Z, LOG_JACOBIAN)
    assert call(s, True) == pytest.approx(np.mean([softplus(-v) for v in logp]), rel=1e-12)
    assert s.boundaries[1].item() == pytest.approx(moved_boundary(logp, ANOMALOUS, -2.0), rel=1e-12)
    assert s.boundaries[0].item() == 0.0  # only the chunk's level moves


def test_the_second_stage_code_loss_with_both_boundary_terms():
    s = schedule(start=-2.0)
    logp = log_likelihood(Z, LOG_JACOBIAN)
    logp_a = log_likelihood(np.asarray(Z) - 1, LOG_JACOBIAN)
    b_n = moved_boundary(logp, ANOMALOUS, -2.0)
    b_a = b_n - 0.3
    normal, abnormal = logp[:3], logp[3:]
    pull = [v for v in normal if v <= b_n]
    push = [v for v in abnormal if v >= b_a]
    assert pull and push and len(pull) < 3 and len(push) < 3  # both terms decide, and both comparisons
    probabilities = np.exp(np.stack([logp, logp_a], 1))
    probabilities /= probabilities.sum(1, keepdims=True)
    expected = (np.mean([softplus(-v) for v in normal]) + np.mean([softplus(-v) for v in logp_a[3:]])
                + focal(probabilities[:, 0], probabilities[:, 1], ANOMALOUS)
                + 0.5 * (np.mean([softplus(b_n - v) for v in pull]) + np.mean([softplus(v - b_a) for v in push])))
    assert call(s, False) == pytest.approx(expected, rel=1e-10)


def test_rows_exactly_on_the_boundaries_are_pulled_and_pushed():
    """The code's `<= b_n` and `>= b_a`: a row on a boundary takes softplus(0) = ln 2."""
    s = schedule()
    s.momentum = 0.0  # the boundary becomes the chosen normal log-likelihood itself
    logp = log_likelihood(Z, LOG_JACOBIAN)
    b_n = np.sort(logp[:3])[1]
    # a normal row on b_n; an anomalous row placed on b_a = b_n - 0.3 by its log-Jacobian
    z = [Z[0], Z[1], Z[2], [0.0, 0.0]]
    on_b_a = 2 * (b_n - 0.3) - 2 * -0.5 * math.log(2 * math.pi)
    log_jacobian = LOG_JACOBIAN[:3] + [on_b_a]
    anomalous = [0, 0, 0, 1]
    logp = log_likelihood(z, log_jacobian)
    assert logp[3] == pytest.approx(b_n - 0.3, abs=1e-12)
    logp_a = log_likelihood(np.asarray(z) - 1, log_jacobian)
    probabilities = np.exp(np.stack([logp, logp_a], 1))
    probabilities /= probabilities.sum(1, keepdims=True)
    pull = [v for v in logp[:3] if v <= b_n + 1e-12]
    expected = (np.mean([softplus(-v) for v in logp[:3]]) + softplus(-logp_a[3])
                + focal(probabilities[:, 0], probabilities[:, 1], anomalous)
                + 0.5 * (np.mean([softplus(b_n - v) for v in pull]) + softplus(logp[3] - (b_n - 0.3))))
    assert len(pull) == 2
    assert call(s, False, z, log_jacobian, anomalous) == pytest.approx(expected, rel=1e-9)


def test_an_all_anomalous_chunk_has_no_normal_term_and_an_all_normal_one_fits_the_gaussian():
    logp = log_likelihood(Z[3:], LOG_JACOBIAN[3:])
    logp_a = log_likelihood(np.asarray(Z[3:]) - 1, LOG_JACOBIAN[3:])
    s = schedule(start=-50.0)  # far below: nothing is pushed (b_a) or pulled (no normal rows)
    probabilities = np.exp(np.stack([logp, logp_a], 1))
    probabilities /= probabilities.sum(1, keepdims=True)
    expected = (np.mean([softplus(-v) for v in logp_a]) + focal(probabilities[:, 0], probabilities[:, 1], [1, 1, 1])
                + 0.5 * np.mean([softplus(v - (-50.3)) for v in logp]))
    assert call(s, False, Z[3:], LOG_JACOBIAN[3:], [1, 1, 1]) == pytest.approx(expected, rel=1e-10)
    assert s.boundaries[1].item() == -50.0  # no normal row: the moving boundary stays where it was
    normal_only = log_likelihood(Z[:3], LOG_JACOBIAN[:3])
    assert call(schedule(), False, Z[:3], LOG_JACOBIAN[:3], [0, 0, 0]) == pytest.approx(
        np.mean([softplus(-v) for v in normal_only]), rel=1e-12)


def test_the_papers_stage2_loss_is_a_margin_hinge_below_the_normal_mean():
    logp = log_likelihood(Z, LOG_JACOBIAN)
    hinge = np.mean([softplus(v - (logp[:3].mean() - 0.2)) for v in logp[3:]])
    assert call(schedule("paper"), False) == pytest.approx(np.mean([softplus(-v) for v in logp[:3]]) + hinge, rel=1e-12)
    assert call(schedule("paper"), False, Z[3:], LOG_JACOBIAN[3:], [1, 1, 1]) == 0.0  # no normal rows: nothing to hinge on


# ------------------------------------------------------------------ flows
def test_a_new_model_draws_soft_permutations_and_a_model_for_loading_skips_them():
    """A model to train starts from FrEIA's soft (random orthogonal) permutations, as the code;
    one built for load_state_dict takes hard ones (they are overwritten, and soft ones at 1024
    channels take long to draw)."""
    np.random.seed(0)
    trained = ResADModel([8], coupling_layers=2, clamp=1.9, position_dim=8)
    loading = ResADModel([8], coupling_layers=2, clamp=1.9, position_dim=8, for_loading=True)

    def is_permutation(block):
        w = block.w_perm.detach().reshape(8, 8)
        return bool(((w == 0) | (w == 1)).all())

    assert not any(is_permutation(b) for b in trained.flows[0].module_list)
    assert all(is_permutation(b) for b in loading.flows[0].module_list)
    assert len(trained.flows[0].module_list) == 2
