"""Every default that changes a number is pinned to its source: the table "Defaults and their
sources" of docs/protocol.md against the method configs, the adapters' defaults and the
preprocessing they yield; every key of those configs must be in the table; and where anomalib is
installed, its values for WinCLIP and PatchCore must still be the ones the table cites."""

import dataclasses
import re
from pathlib import Path

import pytest
import torch
import yaml

from benchmark.features.weights import WeightStore
from benchmark.run.experiment import load_method
from benchmark.run.session import open_method

PROJECT = Path(__file__).resolve().parents[1]
# what the table need not list: where a file comes from, not what it computes
NOT_NUMBERS = {"weights.sha256", "weights.sha256_prefix", "weights.url"}


def table() -> list[tuple[str, str, object]]:
    text = (PROJECT / "docs" / "protocol.md").read_text()
    block = text.split("<!-- defaults-table:begin -->")[1].split("<!-- defaults-table:end -->")[0]
    rows = []
    for line in block.strip().splitlines()[2:]:  # past the header and its rule
        config, key, value, _source = (cell.strip() for cell in line.strip().strip("|").split("|", 3))
        rows.append((config, key, yaml.safe_load(value)))
    return rows


def flattened(config: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(flattened(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


_ADAPTERS = {}


def adapter(config_name: str, own_defaults: bool = False):
    """The adapter as the method config opens it, or with its class's own defaults alone."""
    if (config_name, own_defaults) not in _ADAPTERS:
        method = load_method(config_name, "docs/protocol.md")
        if own_defaults:
            method = dataclasses.replace(method, config={})
        opened = open_method(method, device=torch.device("cpu"), weights=WeightStore(), workdir=PROJECT).adapter
        _ADAPTERS[config_name, own_defaults] = opened
    return _ADAPTERS[config_name, own_defaults]


def effective(opened, key: str):
    """The value the method runs with: its config, NAGL's training schedule as TrainConfig fills
    it, or its preprocessing."""
    if key.startswith("preprocessing."):
        value = getattr(opened.preprocessing(), key.split(".", 1)[1])
        return list(value) if isinstance(value, tuple) else value
    if key.startswith("training.") and hasattr(opened, "train_config"):
        value = getattr(opened.train_config(), key.split(".", 1)[1])
        return list(value) if isinstance(value, tuple) else value
    return flattened(opened.config)[key]


def same(actual, documented) -> bool:
    if isinstance(documented, float) or isinstance(actual, float):
        return actual == pytest.approx(documented, rel=1e-12)
    return actual == documented


ROWS = table()


def test_the_table_is_read_whole():
    assert len(ROWS) >= 90 and len({(c, k) for c, k, _ in ROWS}) == len(ROWS)  # no row twice
    assert {c for c, _, _ in ROWS} == {"nagl", "normal_nn_dinov2", "patchcore", "winclip", "inctrl", "resad"}


@pytest.mark.parametrize("config_name, key, documented", ROWS, ids=[f"{c}:{k}" for c, k, _ in ROWS])
def test_each_default_is_the_documented_one(config_name, key, documented):
    actual = effective(adapter(config_name), key)
    assert same(actual, documented), f"{config_name} {key}: {actual!r}, the table says {documented!r}"


@pytest.mark.parametrize("config_name, key, documented", ROWS, ids=[f"{c}:{k}" for c, k, _ in ROWS])
def test_the_adapters_own_defaults_are_the_documented_ones(config_name, key, documented):
    """A config that leaves a key out gets the adapter's default: it must be the table's too."""
    actual = effective(adapter(config_name, own_defaults=True), key)
    assert same(actual, documented), f"{config_name}'s adapter default {key}: {actual!r}, the table says {documented!r}"


@pytest.mark.parametrize("config_name", sorted({c for c, _, _ in ROWS}))
def test_every_key_a_method_config_sets_is_in_the_table(config_name):
    written = yaml.safe_load((PROJECT / "configs" / "methods" / f"{config_name}.yaml").read_text())["config"]
    documented = {k for c, k, _ in ROWS if c == config_name}
    assert set(flattened(written)) - NOT_NUMBERS <= documented


def documented(config_name: str, key: str):
    return next(value for c, k, value in ROWS if (c, k) == (config_name, key))


def test_anomalib_still_has_the_winclip_values_the_table_cites():
    pytest.importorskip("anomalib")
    import inspect

    from anomalib.models import WinClip
    from anomalib.models.image.winclip import torch_model
    from torchvision.transforms.v2 import InterpolationMode, Normalize, Resize

    assert torch_model.BACKBONE == documented("winclip", "clip_model")
    assert f"-{torch_model.PRETRAINED}-" in documented("winclip", "weights.file")
    assert list(inspect.signature(torch_model.WinClipModel.__init__).parameters["scales"].default) == documented("winclip", "scales")
    steps = {type(step): step for step in WinClip.configure_pre_processor().transform.transforms}
    assert list(steps[Resize].size) == [documented("winclip", "image_size")] * 2  # a square: squashed
    assert steps[Resize].interpolation == InterpolationMode.BICUBIC
    assert documented("winclip", "preprocessing.interpolation") == "bicubic"
    assert list(steps[Normalize].mean) == documented("winclip", "preprocessing.mean")
    assert list(steps[Normalize].std) == documented("winclip", "preprocessing.std")


def test_anomalib_still_has_the_patchcore_values_the_table_cites():
    pytest.importorskip("anomalib")
    import inspect

    from anomalib.models import Patchcore

    defaults = {name: p.default for name, p in inspect.signature(Patchcore.__init__).parameters.items()}
    assert defaults["backbone"] == "wide_resnet50_2" and documented("patchcore", "backbone").startswith("wide_resnet50_2")
    assert [int(re.sub(r"\D", "", layer)) for layer in defaults["layers"]] == documented("patchcore", "layers")
    assert defaults["num_neighbors"] == documented("patchcore", "reweight_neighbors")
    assert defaults["coreset_sampling_ratio"] == 0.1  # the table's "differs" note for coreset_ratio cites it


def test_the_lite0_paper_config_trains_on_the_papers_schedule():
    """configs/methods/nagl_lite0_paper.yaml: NAGL's schedule exactly, on the Lite0 stand-in, labelled."""
    paper, lite0 = adapter("nagl"), adapter("nagl_lite0_paper")
    assert lite0.train_config() == paper.train_config()
    assert lite0.config["backbone"] == "lite0_imagenet" and "paper schedule" in load_method("nagl_lite0_paper", "test").label
    assert adapter("nagl_lite0").train_config() != paper.train_config()  # the embedded default's is short
