"""WinCLIP against anomalib 2.7's own WinClipModel (the reference implementation), on a random tiny
CLIP: the adapter's reference setup, cached text embeddings and squash preprocessing must give
anomalib's scores and maps."""

from __future__ import annotations

import hashlib
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image

from baselines.winclip import OPENAI_MEAN, OPENAI_STD, WinCLIPAdapter
from benchmark.api import ImageBatch, ReferenceSet
from benchmark.features.service import FeatureService
from benchmark.features.weights import WeightStore
from stored_features import scored
from tests.contexts import run_context

TINY = Path(__file__).resolve().parents[1] / "fixtures" / "tiny-clip.json"


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    import open_clip

    open_clip.add_model_config(TINY)
    torch.manual_seed(0)
    model = open_clip.create_model("tiny-clip")
    path = tmp_path_factory.mktemp("weights") / "tiny-clip.pt"
    torch.save(model.state_dict(), path)
    return path, model.state_dict()


def anomalib_winclip(state_dict):
    import anomalib.models.image.winclip.torch_model as winclip_torch_model

    with mock.patch.object(winclip_torch_model, "BACKBONE", "tiny-clip"), mock.patch.object(winclip_torch_model, "PRETRAINED", None):
        model = winclip_torch_model.WinClipModel(scales=(2, 3))
    model.clip.load_state_dict(state_dict)
    return model.eval()


def test_scores_and_maps_equal_anomalibs_winclip(tiny_weights):
    path, state = tiny_weights
    store = WeightStore(path.parent)
    config = {"clip_model": "tiny-clip", "clip_model_config": str(TINY), "image_size": 64, "class_names": "raw",
              "weights": {"file": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}}
    adapter = WinCLIPAdapter(config, run_context(torch.device("cpu"), store, FeatureService(store, torch.device("cpu")), None))
    torch.manual_seed(4)
    references, queries = torch.randn(2, 3, 64, 64), torch.randn(3, 3, 64, 64)
    size = [(64, 64)] * 3  # at the input size the paste-back is the identity
    adapter.set_references("metal_nut", ReferenceSet(references, ["r0", "r1"], size[:2], [{}, {}]), None)
    ours = scored(adapter, ImageBatch(queries, ["q0", "q1", "q2"], size, [{}] * 3))

    reference = anomalib_winclip(state)
    with torch.no_grad():
        reference.setup("metal_nut", references)
        expected = reference(queries)
    np.testing.assert_allclose(ours.image_scores, expected.pred_score.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.stack(ours.anomaly_maps), expected.anomaly_map.numpy(), rtol=1e-5, atol=1e-6)
    # the readable class name is a real switch: it changes the zero-shot branch
    adapter.config["class_names"] = "readable"
    adapter.set_references("pcb1", ReferenceSet(references, ["r0", "r1"], size[:2], [{}, {}]), None)
    readable = scored(adapter, ImageBatch(queries, ["q0", "q1", "q2"], size, [{}] * 3))
    with torch.no_grad():
        reference.setup("pcb1", references)
        raw = reference(queries)
    assert not np.allclose(readable.image_scores, raw.pred_score.numpy(), atol=1e-6)


def test_squash_preprocessing_matches_anomalibs_pre_processor():
    """anomalib's WinCLIP pre-processor: Resize((240, 240), bicubic, antialias) + CLIP Normalize on
    the image tensor; the harness resizes the 8-bit image with PIL's bicubic. Equal up to the
    8-bit rounding of PIL's output."""
    from anomalib.models.image.winclip.lightning_model import WinClip

    rng = np.random.default_rng(0)
    pixels = (rng.random((300, 420, 3)) * 255).astype(np.uint8)
    pixels = np.asarray(Image.fromarray(pixels).resize((105, 75)).resize((420, 300), Image.BICUBIC))  # smooth content
    transform = WinClip.configure_pre_processor().transform
    expected = transform(torch.from_numpy(pixels.copy()).permute(2, 0, 1).float()[None] / 255)[0]
    adapter = WinCLIPAdapter({"allow_random_weights": True}, run_context(torch.device("cpu"), None, None, None))
    ours = adapter.preprocessing().image(Image.fromarray(pixels))
    assert ours.shape == expected.shape == (3, 240, 240)
    assert (ours - expected).abs().max() < 2.5 / 255 / min(OPENAI_STD)
    crop = WinCLIPAdapter({"resize": "crop", "allow_random_weights": True}, run_context(torch.device("cpu"), None, None, None))
    assert (crop.preprocessing().image(Image.fromarray(pixels)) - expected).abs().max() > 0.5  # the crop is another view
    assert tuple(adapter.preprocessing().mean) == OPENAI_MEAN
