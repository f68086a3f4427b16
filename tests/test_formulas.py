"""Formulas that no official fixture covers, each checked against an independent computation
(numpy brute force, scipy, scikit-learn, torch's own optimisers): a wrong formula fails here."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from stored_features import keyed_batch, keyed_references, scored, stored_context


def _unit_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return (1 + a @ b.T) / 2


def _maps_like_the_harness(scores: np.ndarray, size: tuple[int, int], sigma: float) -> np.ndarray:
    resized = F.interpolate(torch.from_numpy(scores)[None, None].float(), size=size, mode="bilinear", align_corners=False)[0, 0]
    return gaussian_filter(resized.numpy(), sigma)


@pytest.fixture
def nn_features():
    rng = np.random.default_rng(0)
    grid, dim = 4, 6
    maps = {name: [torch.from_numpy(rng.normal(size=(dim, grid, grid)).astype(np.float32))]
            for name in ("n0", "n1", "a0", "q0", "q1")}
    mask = torch.zeros(32, 32)
    mask[0:10, 0:12] = 1  # any-pixel: patches (0, 0), (0, 1), (1, 0), (1, 1)
    return maps, mask


def _patches(maps, key):
    return maps[key][0].reshape(maps[key][0].shape[0], -1).T.numpy()  # [h*w, C], row-major positions


@pytest.mark.parametrize("variant", ["normal", "abnormal", "normal+abnormal"])
def test_nn_ablation_scores_by_brute_force(nn_features, variant):
    from nagl.ablation import NNAblationAdapter

    maps, mask = nn_features
    adapter = NNAblationAdapter({"variant": variant, "backbone": "lite0_imagenet", "input_size": 32, "top_percent": 25.0,
                                 "blur_sigma": 1.5}, stored_context(maps))
    abnormal = keyed_references(["a0"], (32, 32))
    abnormal.masks = mask[None]
    adapter.set_references("c", keyed_references(["n0", "n1"], (32, 32)), abnormal)
    prediction = scored(adapter, keyed_batch(["q0", "q1"], (40, 48)))
    bank = np.concatenate([_patches(maps, "n0"), _patches(maps, "n1")])
    anomalous = _patches(maps, "a0")[[0, 1, 4, 5]]
    for i, key in enumerate(["q0", "q1"]):
        query = _patches(maps, key)
        to_normal = 1 - _unit_cosine(query, bank).max(axis=1)
        to_abnormal = _unit_cosine(query, anomalous).max(axis=1)
        scores = {"normal": to_normal, "abnormal": to_abnormal, "normal+abnormal": (to_normal + to_abnormal) / 2}[variant]
        assert prediction.image_scores[i] == pytest.approx(np.sort(scores)[::-1][:4].mean(), abs=1e-6)  # 25 % of 16
        np.testing.assert_allclose(prediction.anomaly_maps[i], _maps_like_the_harness(scores.reshape(4, 4), (40, 48), 1.5),
                                   atol=1e-6)


def test_nn_ablation_needs_an_abnormal_reference_with_anomalous_patches(nn_features):
    from nagl.ablation import NNAblationAdapter
    from benchmark.errors import GadbenchError

    maps, _ = nn_features
    adapter = NNAblationAdapter({"backbone": "lite0_imagenet", "input_size": 32}, stored_context(maps))
    with pytest.raises(GadbenchError, match="needs abnormal references"):
        adapter.set_references("c", keyed_references(["n0"], (32, 32)), None)
    empty = keyed_references(["a0", "n1"], (32, 32))
    empty.masks = torch.zeros(2, 32, 32)
    empty.samples = [{"path": "good/a0.png"}, {}]  # a sample without a path is shown as '?'
    with pytest.raises(GadbenchError, match=r"^good/a0\.png, \?: abnormal reference mask has no anomalous patch$"):
        adapter.set_references("c", keyed_references(["n0"], (32, 32)), empty)
    full = keyed_references(["a0"], (32, 32))
    full.masks, full.samples = torch.ones(1, 32, 32), [{"path": "cut/a0.png"}]
    with pytest.raises(GadbenchError, match=r"^cut/a0\.png: N0 takes the normal patches from the abnormal references"):
        adapter.set_references("c", keyed_references([], (32, 32)), full)
    with pytest.raises(GadbenchError, match="variant must be one of"):
        NNAblationAdapter({"variant": "both"}, stored_context(maps))


def test_normal_nn_scores_by_brute_force(nn_features):
    from nagl.normal_nn import NormalNNAdapter

    maps, _ = nn_features
    adapter = NormalNNAdapter({"backbone": "lite0_imagenet", "input_size": 32, "blur_sigma": 2.0}, stored_context(maps))
    adapter.set_references("c", keyed_references(["n0", "n1"], (32, 32)), None)
    prediction = scored(adapter, keyed_batch(["q0"], (20, 30)))
    bank = np.concatenate([_patches(maps, "n0"), _patches(maps, "n1")])
    scores = 1 - _unit_cosine(_patches(maps, "q0"), bank).max(axis=1)
    assert prediction.image_scores[0] == pytest.approx(scores.max(), abs=1e-6)  # 1 % of 16 patches: the max
    np.testing.assert_allclose(prediction.anomaly_maps[0], _maps_like_the_harness(scores.reshape(4, 4), (20, 30), 2.0), atol=1e-6)
    assert adapter.preprocessing().resize == "squash" and adapter.preprocessing().interpolation == "bicubic"
    assert adapter.preprocessing().size == 32 and adapter.preprocessing().mean == (0.5, 0.5, 0.5)  # Lite0's own


def test_auroc_equals_scikit_learn_on_images_and_flat_pixels():
    from benchmark.run.metrics import auroc

    rng = np.random.default_rng(1)
    labels = rng.random(300) < 0.3
    scores = rng.normal(size=300) + labels * 0.8
    scores[:20] = scores[20:40]  # ties
    assert auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    masks, maps = rng.random((3, 5, 5)) < 0.2, rng.random((3, 5, 5))
    assert auroc(masks, maps) == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-12)
    assert np.isnan(auroc(np.zeros(4), np.arange(4.0))) and np.isnan(auroc(np.ones(4), np.arange(4.0)))


def test_resad_log_likelihood_maps_are_the_gaussian_density_per_dimension():
    """level_log_likelihood = (sum of standard-normal log densities of z + log|J|) / C, at each
    position with its own encoding (scipy's density; the flow's z and log|J| taken directly)."""
    from baselines.resad_model import ResADModel, position_encoding

    torch.manual_seed(0)
    model = ResADModel([4, 8], coupling_layers=2, clamp=1.9, position_dim=8).eval()
    residuals = [torch.rand(2, 4, 3, 5), torch.rand(2, 8, 2, 2)]
    with torch.no_grad():
        maps = model.log_likelihood_maps(residuals)
        embedded = model.constrain(residuals)
        for level, (features, levels_map) in enumerate(zip(embedded, maps)):
            b, c, h, w = features.shape
            assert levels_map.shape == (b, h, w)
            encoding = position_encoding(8, h, w)
            for image, y, x in [(0, 0, 0), (1, h - 1, w - 1), (1, 1, 0)]:
                row = features[image, :, y, x][None]
                z, log_jacobian = model.flows[level](row, [encoding[:, y, x][None]])
                expected = (norm.logpdf(z.numpy()).sum() + log_jacobian.item()) / c
                assert levels_map[image, y, x].item() == pytest.approx(expected, abs=1e-4)


def test_resad_flow_schedule_state_round_trips_its_boundaries():
    from baselines.resad_model import FlowSchedule

    schedule = FlowSchedule()
    schedule.update_boundary(1, torch.tensor([3.0, 1.0, 2.0, 5.0]), torch.tensor([0, 0, 0, 1]))
    assert len(schedule.boundaries) == 2 and float(schedule.boundaries[0]) == 0.0
    assert float(schedule.boundaries[1]) == pytest.approx(0.1 * 1.0)  # 0.9 x 0 + 0.1 x the 5 % quantile of 1, 2, 3
    restored = FlowSchedule()
    restored.load_state_dict(schedule.state_dict())
    assert [float(b) for b in restored.boundaries] == [float(b) for b in schedule.boundaries]
    with pytest.raises(ValueError, match="flow updates must be one of"):
        FlowSchedule(updates="sometimes")
    with pytest.raises(ValueError, match="stage-2 flow loss must be one of"):
        FlowSchedule(stage2_loss="both")


def test_nagl_training_is_adamw_with_the_step_schedule_over_the_episodes(tmp_path):
    """nagl.train.train rebuilt from torch's own AdamW and MultiStepLR on the same episodes: the
    learning rate, betas, milestones, gamma, batches per epoch and epochs all count."""
    import copy

    from nagl.adapter import train_nagl
    from nagl.model import NAGL
    from nagl.train import TrainConfig, episode_loss, run_episodes, sample_episode
    from test_nagl import tiny_bank

    bank = tiny_bank()
    config = TrainConfig(k_normal=1, epochs=3, episodes_per_epoch=12, batch_size=4, learning_rate=2e-3,
                         milestones=(1, 2), gamma=0.5, seed=7)
    torch.manual_seed(0)
    model = NAGL(dim=32, heads=4, proxies=3)
    reference = copy.deepcopy(model)
    saved = train_nagl(model, bank, config, tmp_path, "h")
    optimizer = torch.optim.AdamW(reference.parameters(), lr=2e-3, betas=(0.9, 0.999))
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[1, 2], gamma=0.5)
    rng, categories = np.random.default_rng(7), bank.usable_categories(1, "clean", 1)
    losses = []
    for _ in range(3):
        epoch = []
        for _ in range(3):  # 12 episodes in batches of 4
            episodes = [sample_episode(rng, bank, 1, categories, "clean", 1) for _ in range(4)]
            masks = bank.pixel_masks[[e.query for e in episodes]].float()
            loss, _ = episode_loss(run_episodes(reference, bank, episodes, torch.device("cpu")), masks,
                                   torch.tensor([e.label for e in episodes]), bank.grid, config)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            epoch.append(loss.item())
        scheduler.step()
        losses.append(np.mean(epoch))
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(saved["state_dict"][key], value, atol=1e-6, rtol=1e-5)
    assert saved["epoch"] == 2
    assert [h["epoch"] for h in saved["history"]] == [0, 1, 2]
    assert [h["loss"] for h in saved["history"]] == pytest.approx(losses, rel=1e-5)
    assert all(0 <= h["seconds"] < 60 for h in saved["history"])


def test_target_selection_keeps_the_last_of_equal_epochs_and_falls_back_to_the_last(tmp_path):
    from nagl.adapter import train_nagl
    from nagl.model import NAGL
    from nagl.train import TrainConfig
    from test_nagl import tiny_bank

    bank = tiny_bank()
    base = dict(k_normal=1, epochs=3, episodes_per_epoch=4, batch_size=4, checkpoint_policy="official-target-selected")
    scores = iter([0.9, 0.9])
    calls = []
    state = train_nagl(NAGL(dim=32, heads=4, proxies=3), bank, TrainConfig(**base, selection_start_epoch=1), tmp_path / "a",
                       "h", select=lambda model, epoch: calls.append((model.training, epoch)) or next(scores))
    assert calls == [(False, 1), (False, 2)]  # scored in eval mode, from the start epoch on
    assert state["epoch"] == 2  # '>=': the later of two equal epochs
    never = train_nagl(NAGL(dim=32, heads=4, proxies=3), bank, TrainConfig(**base, selection_start_epoch=5), tmp_path / "b",
                       "h", select=lambda model, epoch: pytest.fail("no epoch reaches the start"))
    assert never["epoch"] == 2  # nothing selected: the last epoch


@pytest.mark.parametrize("grid,antialias", [((6, 5), False), ((3, 2), True)], ids=["up, non-square", "down, antialiased"])
def test_dinov2_resize_without_offset_is_a_bicubic_resize_to_the_grid(grid, antialias):
    """The hub's branch for interpolate_offset = 0: size=(h, w) instead of scale factors; checked
    against torchvision's resize of the same square grid (rows = height), the class token kept."""
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2.functional import resize

    from benchmark.features.pos_embed import dinov2_hub_resize

    torch.manual_seed(0)
    pos_embed = torch.randn(1, 1 + 16, 3)
    out = dinov2_hub_resize(pos_embed, grid, offset=0, antialias=antialias)
    square = pos_embed[0, 1:].reshape(4, 4, 3).permute(2, 0, 1)
    expected = resize(square, list(grid), interpolation=InterpolationMode.BICUBIC, antialias=antialias)
    assert torch.equal(out[0, :1], pos_embed[0, :1])
    torch.testing.assert_close(out[0, 1:], expected.permute(1, 2, 0).reshape(-1, 3), atol=1e-6, rtol=1e-6)



def test_dinov2_resize_with_offset_antialiases_a_downscale_when_asked():
    """interpolate_antialias (hub models that set it): an antialiased downscale of a white-noise
    grid (8 x 8 -> 3 x 3) averages neighbours, so its values vary several times less."""
    from benchmark.features.pos_embed import dinov2_hub_resize

    torch.manual_seed(0)
    pos_embed = torch.randn(1, 1 + 64, 3)
    smooth = dinov2_hub_resize(pos_embed, (3, 3), antialias=True)[0, 1:]
    sharp = dinov2_hub_resize(pos_embed, (3, 3), antialias=False)[0, 1:]
    assert (smooth.var(dim=0) * 4 < sharp.var(dim=0)).all()

def test_nn_ablation_at_n0_takes_the_normal_patches_from_the_abnormal_references(nn_features):
    """N0: no normal reference; the abnormal reference's patches outside its mask are the normal
    bank (brute force, 'normal' variant), and the reference's mask is read with the configured
    downsampling: pixel (7, 7) lies in patch (0, 0); the official stride-8 convolution with
    padding 1 reads windows shifted by one pixel, which see (7, 7) from patch (1, 1) and the
    full patch (1, 1) from (1, 2), (2, 1) and (2, 2) too."""
    from nagl.ablation import NNAblationAdapter

    maps, mask = nn_features
    thin = torch.zeros(32, 32)
    thin[7, 7] = 1
    thin[8:16, 8:16] = 1  # the whole patch (1, 1)
    for downsample, anomalous in (("any-pixel", [0, 5]), ("official-conv", [5, 6, 9, 10])):
        adapter = NNAblationAdapter({"variant": "normal", "backbone": "lite0_imagenet", "input_size": 32, "top_percent": 25.0,
                                     "blur_sigma": 1.5, "mask_downsample": downsample}, stored_context(maps))
        abnormal = keyed_references(["a0"], (32, 32))
        abnormal.masks = thin[None]
        adapter.set_references("c", keyed_references([], (32, 32)), abnormal)
        prediction = scored(adapter, keyed_batch(["q0"], (32, 32)))
        bank = np.delete(_patches(maps, "a0"), anomalous, axis=0)
        scores = 1 - _unit_cosine(_patches(maps, "q0"), bank).max(axis=1)
        assert prediction.image_scores[0] == pytest.approx(np.sort(scores)[::-1][:4].mean(), abs=1e-6), downsample
