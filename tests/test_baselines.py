"""PatchCore and WinCLIP adapters on small configurations: real mechanics, not just shapes."""

import re
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch

from baselines.patchcore import PatchCoreAdapter
from baselines.patchcore_model import concat_embedding, coreset_size, nearest_distances
from baselines.winclip import WinCLIPAdapter
from benchmark.api import ImageBatch, ReferenceSet
from benchmark.cli import main
from benchmark.features.service import FeatureService
from benchmark.features.weights import WeightStore
from stored_features import keyed_batch, keyed_references, scored
from tests.contexts import run_context

FIXTURES = Path(__file__).parent / "fixtures"


def context(tmp_path, weights_dir=None):
    store = WeightStore(weights_dir or tmp_path / "weights")
    return run_context(torch.device("cpu"), store, FeatureService(store, torch.device("cpu")), tmp_path)


def batch(images, sizes=None, cls=ImageBatch):
    sizes = sizes or [(images.shape[-2] + 10, images.shape[-1] + 30)] * len(images)
    keys = [f"img{i}-{float(images[i].sum()):.6f}" for i in range(len(images))]
    return cls(images, keys, sizes, [{} for _ in range(len(images))])


@pytest.fixture
def patchcore(tmp_path):
    config = {"backbone": "lite0_imagenet", "crop": 64, "resize": 72, "coreset_ratio": 0.25, "feature_aggregation": "concat",
              "coreset_sampler": "anomalib"}
    return PatchCoreAdapter(config, context(tmp_path))


def test_patchcore_bank_equals_reference_patches_and_coreset_is_a_subset(patchcore):
    torch.manual_seed(0)
    refs = batch(torch.randn(2, 3, 64, 64), cls=ReferenceSet)
    patchcore.set_references("x", refs, None)
    levels = patchcore.context.features.extract_layers(patchcore.backbone, refs)
    assert [level.shape[-1] for level in levels] == [8, 4]  # stride 8 and 16 at 64 px
    expected = concat_embedding(levels, 3).permute(0, 2, 3, 1).reshape(-1, 40 + 112)
    assert torch.equal(patchcore.patch_bank, expected)  # every reference patch, before the coreset
    assert len(patchcore.patch_bank) == 2 * 8 * 8
    assert len(patchcore.memory_bank) == int(0.25 * 128) == coreset_size(128, 0.25)
    assert coreset_size(784, 0.1) == 78 and coreset_size(5, 0.1) == 1  # int(n * ratio) as the code, never empty
    rows = {tuple(r.tolist()) for r in patchcore.patch_bank}
    assert all(tuple(r.tolist()) in rows for r in patchcore.memory_bank)  # a subset of real patches


@pytest.mark.parametrize("k", [1, 2, 3])
def test_patchcore_nearest_distances_over_blocks_match_brute_force_distances_in_float64(k):
    from benchmark.features.similarity import row_chunk

    generator = torch.Generator().manual_seed(k)
    queries, bank = torch.randn(900, 16, generator=generator), torch.randn(3_000, 16, generator=generator)
    bank[2_500] = bank[1_200]  # an exact tie: with k = 1 the first index wins
    queries[4] = bank[1_200] + 0.05  # nearer than 0.05 the expanded formula loses digits, as cdist and faiss do
    assert row_chunk(len(queries), len(bank), queries.device) < len(queries)  # several blocks, the last one partial
    distances, indices = nearest_distances(queries, bank, k)
    exact = torch.linalg.vector_norm(queries.double()[:, None] - bank.double()[None], dim=-1)
    want = exact.sort(dim=1)
    torch.testing.assert_close(distances.double(), want.values[:, :k], atol=2e-5, rtol=0)
    assert torch.equal(exact.gather(1, indices), want.values[:, :k])  # every index is one of the k nearest
    if k == 1:
        assert torch.equal(indices[:, 0], exact.argmin(dim=1)) and indices[4, 0] == 1_200


def test_patchcore_neighbourhood_average_then_upsample_then_concatenate():
    fine, coarse = torch.arange(16.0).reshape(1, 1, 4, 4), torch.ones(1, 2, 2, 2)
    out = concat_embedding([fine, coarse], 3)
    assert out.shape == (1, 3, 4, 4)
    assert out[0, 0, 1, 1] == pytest.approx(fine[0, 0, :3, :3].mean().item())  # 3x3 mean
    assert out[0, 0, 0, 0] == pytest.approx(fine[0, 0, :2, :2].sum().item() / 9)  # zero padding counts
    # a 2x2 map of ones: every 3x3 window sees 4 ones and 5 zero pads; upsampled, it stays 4/9
    assert torch.allclose(out[0, 1:], torch.full((2, 4, 4), 4 / 9), atol=1e-6)


def test_patchcore_scores_a_reference_as_perfectly_normal_and_is_batch_invariant(tmp_path):
    adapter = PatchCoreAdapter({"backbone": "lite0_imagenet", "crop": 64, "resize": 72, "coreset_ratio": 1.0}, context(tmp_path))
    torch.manual_seed(1)
    refs = torch.randn(2, 3, 64, 64)
    adapter.set_references("x", batch(refs, cls=ReferenceSet), None)
    queries = torch.randn(4, 3, 64, 64)
    together = scored(adapter, batch(queries))
    # its own patches are in the bank: distance 0 up to matrix-product rounding
    assert scored(adapter, batch(refs[:1])).image_scores[0] < 0.01 * together.image_scores.min()
    one_by_one = [scored(adapter, batch(queries[i:i + 1])).image_scores[0] for i in range(4)]
    np.testing.assert_allclose(together.image_scores, one_by_one, rtol=1e-5)
    assert (together.image_scores > 0).all()
    assert together.anomaly_maps[0].shape == (74, 94) and (together.anomaly_maps[0] >= 0).all()


def test_patchcore_map_keeps_the_crop_region_and_fills_the_border_with_the_minimum(patchcore):
    preprocessing = patchcore.preprocessing()
    input_map = np.zeros((64, 64), np.float32)
    input_map[:, 32:] = 1.0
    full = preprocessing.to_original(input_map, (72, 144))  # resized to 72 x 144, crop x in [40, 104)
    assert full.shape == (72, 144)
    assert full[:, :35].max() == 0.0 and full[:, 110:].max() == 0.0  # outside the crop: the minimum
    assert full[36, 80:100].min() > 0.9  # inside: the map


@pytest.fixture
def tiny_clip(tmp_path):
    """A random tiny open_clip model saved as a local weights file with its sha256 pinned."""
    import hashlib

    import open_clip

    open_clip.add_model_config(FIXTURES / "tiny-clip.json")
    torch.manual_seed(0)
    model = open_clip.create_model("tiny-clip")
    with torch.no_grad():  # weights that no random initialisation gives: the file's must be the ones used
        for parameter in model.parameters():
            parameter.add_(0.01)
    path = tmp_path / "weights" / "tiny-clip.pt"
    path.parent.mkdir()
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    config = {"clip_model": "tiny-clip", "clip_model_config": str(FIXTURES / "tiny-clip.json"), "image_size": 64,
              "weights": {"file": "tiny-clip.pt", "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}}
    return config, model


def test_winclip_loads_the_local_weights_file(tmp_path, tiny_clip):
    from open_clip import factory

    config, reference = tiny_clip
    factory._MODEL_CONFIGS.pop("tiny-clip")  # as in a fresh process: the adapter registers the architecture itself
    adapter = WinCLIPAdapter({**config, "scales": [2]}, context(tmp_path))
    loaded = adapter.model.clip.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in reference.state_dict().items())
    described = adapter.describe()
    assert described["weights_sha256"] == config["weights"]["sha256"] and described["scales"] == [2]
    assert described["parameters_total"] == sum(p.numel() for p in reference.parameters())  # nothing trainable


def test_winclip_prompt_ensemble_counts():
    from anomalib.models.image.winclip.prompting import create_prompt_ensemble

    normal, anomalous = create_prompt_ensemble("printed circuit board")
    assert len(normal) == 7 * 21 and len(anomalous) == 4 * 21
    assert any("flawless printed circuit board" in p for p in normal)
    assert any("printed circuit board with defect" in p for p in anomalous)


def test_winclip_both_branches_change_the_scores_and_text_is_encoded_once(tmp_path, tiny_clip):
    config, _ = tiny_clip
    adapter = WinCLIPAdapter(config, context(tmp_path))
    torch.manual_seed(2)
    refs_a, refs_b, queries = torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64), torch.randn(4, 3, 64, 64)
    with mock.patch.object(adapter.model, "_collect_text_embeddings", wraps=adapter.model._collect_text_embeddings) as spy:
        adapter.set_references("pcb1", batch(refs_a, cls=ReferenceSet), None)
        base = scored(adapter, batch(queries))
        adapter.set_references("pcb1", batch(refs_b, cls=ReferenceSet), None)
        other_refs = scored(adapter, batch(queries))
        adapter.set_references("pcb2", batch(refs_a, cls=ReferenceSet), None)  # same readable name as pcb1
        same_name = scored(adapter, batch(queries))
        adapter.set_references("screw", batch(refs_a, cls=ReferenceSet), None)
        other_text = scored(adapter, batch(queries))
    assert spy.call_count == 2  # 'printed circuit board' once, 'screw' once
    assert not np.allclose(base.image_scores, other_refs.image_scores)  # the reference branch matters
    np.testing.assert_allclose(base.image_scores, same_name.image_scores, rtol=1e-6)
    assert not np.allclose(base.image_scores, other_text.image_scores)  # the zero-shot branch matters
    assert base.anomaly_maps[0].shape == (74, 94)


def test_winclip_batch_of_one_equals_batch_of_four(tmp_path, tiny_clip):
    config, _ = tiny_clip
    adapter = WinCLIPAdapter(config, context(tmp_path))
    torch.manual_seed(3)
    adapter.set_references("bottle", batch(torch.randn(1, 3, 64, 64), cls=ReferenceSet), None)
    queries = torch.randn(4, 3, 64, 64)
    together = scored(adapter, batch(queries))
    single = [scored(adapter, batch(queries[i:i + 1])) for i in range(4)]
    np.testing.assert_allclose(together.image_scores, [s.image_scores[0] for s in single], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(together.anomaly_maps[2], single[2].anomaly_maps[0], rtol=1e-4, atol=1e-6)


def test_winclip_encodes_each_image_once_for_every_cell_that_sees_it(tmp_path, tiny_clip):
    config, _ = tiny_clip
    adapter = WinCLIPAdapter(config, context(tmp_path))
    torch.manual_seed(5)
    references, queries = batch(torch.randn(2, 3, 64, 64), cls=ReferenceSet), batch(torch.randn(3, 3, 64, 64))
    adapter.set_references("bottle", references, None)
    first = scored(adapter, queries)
    assert adapter.context.features.misses == 5
    # a second cell on the same images: every embedding from the cache, no pixel decoded
    undecodable = keyed_batch(queries.keys, queries.original_sizes[0])
    adapter.set_references("bottle", keyed_references(references.keys, references.original_sizes[0]), None)
    again = scored(adapter, undecodable)
    assert adapter.context.features.misses == 5 and not undecodable.decoded
    np.testing.assert_array_equal(first.image_scores, again.image_scores)
    np.testing.assert_array_equal(first.anomaly_maps[1], again.anomaly_maps[1])
    # the reference embeddings are the cell's: one reference fewer changes the scores
    adapter.set_references("bottle", keyed_references(references.keys[:1], references.original_sizes[0]), None)
    assert not np.allclose(scored(adapter, undecodable).image_scores, first.image_scores)


def test_list_and_weights_show_both_adapters(capsys, tmp_path):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "baselines.patchcore:PatchCoreAdapter" in out and "baselines.winclip:WinCLIPAdapter" in out
    assert main(["weights", "--weights-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "wide_resnet50_2-95faca4d.pth" in out and "vit_b_16_plus_240-laion400m_e31-8fb26589.pt" in out
    assert "missing" in out and "download.pytorch.org" in out
    assert re.search(r"efficientnet-lite0-57934424.pth\s+ok", out)


def test_patchcore_pairwise_l2_equals_scipy_below_one_too():
    from scipy.spatial.distance import cdist

    from baselines.patchcore_model import _pairwise_l2

    a = torch.tensor([[0.0, 0.0], [0.3, 0.4], [3.0, 4.0]], dtype=torch.float64)
    b = torch.tensor([[0.0, 0.1], [0.3, 0.4]], dtype=torch.float64)
    assert torch.allclose(_pairwise_l2(a, b), torch.from_numpy(cdist(a.numpy(), b.numpy())), atol=1e-7)


def test_patchcore_approximate_greedy_without_projection_is_farthest_point_traversal():
    """A bank already of the projection's width is not projected; fewer rows than starts take
    every row as a start; then each pick is the row farthest from all picked (numpy by hand)."""
    from scipy.spatial.distance import cdist

    from baselines.patchcore_model import approximate_greedy_indices

    rng = np.random.default_rng(3)
    bank = rng.normal(size=(6, 4))
    np.random.seed(5)
    chosen = approximate_greedy_indices(torch.from_numpy(bank), 4, starts=10, projection=4)
    np.random.seed(5)
    starts = np.random.choice(6, 6, replace=False)
    distance = cdist(bank, bank[starts]).mean(axis=1)
    expected = []
    for _ in range(4):
        expected.append(int(np.argmax(distance)))
        distance = np.minimum(distance, cdist(bank, bank[expected[-1:]])[:, 0])
    assert chosen.tolist() == expected and chosen.dtype == np.int64


def test_patchcore_embedding_with_a_five_neighbourhood_equals_a_loop():
    """official_embedding at n = 5 (zero padding 2): each position's C x 5 x 5 values, channel-major,
    average-pooled to `dimension` bins as adaptive pooling bins them."""
    from baselines.patchcore_model import official_embedding

    rng = np.random.default_rng(0)
    level = rng.normal(size=(1, 2, 4, 3))
    padded = np.pad(level[0], ((0, 0), (2, 2), (2, 2)))
    dimension = 7
    out = official_embedding([torch.from_numpy(level)], 5, dimension)
    length = 2 * 25
    for y in range(4):
        for x in range(3):
            values = padded[:, y:y + 5, x:x + 5].reshape(-1)
            bins = [values[(i * length) // dimension: -(-(i + 1) * length // dimension)].mean() for i in range(dimension)]
            assert np.allclose(out[0, :, y, x].numpy(), bins)


def test_winclip_refuses_a_weights_file_that_lacks_a_tensor_of_its_architecture(tmp_path, tiny_clip):
    import hashlib

    config, _ = tiny_clip
    path = tmp_path / "weights" / "tiny-clip.pt"
    state = torch.load(path, weights_only=True)["state_dict"]
    dropped = sorted(state)[0]
    del state[dropped]
    torch.save({"state_dict": state}, path)
    config = {**config, "scales": [2], "weights": {**config["weights"], "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}}
    with pytest.raises(RuntimeError, match=re.escape(dropped.removeprefix("module."))):
        WinCLIPAdapter(config, context(tmp_path)).model


def test_winclip_cache_key_changes_with_the_architecture_the_weights_and_the_scales(tmp_path, tiny_clip):
    config, _ = tiny_clip
    adapter = WinCLIPAdapter({**config, "scales": [2]}, context(tmp_path))
    adapter._weights_sha256 = "a" * 64
    key = adapter._encoder_id()
    assert key.startswith("winclip:tiny-clip:") and "@" + "a" * 16 + "/scales[2]" in key
    other_architecture = WinCLIPAdapter({**config, "scales": [2], "clip_model_config": {"embed_dim": 8}}, context(tmp_path))
    other_architecture._weights_sha256 = "a" * 64
    assert other_architecture._encoder_id() != key
    adapter._weights_sha256 = "b" * 64
    assert adapter._encoder_id() != key


def test_concat_embedding_averages_each_level_over_a_zero_padded_window_of_any_odd_size():
    """anomalib's 'concat' aggregation at neighbourhood 5: scipy's uniform_filter with zero
    padding counted (mode='constant') is the same average, computed independently."""
    from scipy.ndimage import uniform_filter

    level = torch.rand(1, 2, 7, 9, generator=torch.Generator().manual_seed(0))
    out = concat_embedding([level], 5)
    want = np.stack([uniform_filter(level[0, c].double().numpy(), size=5, mode="constant") for c in range(2)])
    assert out.shape == (1, 2, 7, 9)
    np.testing.assert_allclose(out[0].numpy(), want, atol=1e-6)


def test_winclip_adapters_with_other_scales_never_share_cached_embeddings(tmp_path, tiny_clip):
    """One feature cache for two WinCLIP variants (the cells of a scales sweep): each gets its own
    embeddings, so its scores equal those it gives with a cache of its own."""
    config, _ = tiny_clip
    torch.manual_seed(6)
    references, queries = torch.randn(1, 3, 64, 64), torch.randn(2, 3, 64, 64)

    def scores(adapter):
        adapter.set_references("bottle", batch(references, cls=ReferenceSet), None)
        return scored(adapter, batch(queries)).image_scores

    shared = context(tmp_path / "shared", tmp_path / "weights")
    scores(WinCLIPAdapter({**config, "scales": [2]}, shared))
    both = scores(WinCLIPAdapter({**config, "scales": [2, 3]}, shared))
    np.testing.assert_allclose(both, scores(WinCLIPAdapter({**config, "scales": [2, 3]}, context(tmp_path / "own", tmp_path / "weights"))), rtol=1e-6)
