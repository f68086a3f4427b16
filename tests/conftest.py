"""Shared fixtures: tiny synthetic domains and experiment files that run in seconds."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from benchmark.data.synthetic import generate

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TINY_COUNTS = {"train_good": 8, "test_good": 3, "test_per_defect": 2}


def pytest_collection_modifyitems(items):
    """The slow files first (stable otherwise): under pytest-xdist (run_tests.sh: one worker per
    core, files kept whole) the rehearsal starts at once on one worker while the others share the
    rest, instead of starting last and running alone."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    generate(root / "objects", "objects", seed=0, size=96, counts=TINY_COUNTS)
    generate(root / "textures", "textures", seed=0, size=96, counts=TINY_COUNTS)
    return root


def write_experiment(path: Path, synthetic_root: Path, methods=None, settings=("N1", "N2"), seeds=(0, 1), **extra) -> Path:
    data = {
        "name": "tiny",
        "protocol": "clean",
        "data_root": str(synthetic_root),
        "datasets": {
            "tiny_objects": {"layout": "mvtec", "root": str(synthetic_root / "objects"), "display": "Objects"},
            "tiny_textures": {"layout": "mvtec", "root": str(synthetic_root / "textures"), "display": "Textures"},
        },
        "pairs": extra.pop("pairs", [["tiny_objects", "tiny_textures"], ["tiny_textures", "tiny_objects"]]),
        "settings": list(settings),
        "seeds": list(seeds),
        "methods": methods or [{"name": "nn_tiny", "adapter": "normal_nn", "label": "NN tiny",
                                "config": {"backbone": "lite0_imagenet", "input_size": 96}}],
        "tables": {"main": ["tiny_textures", "tiny_objects"]},
        **extra,
    }
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
def tiny_experiment(tmp_path, synthetic_root) -> Path:
    return write_experiment(tmp_path / "tiny.yaml", synthetic_root)


class RunsACommand:
    """A pickled object whose unpickling creates a file (as a malicious one would run a command):
    every tensor-file load must refuse it before anything runs."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))
