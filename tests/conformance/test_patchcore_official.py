"""PatchCore against the official code (amazon-science/patchcore-inspection@fcaa92f, fixture) and
against anomalib 2.7's PatchcoreModel (installed), on the same layer features.

The default recipe must reproduce the official code's embedding, approximate-greedy coreset,
squared-L2 scores, max image score and blurred maps; the anomalib switches (concat, KCenterGreedy,
L2, reweighted image score) must reproduce anomalib's memory bank and scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from baselines.patchcore import PatchCoreAdapter
from baselines.patchcore_model import official_embedding
from benchmark.run.maps import maps_at_original
from stored_features import keyed_batch, keyed_references, stored_context

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "conformance" / "patchcore" / "patchcore_official.pt"
OFFICIAL = {"feature_aggregation": "official", "embed_dimension": 1024, "coreset_sampler": "official-approximate",
            "distance": "squared_l2", "image_score": "max", "crop": 64, "resize": 64, "blur_sigma": 4.0,
            "backbone": "wide_resnet50_2_imagenet"}
ANOMALIB = {**OFFICIAL, "feature_aggregation": "concat", "coreset_sampler": "anomalib", "distance": "l2"}


@pytest.fixture(scope="module")
def case():
    return torch.load(FIXTURE, weights_only=True)


def levels(case, role):
    return [case[f"{role}_{layer}_int8"].float() * case["feature_scale"] for layer in case["layers"]]


def adapter_on(case, config) -> PatchCoreAdapter:
    stored = {}
    for role in ("reference", "query"):
        for index, maps in enumerate(zip(*levels(case, role))):
            stored[f"{role}{index}"] = list(maps)
    return PatchCoreAdapter(config, stored_context(stored))


REFERENCES, QUERIES = ["reference0", "reference1"], ["query0", "query1", "query2"]


def test_official_embedding_matches_the_codes_mean_mapper_and_aggregator(case):
    embedding = official_embedding(levels(case, "reference"), 3, 1024)
    flat = embedding.permute(0, 2, 3, 1).reshape(-1, 1024)
    torch.testing.assert_close(flat[case["reference_embedding_rows_index"]], case["reference_embedding_rows"], atol=1e-6, rtol=0)
    torch.testing.assert_close(flat.double().sum(1).float(), case["reference_embedding_row_sum"], atol=1e-4, rtol=1e-6)


@pytest.mark.parametrize("num_nn", [1, 3])
def test_official_recipe_with_the_whole_bank_matches_the_code(case, num_nn):
    adapter = adapter_on(case, {**OFFICIAL, "coreset_ratio": 1.0, "num_neighbors": num_nn})
    adapter.set_references("x", keyed_references(REFERENCES, (64, 64)), None)
    patch_scores, image_scores = adapter.scores(keyed_batch(QUERIES, (64, 64)))
    torch.testing.assert_close(patch_scores, case[f"full_bank_nn{num_nn}_patch_scores"], atol=1e-5, rtol=2e-4)
    torch.testing.assert_close(image_scores, case[f"full_bank_nn{num_nn}_image_scores"], atol=1e-5, rtol=2e-4)
    maps = np.stack(maps_at_original(patch_scores, [(64, 64)] * 3, adapter.preprocessing(), 4.0, "input")[0])
    np.testing.assert_allclose(maps, case[f"full_bank_nn{num_nn}_maps"].numpy(), atol=1e-5, rtol=2e-4)


def test_official_approximate_greedy_coreset_picks_the_codes_rows(case):
    adapter = adapter_on(case, {**OFFICIAL, "coreset_ratio": case["coreset_percentage"], "num_neighbors": 1})
    torch.manual_seed(0)
    np.random.seed(0)  # the fixture's RNG state before the sampler ran
    adapter.set_references("x", keyed_references(REFERENCES, (64, 64)), None)
    expected = adapter.patch_bank[case["coreset_indices"]]
    assert len(adapter.memory_bank) == int(128 * case["coreset_percentage"])
    torch.testing.assert_close(adapter.memory_bank, expected, atol=0, rtol=0)
    patch_scores, image_scores = adapter.scores(keyed_batch(QUERIES, (64, 64)))
    torch.testing.assert_close(image_scores, case["coreset_nn1_image_scores"], atol=1e-5, rtol=2e-4)
    maps = np.stack(maps_at_original(patch_scores, [(64, 64)] * 3, adapter.preprocessing(), 4.0, "input")[0])
    np.testing.assert_allclose(maps, case["coreset_nn1_maps"].numpy(), atol=1e-5, rtol=2e-4)


@pytest.mark.parametrize("num_neighbors", [1, 9])
def test_anomalib_recipe_matches_anomalibs_patchcore_model(case, num_neighbors):
    from anomalib.models.image.patchcore.torch_model import PatchcoreModel

    model = PatchcoreModel(layers=["layer2", "layer3"], backbone="resnet18", pre_trained=False,
                           num_neighbors=num_neighbors).eval()
    features = lambda role: dict(zip(["layer2", "layer3"], levels(case, role)))  # noqa: E731
    pooled = lambda role: {k: model.feature_pooler(v) for k, v in features(role).items()}  # noqa: E731
    bank = model.reshape_embedding(model.generate_embedding(pooled("reference")))
    model.embedding_store = [bank]
    torch.manual_seed(5)
    np.random.seed(5)  # KCenterGreedy draws from both (its sparse projection through scikit-learn)
    with pytest.warns(DeprecationWarning):  # anomalib warns on every call, the argument unused
        model.subsample_embedding(0.25)
    queries = model.reshape_embedding(model.generate_embedding(pooled("query")))
    scores, locations = model.nearest_neighbors(queries, n_neighbors=1)
    expected_image = model.compute_anomaly_score(scores.reshape(3, -1), locations.reshape(3, -1), queries)

    image_score = "reweighted" if num_neighbors > 1 else "max"
    adapter = adapter_on(case, {**ANOMALIB, "coreset_ratio": 0.25, "image_score": image_score,
                                "reweight_neighbors": num_neighbors})
    torch.manual_seed(5)
    np.random.seed(5)
    adapter.set_references("x", keyed_references(REFERENCES, (64, 64)), None)
    torch.testing.assert_close(adapter.memory_bank, model.memory_bank, atol=0, rtol=0)
    patch_scores, image_scores = adapter.scores(keyed_batch(QUERIES, (64, 64)))
    torch.testing.assert_close(patch_scores.flatten(), scores, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(image_scores, expected_image, atol=1e-4, rtol=1e-5)
    if num_neighbors > 1:  # the reweighting really moves the score
        assert not torch.allclose(image_scores, patch_scores.flatten(1).amax(1), atol=1e-4)
