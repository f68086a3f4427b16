"""The adapter contract, checked on every registered adapter and the documented example.

Each adapter (on a tiny configuration, trained where it trains) scores the same four queries of
three different original sizes, through the harness's own post-processing
(benchmark.run.engine.predict_at_original). What must hold for any method:
  - batch invariance: a query's score and map do not depend on the other queries in its batch;
  - maps come back at each image's original size (None for an image-level method), scores finite;
  - describe() names the method, its preprocessing and its parameter counts, in plain JSON;
  - a rerun from scratch (new adapter, training again with the same seed) gives the same numbers.
A new adapter in benchmark/registry.py fails here until it has a case below.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from benchmark import registry
from benchmark.api import NORMAL_ABNORMAL
from benchmark.data.batches import load_batch, load_references, training_data
from benchmark.data.mvtec import read_mvtec
from benchmark.data.settings import parse_setting
from benchmark.features.weights import WeightStore
from benchmark.run.engine import predict_at_original
from benchmark.run.experiment import MethodSpec
from benchmark.run.session import open_method

FIXTURES = Path(__file__).parent / "fixtures"
TINY_CLIP = {"clip_model": "tiny-clip", "clip_model_config": str(FIXTURES / "tiny-clip.json"), "image_size": 64,
             "weights": {"file": "tiny-clip.pt"}}
LITE0 = {"backbone": "lite0_imagenet"}
EXAMPLE = "examples/mean_patch_distance.py:MeanPatchDistance"
# adapter -> a configuration small enough for seconds on a CPU (trained ones with a short schedule)
CASES = {
    "normal_nn": {**LITE0, "input_size": 64},
    "nn_ablation": {**LITE0, "input_size": 64, "variant": "normal+abnormal"},
    "patchcore": {**LITE0, "layers": [2, 3], "resize": 72, "crop": 64, "feature_aggregation": "concat",
                  "coreset_ratio": 0.5, "coreset_sampler": "anomalib"},
    "winclip": TINY_CLIP,
    "inctrl": {**TINY_CLIP, "blocks": [1, 2], "training": {"epochs": 1, "steps_per_epoch": 2, "batch_size": 4}},
    "resad": {**LITE0, "image_size": 64, "coupling_layers": 2, "position_dim": 16,
              "training": {"epochs": 2, "first_stage_epochs": 1, "batch_size": 4, "milestones": [1],
                           "flow_rows_per_step": 256, "train_reference_shot": 1}},
    "nagl": {**LITE0, "input_size": 64, "proxies": 4,
             "training": {"epochs": 1, "episodes_per_epoch": 4, "batch_size": 2, "milestones": [1]}},
    EXAMPLE: {"input_size": 64},
}
ORIGINAL_SIZES = [(96, 96), (80, 130), (120, 72)]  # (height, width): square, wide, tall


def test_every_registered_adapter_has_a_contract_case():
    assert set(registry.ADAPTERS) <= set(CASES), "add a tiny configuration for the new adapter to CASES"


@pytest.fixture(scope="module")
def queries(tmp_path_factory, synthetic_root) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(category table with resized copies of the synthetic images at three sizes, source table)."""
    folder = tmp_path_factory.mktemp("contract")
    table = read_mvtec(synthetic_root / "objects")
    washer = table[table.category == "washer"]
    picked = pd.concat([washer[(washer.split == "train")].head(2), washer[(washer.split == "test") & (washer.label == 0)].head(2),
                        washer[washer.label == 1].head(3)])
    rows = []
    for i, record in enumerate(picked.to_dict("records")):
        height, width = ORIGINAL_SIZES[i % len(ORIGINAL_SIZES)]
        path = folder / f"{i}.png"
        Image.open(record["path"]).resize((width, height), Image.BICUBIC).save(path)
        mask = None
        if record["mask"]:
            mask = str(folder / f"{i}_mask.png")
            Image.open(record["mask"]).resize((width, height), Image.NEAREST).save(mask)
        rows.append({**record, "path": str(path), "mask": mask})
    return pd.DataFrame(rows), table[table.category != "washer"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    import open_clip

    folder = tmp_path_factory.mktemp("weights")
    open_clip.add_model_config(FIXTURES / "tiny-clip.json")
    torch.manual_seed(0)
    torch.save(open_clip.create_model("tiny-clip").state_dict(), folder / "tiny-clip.pt")
    return folder


def _scored(name: str, rows: pd.DataFrame, source: pd.DataFrame, workdir: Path, weights: Path):
    """A fresh adapter, opened as the harness opens one (trained if it trains); its references
    set; returns (adapter, query batch, scores, maps) for the four test queries."""
    method = MethodSpec(name, name, name, CASES[name])
    abnormal_too = NORMAL_ABNORMAL in method.adapter_class.supports
    adapter = open_method(method, device=torch.device("cpu"), weights=WeightStore(weights), workdir=workdir,
                          source=training_data("source", source), setting=parse_setting("N1+A1" if abnormal_too else "N1"),
                          checkpoints=workdir / "checkpoints").adapter
    preprocessing = adapter.preprocessing()
    normal = load_references(rows[rows.split == "train"], preprocessing, 127, with_masks=False)
    abnormal = load_references(rows[rows.label == 1].head(1), preprocessing, 127, with_masks=True) if abnormal_too else None
    adapter.set_references("washer", normal, abnormal)
    batch = load_batch(rows[rows.split == "test"].iloc[1:5], preprocessing)  # 1 normal + 3 defects
    scores, maps = predict_at_original(adapter, batch)
    return adapter, batch, scores, maps


@pytest.mark.parametrize("name", list(CASES))
def test_adapter_contract(name, queries, weights, tmp_path):
    rows, source = queries
    adapter, batch, scores, maps = _scored(name, rows, source, tmp_path / "first", weights)

    assert scores.shape == (len(batch),) and np.isfinite(scores).all()
    if adapter.pixel_level:
        assert [m.shape for m in maps] == batch.original_sizes  # at each image's own size
        assert all(np.isfinite(m).all() for m in maps)
        assert len(set(batch.original_sizes)) == 3
    else:
        assert maps is None

    # batch invariance: the same queries, one alone and three together
    preprocessing = adapter.preprocessing()
    parts = [predict_at_original(adapter, load_batch(pd.DataFrame(batch.samples[a:b]), preprocessing)) for a, b in ((0, 1), (1, 4))]
    np.testing.assert_allclose(np.concatenate([p[0] for p in parts]), scores, rtol=1e-4, atol=1e-5)
    if maps is not None:
        for got, want in zip([m for p in parts for m in p[1]], maps):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)

    described = adapter.describe()
    assert described["name"] == adapter.name and described["preprocessing"]["size"] == preprocessing.size
    assert {"parameters_total", "parameters_trainable"} <= set(described), f"{name}: describe() lacks parameter counts"
    assert json.loads(json.dumps(described)) == described  # plain JSON: it goes into every result row

    # a rerun from scratch, with its own training, gives the same numbers
    again, _, scores_again, maps_again = _scored(name, rows, source, tmp_path / "second", weights)
    np.testing.assert_array_equal(scores_again, scores)
    if maps is not None:
        for got, want in zip(maps_again, maps):
            np.testing.assert_array_equal(got, want)
    untimed = lambda d: {k: v for k, v in d.items() if not k.endswith("_seconds")}  # noqa: E731 (wall clock differs)
    assert untimed(again.describe()) == untimed(described)
