"""The disk tier of the feature cache: shared across runs and processes, safe under concurrent writes."""

import json
from concurrent.futures import ProcessPoolExecutor

import pytest
import torch

from benchmark.data.batches import load_batch
from benchmark.cli import main
from benchmark.features.disk_cache import DiskFeatureCache
from benchmark.features.service import FeatureService
from benchmark.api.preprocessing import Preprocessing
from benchmark.features.weights import WeightStore
from benchmark.errors import GadbenchError
from conftest import RunsACommand, write_experiment


def _cells(results):
    return [json.loads(p.read_text()) for p in sorted((results / "runs").rglob("*.json"))]


def test_a_second_run_of_the_grid_reports_only_cache_hits_and_equal_metrics(tmp_path, synthetic_root, capsys):
    experiment = write_experiment(tmp_path / "tiny.yaml", synthetic_root, settings=["N1"], seeds=[0, 1])
    cache = tmp_path / "cache"
    for results in ("first", "second"):  # two results folders: the second run recomputes every cell
        assert main(["run", "-e", str(experiment), "--results", str(tmp_path / results), "--cache-dir", str(cache),
                     "--no-progress"]) == 0
    first, second = _cells(tmp_path / "first"), _cells(tmp_path / "second")
    assert sum(c["provenance"]["feature_cache_misses"] for c in first) > 0
    assert all(c["provenance"]["feature_cache_misses"] == 0 for c in second)
    assert all(c["provenance"]["feature_cache_disk_hits"] > 0 for c in second[:1])  # a new process starts from disk
    assert [c["metrics"] for c in first] == [c["metrics"] for c in second]

    capsys.readouterr()
    assert main(["cache", "info", "--cache-dir", str(cache)]) == 0
    out = capsys.readouterr().out
    assert "lite0_imagenet@" in out and "total:" in out
    assert main(["cache", "clear", "--cache-dir", str(cache)]) == 0
    assert not cache.exists()


def test_cached_features_are_served_without_decoding_the_images(tmp_path, synthetic_root):
    rows = [{"path": str(p)} for p in sorted((synthetic_root / "objects").rglob("train/good/*.png"))[:3]]
    preprocessing = Preprocessing(size=64)
    store = WeightStore(tmp_path / "no-weights")
    service = FeatureService(store, torch.device("cpu"), disk=DiskFeatureCache(tmp_path / "cache"))
    handle = service.backbone("lite0_imagenet", 64)
    computed = service.extract(handle, load_batch(rows, preprocessing))
    fresh = FeatureService(store, torch.device("cpu"), disk=DiskFeatureCache(tmp_path / "cache"))
    batch = load_batch(rows, preprocessing)
    served = fresh.extract(fresh.backbone("lite0_imagenet", 64), batch)
    assert torch.equal(computed, served)
    assert not batch.decoded  # every feature came from disk
    assert fresh.counters()["feature_cache_disk_hits"] == 3 and fresh.counters()["feature_cache_misses"] == 0


def test_the_memory_tier_evicts_the_least_recently_used(tmp_path, synthetic_root):
    rows = [{"path": str(p)} for p in sorted((synthetic_root / "objects").rglob("train/good/*.png"))[:3]]
    service = FeatureService(WeightStore(tmp_path), torch.device("cpu"), memory_bytes=0)
    handle = service.backbone("lite0_imagenet", 64)
    for _ in range(2):
        service.extract(handle, load_batch(rows, Preprocessing(size=64)))
    assert service.counters()["feature_cache_misses"] == 6  # nothing fits in 0 bytes: no caching at all


def _write_many(args):
    root, value = args
    cache = DiskFeatureCache(root)
    for _ in range(30):
        cache.put("backbone@x", "image:prep", [torch.full((8, 4, 4), float(value))])
    return True


def test_two_processes_writing_one_entry_leave_a_whole_file(tmp_path):
    with ProcessPoolExecutor(2) as pool:
        assert all(pool.map(_write_many, [(tmp_path, 1), (tmp_path, 2)]))
    levels = DiskFeatureCache(tmp_path).get("backbone@x", "image:prep")
    assert levels is not None and levels[0].shape == (8, 4, 4) and levels[0].unique().numel() == 1
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.parametrize("content", [b"not a torch file", "pickle"])
def test_an_entry_that_is_not_a_tensor_file_is_refused_in_one_line(tmp_path, content):
    cache = DiskFeatureCache(tmp_path)
    cache.put("b", "k", [torch.zeros(2)])
    path = cache.path("b", "k")
    if content == "pickle":
        torch.save([torch.zeros(2), RunsACommand(tmp_path / "ran")], path)
    else:
        path.write_bytes(content)
    with pytest.raises(GadbenchError) as refused:
        cache.get("b", "k")
    message = str(refused.value)
    assert message.startswith(f"{path}: not a plain tensor file") and "gadbench cache clear" in message
    assert "\n" not in message and "weights_only=False" not in message
    assert not (tmp_path / "ran").exists()



def test_runners_of_one_process_build_a_frozen_model_once_and_the_bench_builds_its_own(tmp_path):
    """A grid and the report after it (two Runners) share a CLIP and its text embeddings; the
    efficiency bench's service (share_frozen=False) builds its own, so it times them cold."""
    from benchmark.run.experiment import load_experiment
    from benchmark.run.runner import Runner

    builds = []

    def build():
        builds.append(1)
        return object()

    key = ("test-only", tmp_path.name)
    experiment = load_experiment("configs/experiments/ci_mini.yaml")
    first, second = (Runner(experiment, tmp_path / name, show_progress=False) for name in ("grid", "report"))
    model = first.features.frozen_model(key, build)
    assert second.features.frozen_model(key, build) is model and len(builds) == 1
    private = FeatureService(WeightStore(tmp_path / "weights"), torch.device("cpu"), memory_bytes=0)
    assert private.frozen_model(key, build) is not model and len(builds) == 2
