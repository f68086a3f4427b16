"""NAGL: tests that pin the mechanism, the trainer and the adapter contract."""

import numpy as np
import pytest
import torch

from nagl.model import NAGL, downsample_mask, nearest_normal_residual, sine_position_encoding
from nagl.adapter import train_nagl as train
from nagl.train import EpisodeBank, TrainConfig, episode_loss, run_episodes, sample_episode

GRID = (8, 8)


def make_model(dim=32, **options):
    torch.manual_seed(0)
    return NAGL(dim=dim, heads=4, proxies=5, **options).eval()


def test_trainable_parameters_match_the_paper():
    assert sum(p.numel() for p in NAGL(dim=384, heads=4, proxies=25).parameters() if p.requires_grad) == 2_378_112
    default = NAGL()  # the paper's model: DINOv2 ViT-S/14 width, 4 heads, 25 proxies, top 1 %
    assert (default.dim, default.heads, default.proxies.num_embeddings, default.top_percent) == (384, 4, 25, 1.0)
    assert default.rm_cross.attention.num_heads == 4


@pytest.mark.parametrize("option", ["mask_downsample", "position_mask", "attention_mask_layout", "reference_positions"])
def test_an_unknown_option_value_is_refused_naming_the_option(option):
    with pytest.raises(ValueError, match=f"^{option} must be one of"):
        NAGL(dim=32, heads=4, proxies=3, **{option: "bogus"})


def test_the_width_must_divide_by_the_heads_and_by_four():
    for dim, heads in ((30, 3), (36, 8)):  # 30 = 3 x 10 but not 4 x n; 36 = 4 x 9 but not 8 x n
        with pytest.raises(ValueError, match="divisible by heads"):
            NAGL(dim=dim, heads=heads, proxies=3)


def test_the_image_score_is_the_mean_of_the_models_top_percent():
    model = make_model(top_percent=25.0)  # 16 of the 64 patches
    normal = torch.randn(1, 2, 64, 32)
    out = model(torch.randn(1, 64, 32), normal, GRID)
    assert out["image_score"].item() == pytest.approx(out["score"].topk(16).values.mean().item(), rel=1e-6)


def test_s_n_is_one_for_a_query_identical_to_a_normal_reference():
    model = make_model()
    normal = torch.randn(1, 2, 64, 32)
    out = model(normal[:, 1], normal, GRID)
    assert torch.allclose(out["s_n"], torch.ones(1, 64), atol=1e-6)


def test_top_one_percent_of_1024_patches_is_ten():
    model = NAGL(dim=32, heads=4, proxies=3)
    score = torch.zeros(1, 1024)
    score[0, :10] = 1.0
    assert model.top_percent == 1.0
    from benchmark.features.similarity import top_percent_mean

    assert top_percent_mean(score).item() == 1.0
    score[0, 10] = 2.0  # an 11th, larger patch enters the top 10 and pushes one 1.0 out
    assert top_percent_mean(score).item() == pytest.approx((2.0 + 9 * 1.0) / 10)


def test_residual_mining_ignores_residuals_on_non_anomalous_patches():
    model = make_model()
    torch.manual_seed(1)
    normal = torch.randn(1, 64, 32)
    abnormal = torch.randn(1, 1, 64, 32)
    mask = torch.zeros(1, 1, 64)
    mask[0, 0, 10:14] = 1
    before = model.mine_residual_proxies(abnormal, mask, normal, GRID)
    changed = abnormal.clone()
    changed[0, 0, 20:40] += 5 * torch.randn(20, 32)  # only non-anomalous patches change
    after = model.mine_residual_proxies(changed, mask, normal, GRID)
    assert torch.allclose(before, after, atol=1e-5)
    changed[0, 0, 11] += 5  # an anomalous patch changes: the proxies must move
    assert not torch.allclose(before, model.mine_residual_proxies(changed, mask, normal, GRID), atol=1e-3)


def test_an_all_normal_abnormal_mask_is_rejected():
    model = make_model()
    with pytest.raises(ValueError, match="no anomalous patch"):
        model.mine_residual_proxies(torch.randn(1, 1, 64, 32), torch.zeros(1, 1, 64), torch.randn(1, 64, 32), GRID)
    one_empty = torch.zeros(2, 1, 64)
    one_empty[0, 0, :5] = 1  # the batch's first episode has anomalous patches, the second none
    with pytest.raises(ValueError, match="no anomalous patch"):
        model.mine_residual_proxies(torch.randn(2, 1, 64, 32), one_empty, torch.randn(2, 64, 32), GRID)


def test_residuals_use_the_raw_dot_product_neighbour():
    normal = torch.tensor([[[1.0, 0.0], [10.0, 10.0]]])
    query = torch.tensor([[[1.0, 0.1]]])
    # cosine picks [1, 0]; the raw dot product (the official choice) picks [10, 10]
    assert torch.allclose(nearest_normal_residual(query, normal), query - normal[:, 1:])


def test_mask_downsampling_any_pixel_and_official_conv():
    mask = torch.zeros(1, 56, 56)
    mask[0, 13, 13] = 1  # the last pixel of patch (0, 0) with 14-pixel patches
    any_pixel = downsample_mask(mask, (4, 4), "any-pixel").reshape(4, 4)
    assert any_pixel[0, 0] == 1 and any_pixel.sum() == 1
    # the code's conv (kernel 14, stride 14, padding 1) covers pixels [14i - 1, 14i + 13): pixel 13 is in window 1
    official = downsample_mask(mask, (4, 4), "official-conv").reshape(4, 4)
    assert official[1, 1] == 1 and official.sum() == 1



def _padded_window_any(mask: np.ndarray, kernel: int) -> np.ndarray:
    """The code's conv as a loop: window (i, j) reads rows and columns [kernel * i - 1,
    kernel * i + kernel - 1) of the mask padded by one zero pixel; 1 where any pixel is set."""
    padded = np.pad(mask, 1)
    size = (mask.shape[0] + 2 - kernel) // kernel + 1
    return np.array([[padded[i * kernel:i * kernel + kernel, j * kernel:j * kernel + kernel].any() for j in range(size)]
                     for i in range(size)], dtype=float)


@pytest.mark.parametrize("side,grid", [(12, 4), (8, 4), (4, 4)])
def test_official_conv_windows_and_the_nearest_resize_when_the_padding_adds_patches(side, grid):
    """Kernels of 1 or 2 pixels give grid + 2 or grid + 1 windows; they are taken back to the
    grid by torch's nearest rule, window floor(i * windows / grid)."""
    mask = np.random.default_rng(side).random((side, side)) > 0.85
    windows = _padded_window_any(mask.astype(float), side // grid)
    pick = np.floor(np.arange(grid) * len(windows) / grid).astype(int)
    want = windows[np.ix_(pick, pick)].ravel()
    got = downsample_mask(torch.from_numpy(mask)[None], (grid, grid), "official-conv")[0].numpy()
    np.testing.assert_array_equal(got, want)
    assert len(windows) == {12: 4, 8: 5, 4: 6}[side]

def test_official_position_mask_changes_the_encoding_only_with_a_mask():
    plain = sine_position_encoding(4, 4, 16)
    masked = torch.zeros(1, 4, 4, dtype=torch.bool)
    assert torch.allclose(plain, sine_position_encoding(4, 4, 16, masked))
    masked[0, 1, 1] = True
    assert not torch.allclose(plain, sine_position_encoding(4, 4, 16, masked))


def test_per_sample_attention_masks_keep_batch_elements_apart():
    model = make_model()
    torch.manual_seed(2)
    normal, abnormal = torch.randn(2, 64, 32), torch.randn(2, 1, 64, 32)
    mask = torch.zeros(2, 1, 64)
    mask[0, 0, :4], mask[1, 0, 30:40] = 1, 1
    together = model.mine_residual_proxies(abnormal, mask, normal, GRID)
    alone = model.mine_residual_proxies(abnormal[1:], mask[1:], normal[1:], GRID)
    assert torch.allclose(together[1:], alone, atol=1e-5)
    official = make_model(attention_mask_layout="official").mine_residual_proxies(abnormal, mask, normal, GRID)
    assert not torch.allclose(official[1:], alone, atol=1e-3)  # the code's layout mixes the batch


def tiny_bank(seed=0, n_per_category=10):
    """Features with a planted signal: anomalous patches point along a fixed direction."""
    generator = torch.Generator().manual_seed(seed)
    features, masks, categories, labels, defects = [], [], [], [], []
    direction = torch.randn(32, generator=generator)
    for category in ("a", "b"):
        for i in range(n_per_category):
            label = int(i >= n_per_category // 2)
            tokens = torch.randn(64, 32, generator=generator)
            mask = torch.zeros(32, 32)
            if label:
                y, x = torch.randint(0, 24, (2,), generator=generator).tolist()
                mask[y:y + 8, x:x + 8] = 1
                patch = downsample_mask(mask[None], GRID)[0] > 0
                tokens[patch] += 3 * direction
            features.append(tokens)
            masks.append(mask)
            categories.append(category)
            labels.append(label)
            defects.append("dent" if label else "good")
    masks = torch.stack(masks)
    return EpisodeBank(torch.stack(features), masks.bool(), downsample_mask(masks, GRID), categories, labels, defects, GRID)


def test_episode_sampler_never_uses_the_query_as_a_reference():
    bank = tiny_bank()
    rng = np.random.default_rng(0)
    categories = bank.usable_categories(2, "clean", 1)
    seen_labels = set()
    for _ in range(500):
        episode = sample_episode(rng, bank, 2, categories, "clean", 1)
        [abnormal] = episode.abnormal
        assert episode.query not in episode.normal and episode.query != abnormal
        assert len(set(episode.normal)) == 2
        assert bank.labels[episode.query] == episode.label
        assert bank.categories[episode.query] == bank.categories[abnormal] == bank.categories[episode.normal[0]]
        assert all(bank.labels[i] == 0 for i in episode.normal) and bank.labels[abnormal] == 1
        seen_labels.add(episode.label)
    assert seen_labels == {0, 1}


def test_a_few_training_steps_lower_the_loss(tmp_path):
    bank = tiny_bank()
    model = make_model()
    config = TrainConfig(k_normal=1, epochs=1, episodes_per_epoch=8, batch_size=8, learning_rate=1e-3)
    rng = np.random.default_rng(5)
    episodes = [sample_episode(rng, bank, 1, bank.usable_categories(1, "clean", 1), "clean", 1) for _ in range(16)]
    labels = torch.tensor([e.label for e in episodes])
    masks = bank.pixel_masks[[e.query for e in episodes]].float()

    def loss_now():
        with torch.no_grad():
            return episode_loss(run_episodes(model, bank, episodes, torch.device("cpu")), masks, labels, GRID, config)[0].item()

    before = loss_now()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(30):
        loss, _ = episode_loss(run_episodes(model, bank, episodes, torch.device("cpu")), masks, labels, GRID, config)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss_now() < before - 0.02


@pytest.mark.parametrize("image_loss", ["code", "paper"])
def test_both_image_losses_are_finite_and_differ(image_loss):
    bank = tiny_bank()
    model = make_model()
    episodes = [sample_episode(np.random.default_rng(1), bank, 1, bank.usable_categories(1, "clean", 1), "clean", 1) for _ in range(4)]
    output = run_episodes(model, bank, episodes, torch.device("cpu"))
    labels = torch.tensor([e.label for e in episodes])
    masks = bank.pixel_masks[[e.query for e in episodes]].float()
    loss, parts = episode_loss(output, masks, labels, GRID, TrainConfig(k_normal=1, image_loss=image_loss))
    assert torch.isfinite(loss) and parts["pixel_loss"] > 0
    other = "paper" if image_loss == "code" else "code"
    _, other_parts = episode_loss(output, masks, labels, GRID, TrainConfig(k_normal=1, image_loss=other))
    assert other_parts["image_loss"] != pytest.approx(parts["image_loss"])


def test_training_resumes_to_the_same_weights_as_an_uninterrupted_run(tmp_path):
    bank = tiny_bank()
    config = TrainConfig(k_normal=1, epochs=3, episodes_per_epoch=16, batch_size=8, learning_rate=1e-3, milestones=(2,))
    straight = train(make_model(), bank, config, tmp_path / "straight", "h")
    # an interrupted run: stop after epoch 1 (the state file is what a killed run leaves behind)
    partial = TrainConfig(**{**config.__dict__, "epochs": 1})
    train(make_model(), bank, partial, tmp_path / "resumed", "h")
    state = torch.load(tmp_path / "resumed" / "training_state.pt", weights_only=True)
    assert state["epoch"] == 0
    messages = []
    resumed = train(make_model(), bank, config, tmp_path / "resumed", "h", log=messages.append)
    assert any("resuming at epoch 1" in m for m in messages)
    assert all(torch.equal(straight["state_dict"][k], resumed["state_dict"][k]) for k in straight["state_dict"])
    assert [h["loss"] for h in straight["history"]] == [h["loss"] for h in resumed["history"]]
    with pytest.raises(Exception, match="different config"):
        train(make_model(), bank, config, tmp_path / "resumed", "other-hash")


def test_target_selected_policy_keeps_the_best_epoch_from_the_start_epoch(tmp_path):
    bank = tiny_bank()
    config = TrainConfig(k_normal=1, epochs=4, episodes_per_epoch=8, batch_size=8, learning_rate=1e-3,
                         checkpoint_policy="official-target-selected", selection_start_epoch=1)
    scores = iter([0.5, 0.9, 0.7])  # epochs 1, 2, 3 are scored; epoch 2 (index) is best
    state = train(make_model(), bank, config, tmp_path, "h", select=lambda model, epoch: next(scores))
    assert state["epoch"] == 2


def test_episodes_with_j_references_draw_them_of_one_type_without_replacement_and_never_as_the_query():
    bank = tiny_bank()
    rng = np.random.default_rng(1)
    categories = bank.usable_categories(1, "clean", j=3)
    for _ in range(300):
        episode = sample_episode(rng, bank, 1, categories, "clean", j=3)
        assert len(set(episode.abnormal)) == 3 and episode.query not in episode.abnormal
        assert {bank.defects[i] for i in episode.abnormal} == {"dent"} and all(bank.patch_masks[i].any() for i in episode.abnormal)
        assert len({bank.categories[i] for i in episode.abnormal + [episode.query]}) == 1
    assert bank.usable_categories(1, "clean", j=6) == []  # 5 defect images per category


@torch.no_grad()
def test_n0_episodes_run_one_by_one_as_the_adapter_scores_them():
    """k = 0: each episode's normal bank is its own references' normal patches and s_n = 1 - s_a;
    the batch's outputs equal each episode run alone through the model."""
    bank = tiny_bank()
    model = make_model().eval()
    rng = np.random.default_rng(2)
    episodes = [sample_episode(rng, bank, 0, bank.usable_categories(0, "clean", j=2), "clean", j=2) for _ in range(4)]
    assert all(e.normal == [] for e in episodes)
    batch = run_episodes(model, bank, episodes, torch.device("cpu"))
    for b, episode in enumerate(episodes):
        abnormal, mask = bank.features[episode.abnormal], bank.patch_masks[episode.abnormal]
        normal = abnormal[mask == 0][None]
        alone = model(bank.features[episode.query][None], normal, GRID, abnormal[None], mask[None], abnormal_only=True)
        torch.testing.assert_close(batch["score"][b], alone["score"][0])
        torch.testing.assert_close(batch["s_n"][b], 1 - batch["s_a"][b])
        torch.testing.assert_close(batch["score"][b], batch["s_a"][b])


def test_the_image_losses_in_closed_form_with_saturated_scores():
    """code: cross-entropy of [1 - s, s] with s the mean of the top 20 patch scores; paper: binary
    cross-entropy of the top-1 % mean, clamped to [1e-6, 1 - 1e-6] (so a saturated score costs
    -log(1e-6), not infinity). The pixel term is weighted 0 here."""
    import math

    scores = torch.full((3, 200), 0.1)
    scores[0, :2] = 1.0  # top 1 % (2 patches) saturated, labelled normal
    scores[1, :] = 0.0  # all zero, labelled anomalous
    scores[2, :30] = torch.linspace(0.9, 0.3, 30)
    labels = torch.tensor([0, 1, 1])
    grid = (10, 20)
    output = {"score": scores, "s_n": torch.zeros(3, 200), "s_a": torch.zeros(3, 200)}
    masks = torch.zeros(3, 10, 20)
    paper = TrainConfig(k_normal=1, image_loss="paper", pixel_loss_weight=0.0)
    bce = lambda s, y: -math.log(s) if y else -math.log(1 - s)  # noqa: E731
    top1 = [1.0, 0.0, (0.9 + scores[2, 1].item()) / 2]
    low, high = (float(np.float32(v)) for v in (1e-6, 1 - 1e-6))  # the clamp's bounds in float32
    clamped = [min(max(s, low), high) for s in top1]
    expected_paper = sum(bce(s, y) for s, y in zip(clamped, [0, 1, 1])) / 3
    assert episode_loss(output, masks, labels, grid, paper)[0].item() == pytest.approx(expected_paper, rel=1e-5)
    top20 = [(2 * 1.0 + 18 * scores[0, 5].item()) / 20, 0.0, scores[2, :20].double().mean().item()]
    ce = lambda s, y: -math.log(math.exp(s if y else 1 - s) / (math.exp(s) + math.exp(1 - s)))  # noqa: E731
    expected_code = sum(ce(s, y) for s, y in zip(top20, [0, 1, 1])) / 3
    code = TrainConfig(k_normal=1, image_loss="code", pixel_loss_weight=0.0)
    assert episode_loss(output, masks, labels, grid, code)[0].item() == pytest.approx(expected_code, rel=1e-5)


def test_an_epoch_steps_once_per_started_batch_with_the_configured_episodes():
    """ceil(episodes_per_epoch / batch_size) optimizer steps, each on batch_size episodes drawn
    with the configured sampler and number of abnormal references; at k = 0 a batch of one
    episode runs alone and keeps its outputs."""
    from unittest import mock

    import nagl.train as train_module

    bank = tiny_bank()
    config = TrainConfig(k_normal=1, k_abnormal=2, episode_sampler="official", episodes_per_epoch=9, batch_size=4)
    model = make_model()
    optimizer, _ = train_module.make_optimizer(model, config)
    real = train_module.sample_episode
    with mock.patch.object(train_module, "sample_episode",
                           side_effect=lambda rng, b, k, c, sampler, j: real(rng, b, k, c, "clean", 1)) as draw, \
            mock.patch.object(optimizer, "step", wraps=optimizer.step) as step:
        train_module.train_epoch(model, bank, config, optimizer, np.random.default_rng(0), bank.usable_categories(1, "clean", 1))
    assert step.call_count == 3 and draw.call_count == 12
    assert {(call.args[4], call.args[5]) for call in draw.call_args_list} == {("official", 2)}
    episode = sample_episode(np.random.default_rng(2), bank, 0, bank.usable_categories(0, "clean", 1), "clean", 1)
    alone = run_episodes(make_model(), bank, [episode], torch.device("cpu"))
    assert alone["score"].shape == (1, 64) and alone["s_a"].shape == (1, 64)


def _rule_bank(normal_counts: dict, defect_rows: dict) -> EpisodeBank:
    """A bank of blank images, in this order: normal_counts[category] normal ones, then for each (category, type)
    one row per abnormal image, True where its mask covers a patch."""
    categories, labels, defects, covers = [], [], [], []
    for category, count in normal_counts.items():
        categories += [category] * count
        labels += [0] * count
        defects += ["good"] * count
        covers += [False] * count
    for (category, defect), rows in defect_rows.items():
        categories += [category] * len(rows)
        labels += [1] * len(rows)
        defects += [defect] * len(rows)
        covers += rows
    n = len(categories)
    patch_masks = torch.zeros(n, 4)
    patch_masks[torch.tensor(covers), 0] = 1
    return EpisodeBank(torch.zeros(n, 4, 2), torch.zeros(n, 4, 4, dtype=torch.bool), patch_masks, categories, labels,
                       defects, (2, 2))


def test_a_category_is_usable_with_k_plus_one_normals_clean_or_k_official_and_j_covering_masks_of_one_type():
    """docs/protocol.md, episode rules: the clean sampler keeps the query out of the k normal
    references, so it needs k + 1 normal images; the official one may reuse a reference as the
    query (k). A^j needs j images of one defect type whose masks cover a patch."""
    assert EpisodeBank.normal_images_needed(3, "clean") == 4 and EpisodeBank.normal_images_needed(3, "official") == 3
    bank = _rule_bank({"a": 3, "b": 2}, {("a", "dent"): [True, True], ("b", "dent"): [True, False],
                                          ("b", "cut"): [False, False]})
    assert bank.usable_categories(2, "clean", 1) == ["a"] and bank.usable_categories(2, "official", 1) == ["a", "b"]
    assert bank.usable_categories(2, "official", 2) == ["a"]  # b's dents: one mask covers a patch
    assert bank.reference_types("b", 1) == ["dent"] and bank.reference_types("b", 2) == []
    assert bank.reference_types("a", 2) == ["dent"] and bank.reference_types("a", 3) == []
    rng = np.random.default_rng(0)
    for _ in range(50):
        two = sample_episode(rng, bank, 1, ["a"], "clean", 2)
        assert sorted(two.abnormal) == [5, 6] and two.label == 0  # both dents are references: the query is normal
        one = sample_episode(rng, bank, 0, ["b"], "clean", 1)
        assert one.abnormal == [7] and one.normal == []  # the dent whose mask covers a patch


def test_every_attention_matrix_starts_xavier_uniform():
    """The code re-initialises each attention layer's matrices with xavier_uniform_ (bound
    sqrt(6 / (fan_in + fan_out)), Glorot and Bengio 2010); torch's own default for the output
    projection is kaiming_uniform(a = sqrt(5)), bound 1 / sqrt(fan_in), sqrt(3) times smaller."""
    from nagl.model import AttentionLayer

    torch.manual_seed(0)
    layer = AttentionLayer(64, 4)
    for name, weight in (("in_proj", layer.attention.in_proj_weight), ("out_proj", layer.attention.out_proj.weight)):
        fan_out, fan_in = weight.shape
        bound = (6 / (fan_in + fan_out)) ** 0.5
        assert weight.abs().max() <= bound and weight.abs().max() > 0.95 * bound, name
        assert weight.var().item() == pytest.approx(bound ** 2 / 3, rel=0.05), name
