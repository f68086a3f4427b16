"""InCTRL against the official code (mala-lab/InCTRL@cc535d0): the official model was run on a
tiny CLIP of the real layout (240 px, patch 16, 12 blocks, 640-d embedding) whose weights, like
the inputs, come from recipe_weights.py; the fixture holds its outputs, loss and gradients.

Batch 1 must match with either layout; a batch of 3 matches the code only with
`batch_layout: code` (its reshape mixes the batch), and the default per-image layout gives each
query what it gets alone."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from baselines.inctrl import InCTRLAdapter, focal_loss
from benchmark.api import ImageBatch, ReferenceSet
from benchmark.features.service import FeatureService
from benchmark.features.weights import WeightStore
from recipe_weights import fill, recipe_images
from tests.contexts import run_context

FOLDER = Path(__file__).resolve().parents[1] / "fixtures" / "conformance" / "inctrl"


@pytest.fixture(scope="module")
def case():
    return torch.load(FOLDER / "inctrl_official.pt", weights_only=True)


@pytest.fixture(scope="module")
def images(case):
    return recipe_images(case["image_seed_query"], 4, 240), recipe_images(case["image_seed_reference"], 8, 240)


def adapter(layout: str) -> InCTRLAdapter:
    config = {"clip_model": "inctrl-tiny", "clip_model_config": str(FOLDER / "inctrl-tiny.json"), "allow_random_weights": True,
              "batch_layout": layout}
    store = WeightStore()
    inctrl = InCTRLAdapter(config, run_context(torch.device("cpu"), store, FeatureService(store, torch.device("cpu")), None))
    fill(inctrl.clip)
    inctrl.heads = inctrl._new_heads()
    assert set(fill(inctrl.heads)) <= set(torch.load(FOLDER / "inctrl_official.pt", weights_only=True)["recipe_keys"])
    inctrl.heads.eval()
    return inctrl


def predict(inctrl, queries, references, category="metal_nut"):
    size = [(240, 240)] * len(queries)
    inctrl.set_references(category, ReferenceSet(references, [f"r{i}" for i in range(len(references))], size[:len(references)],
                                                 [{}] * len(references)), None)
    return inctrl.predict(ImageBatch(queries, [f"q{i}" for i in range(len(queries))], size, [{}] * len(queries)))


@pytest.mark.parametrize("layout", ["per-image", "code"])
def test_batch_of_one_matches_the_official_test_path(case, images, layout):
    queries, references = images
    inctrl = adapter(layout)
    out = predict(inctrl, queries[:1], references[:2])
    torch.testing.assert_close(torch.from_numpy(out.image_scores).float(), case["test_b1_final"], atol=1e-5, rtol=1e-5)
    embeddings, blocks = inctrl.encode(queries[:1])
    heads = inctrl._heads_on(inctrl.heads, embeddings, blocks, inctrl.reference_embeddings, inctrl.reference_blocks, 2, ["metal_nut"])
    torch.testing.assert_close(heads["image_residual_score"], case["test_b1_image_residual_score"], atol=1e-5, rtol=1e-5)


def test_a_batch_of_three_matches_the_code_only_with_its_layout(case, images):
    queries, references = images
    mixed = predict(adapter("code"), queries[:3], references[:2])
    torch.testing.assert_close(torch.from_numpy(mixed.image_scores).float(), case["test_b3_final"], atol=1e-5, rtol=1e-5)
    per_image = adapter("per-image")
    together = predict(per_image, queries[:3], references[:2]).image_scores
    alone = [predict(per_image, queries[i:i + 1], references[:2]).image_scores[0] for i in range(3)]
    torch.testing.assert_close(torch.from_numpy(together), torch.tensor(alone, dtype=torch.float64), atol=1e-6, rtol=1e-6)
    assert (torch.from_numpy(together).float() - case["test_b3_final"]).abs().max() > 1e-4  # the code's mixing is real


def test_one_training_step_matches_the_official_loss_and_gradients(case, images):
    queries, references = images
    inctrl = adapter("code")
    # the cached CLIP outputs that training reads, keyed by 'path'
    for name, image in [(f"q{i}", queries[i]) for i in range(4)] + [(f"r{i}", references[i]) for i in range(8)]:
        embedding, blocks = inctrl.encode(image[None])
        inctrl._encoded[name] = (embedding[0], [b[0] for b in blocks])
    heads = inctrl.heads.train()
    reference_paths = [[f"r{i}", f"r{4 + i}"] for i in range(4)]  # query i: references i and 4 + i (shot-major inputs)
    out = inctrl._scores(heads, [f"q{i}" for i in range(4)], reference_paths, case["types"], source=None)  # all cached
    labels = case["train_labels"]
    loss = focal_loss(out["final"], labels, "code") + focal_loss(out["image_residual_score"], labels, "code")
    torch.testing.assert_close(out["final"].detach(), case["train_final"], atol=1e-5, rtol=1e-5)
    assert loss.item() == pytest.approx(case["train_loss"].item(), abs=1e-6)
    loss.backward()
    grads = dict(heads.named_parameters())
    # BatchNorm over a batch of 4 amplifies float32 rounding in a few units: compare at 0.2 % of
    # each tensor's largest gradient (a wrong formula is off by the gradient's own size)
    for name, expected in case["train_grads"].items():
        scale = expected.abs().max().item()
        torch.testing.assert_close(grads[name].grad, expected, atol=2e-3 * scale, rtol=0, msg=lambda m: f"{name}: {m}")
    for name, rows in case["train_grad_rows"].items():
        grad, scale = grads[name].grad.double(), rows.abs().max().item()
        torch.testing.assert_close(grad[[0, 1, grad.shape[0] // 2, grad.shape[0] - 1]].float(), rows, atol=2e-3 * scale, rtol=0)
        row_sum = case["train_grad_row_sum"][name]
        torch.testing.assert_close(grad.sum(1).float(), row_sum, atol=2e-3 * row_sum.abs().max().item(), rtol=0)
        assert grad.norm().item() == pytest.approx(case["train_grad_fro_norm"][name], rel=1e-3)
