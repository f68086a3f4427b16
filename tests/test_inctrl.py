"""InCTRL on a tiny random open_clip model: batch invariance, training, reload, config hash."""

from pathlib import Path

import numpy as np
import pytest
import torch

from baselines.inctrl import InCTRLAdapter, prompt_ensemble
from baselines.inctrl_model import patch_residual_map
from benchmark.api import ImageBatch, ReferenceSet
from benchmark.data.mvtec import read_mvtec
from benchmark.data.settings import parse_setting
from benchmark.features.service import FeatureService
from benchmark.features.weights import WeightStore
from stored_features import scored
from tests.contexts import run_context
from benchmark.run.checkpoints import fit_source
from benchmark.data.batches import training_data

FIXTURES = Path(__file__).parent / "fixtures"
TINY = {"clip_model": "tiny-clip", "clip_model_config": str(FIXTURES / "tiny-clip.json"), "image_size": 64,
        "blocks": [1, 2], "weights": {"file": "tiny-clip.pt"},
        "training": {"epochs": 3, "steps_per_epoch": 4, "batch_size": 8, "learning_rate": 3e-3}}


def adapter(tmp_path, **overrides):
    store = WeightStore(tmp_path / "w")
    return InCTRLAdapter({**TINY, **overrides}, run_context(torch.device("cpu"), store, FeatureService(store, torch.device("cpu")), tmp_path))


def save_tiny_clip(folder: Path) -> None:
    """A random tiny open_clip model written as a local weights file: the frozen backbone."""
    import open_clip

    open_clip.add_model_config(FIXTURES / "tiny-clip.json")
    torch.manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(open_clip.create_model("tiny-clip").state_dict(), folder / "tiny-clip.pt")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, synthetic_root):
    tmp = tmp_path_factory.mktemp("inctrl")
    save_tiny_clip(tmp / "w")
    model = adapter(tmp)
    domain = training_data("objects", read_mvtec(synthetic_root / "objects"))
    checkpoint = fit_source(model, domain, tmp / "ckpt", parse_setting("N2"))
    return model, checkpoint, domain, tmp


def batch(images, cls=ImageBatch):
    return cls(images, [str(i) for i in range(len(images))], [(64, 64)] * len(images), [{}] * len(images))


def test_prompt_ensemble_is_7_and_4_states_by_22_templates():
    normal, anomalous = prompt_ensemble("metal nut")
    assert len(normal) == 7 * 22 and len(anomalous) == 4 * 22
    assert "a photo of a flawless metal nut for visual inspection." in normal


def test_patch_residual_is_zero_for_a_reference_and_averaged_over_blocks():
    ref = torch.randn(10, 8)
    queries = torch.stack([ref[:4], 2 * ref[:4]])[None]  # [B=1, blocks=2, P=4, C]
    references = torch.stack([ref, 2 * ref])[None]
    assert torch.allclose(patch_residual_map(queries, references), torch.zeros(1, 4), atol=1e-6)
    opposite = torch.stack([-ref[:1], -ref[:1]])[None]  # (1 - cos) / 2 = 1 in both blocks
    assert torch.allclose(patch_residual_map(opposite, torch.stack([ref[:1], 3 * ref[:1]])[None]), torch.ones(1, 1), atol=1e-6)


def test_training_lowers_the_loss_and_the_checkpoint_reloads_to_identical_scores(trained, tmp_path):
    model, checkpoint, domain, tmp = trained
    history = model.training_history
    assert len(history) == 3 and history[-1]["loss"] < history[0]["loss"]
    torch.manual_seed(4)
    refs, queries = torch.randn(2, 3, 64, 64), torch.randn(5, 3, 64, 64)
    model.set_references("washer", batch(refs, ReferenceSet), None)
    scores = scored(model, batch(queries)).image_scores
    again = adapter(tmp)
    assert fit_source(again, domain, tmp / "ckpt", parse_setting("N2")) == checkpoint  # reused, not retrained
    again.set_references("washer", batch(refs, ReferenceSet), None)
    np.testing.assert_array_equal(scored(again, batch(queries)).image_scores, scores)
    assert model.describe()["pixel_level"] is False and scored(model, batch(queries)).anomaly_maps is None


def test_batch_of_one_equals_batch_of_eight(trained):
    model = trained[0]
    torch.manual_seed(5)
    model.set_references("tablet", batch(torch.randn(2, 3, 64, 64), ReferenceSet), None)
    queries = torch.randn(8, 3, 64, 64)
    together = scored(model, batch(queries)).image_scores
    one_by_one = [scored(model, batch(queries[i:i + 1])).image_scores[0] for i in range(8)]
    np.testing.assert_allclose(together, one_by_one, rtol=1e-5, atol=1e-6)


def test_the_config_hash_changes_when_a_training_key_changes(trained):
    _, checkpoint, domain, tmp = trained
    other = adapter(tmp, training={**TINY["training"], "learning_rate": 1e-2, "epochs": 1})
    path = fit_source(other, domain, tmp / "ckpt", parse_setting("N2"))
    assert path != checkpoint and path.parent.name.startswith("k2-")
