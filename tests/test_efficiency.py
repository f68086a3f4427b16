"""gadbench bench: the efficiency table measures real figures and never mixes devices in a column."""

import json
import statistics
import time

import pytest
import yaml

from benchmark.cli import main
from benchmark.bench.measure import timed_calls
from benchmark.bench.bursts import round_row, time_in_bursts
from benchmark.bench.measure import cpu_times, steal_share
from benchmark.bench.rounds import share_trained
from benchmark.features.backbones import build_backbone
from benchmark.features.weights import WeightStore


def _bench_file(tmp_path, synthetic_root):
    data = {
        "name": "efficiency_tiny", "data_root": str(synthetic_root),
        "datasets": {"tiny_objects": {"layout": "mvtec", "root": str(synthetic_root / "objects")},
                     "tiny_textures": {"layout": "mvtec", "root": str(synthetic_root / "textures")}},
        "source": "tiny_objects", "target": "tiny_textures", "batch_sizes": [1, 2], "min_seconds": 0.1,
        "methods": [{"method": {"name": "nn_tiny", "adapter": "normal_nn", "label": "NN tiny",
                                "config": {"backbone": "lite0_imagenet", "input_size": 64}}}],
    }
    path = tmp_path / "efficiency.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_bench_measures_a_method_and_writes_the_table_with_its_conditions(tmp_path, synthetic_root, capsys):
    bench = _bench_file(tmp_path, synthetic_root)
    results = tmp_path / "results"
    assert main(["bench", "-e", str(bench), "--results", str(results), "--device", "cpu"]) == 0
    row = json.loads((results / "efficiency" / "efficiency_tiny" / "cpu" / "nn_tiny.json").read_text())
    assert row["status"] == "done" and row["device"] == "cpu" and row["precision"] == "float32"
    assert row["image_size"] == 64 and row["best_batch"] in (1, 2)
    assert row["throughput_batch1"] > 0 and row["throughput_best"] >= row["throughput_batch1"]
    assert row["peak_memory_mib"] > 50 and row["memory_kind"] == "process peak RSS"
    backbone = build_backbone("lite0_imagenet", WeightStore(), 64)
    assert abs(row["parameters_total_m"] - sum(p.numel() for p in backbone.module.parameters()) / 1e6) < 1e-9
    assert row["parameters_trainable_m"] == 0
    csv = (results / "tables" / "efficiency_tiny" / "efficiency.csv").read_text()
    assert "device_name" in csv and "process peak RSS" in csv
    capsys.readouterr()
    assert main(["bench", "-e", str(bench), "--results", str(results), "--device", "cpu"]) == 0
    assert "measured before" in capsys.readouterr().out


def test_bench_interleaves_rounds_and_reports_medians_spreads_and_side_by_side_ratios(tmp_path, synthetic_root, capsys):
    data = yaml.safe_load(_bench_file(tmp_path, synthetic_root).read_text())
    small = {"method": {"name": "nn_small", "adapter": "normal_nn", "label": "NN small",
                        "config": {"backbone": "lite0_imagenet", "input_size": 32}}}
    data.update(rounds=2, batch_sizes=[1], methods=data["methods"] + [small])
    (tmp_path / "two.yaml").write_text(yaml.safe_dump(data))
    results = tmp_path / "results"
    assert main(["bench", "-e", str(tmp_path / "two.yaml"), "--results", str(results), "--device", "cpu"]) == 0
    order = [line.split(":")[0] for line in capsys.readouterr().out.splitlines() if ": round " in line]
    assert order == ["nn_tiny", "nn_small", "nn_tiny", "nn_small"]  # A B, A B: interleaved
    folder = results / "efficiency" / "efficiency_tiny" / "cpu"
    reference, other = (json.loads((folder / f"{m}.json").read_text()) for m in ("nn_tiny", "nn_small"))
    per_round = {m: r["per_batch"]["1"]["per_round"] for m, r in (("ref", reference), ("other", other))}
    assert other["rounds"] == 2 and len(per_round["other"]) == 2
    assert other["throughput_batch1"] == statistics.median(per_round["other"])
    spread = (max(per_round["other"]) - min(per_round["other"])) / statistics.median(per_round["other"])
    assert other["throughput_batch1_spread"] == spread and other["noisy"] == (spread > 0.2)
    assert reference["ratio_batch1"] == 1.0 and other["reference"] == "nn_tiny"
    # within a round the two processes' bursts alternate in time (A B, B A, ...), and each burst's
    # ratio is the reference's median call over the method's in the same cycle
    for round_index in range(2):
        own, ref = (r["per_batch"]["1"]["bursts_per_round"][round_index] for r in (other, reference))
        assert len(own) == len(ref) == 5
        starts = sorted([(b["began"], "own") for b in own] + [(b["began"], "ref") for b in ref])
        assert [who for _, who in starts] == ["ref", "own", "own", "ref", "ref", "own", "own", "ref", "ref", "own"]
        ratios = [r["median"] / o["median"] for o, r in zip(own, ref)]
        assert other["burst_ratios_per_round"][round_index] == pytest.approx(ratios)
        assert other["ratio_batch1_per_round"][round_index] == pytest.approx(statistics.median(ratios))
    assert other["ratio_batch1"] == statistics.median(other["ratio_batch1_per_round"])
    csv = (results / "tables" / "efficiency_tiny" / "efficiency.csv").read_text()
    assert "ratio_batch1" in csv and "throughput_batch1_spread" in csv
    # measuring one method again measures the reference beside it: ratios stay side by side
    assert main(["bench", "-e", str(tmp_path / "two.yaml"), "--results", str(results), "--device", "cpu",
                 "--method", "nn_small", "--force"]) == 0
    assert [line.split(":")[0] for line in capsys.readouterr().out.splitlines() if ": round " in line] == ["nn_tiny", "nn_small"] * 2


def test_cpu_and_gpu_rows_get_tables_of_their_own(tmp_path):
    from benchmark.outputs.efficiency_tables import write_efficiency_tables

    base = {"method": "m", "label": "M", "status": "done", "precision": "float32", "threads": 2, "image_size": 448,
            "parameters_total_m": 3.0, "parameters_trainable_m": 0.0, "throughput_batch1": 5.0, "best_batch": 4,
            "throughput_best": 9.0, "peak_memory_mib": 800.0, "source": "s"}
    for device, name, memory, steal in (("cpu", "AMD EPYC (2 cores)", "process peak RSS", 0.12),
                                        ("cuda", "NVIDIA H100", "CUDA max allocated", 0.0)):
        folder = tmp_path / "efficiency" / "bench" / device
        folder.mkdir(parents=True)
        (folder / "m.json").write_text(json.dumps({**base, "device": device, "device_name": name, "memory_kind": memory,
                                                   "cpu_steal_share": steal}))
    tex = write_efficiency_tables(tmp_path, "bench", echo=lambda *_: None)[1].read_text()
    blocks = tex.split(r"\begin{tabular}")[1:]
    assert len(blocks) == 2
    assert "CPU steal reached 12 \\%" in blocks[0] and "CPU steal" not in blocks[1]  # the busy host is named where it was
    captions = tex.split(r"\caption{")[1:]
    assert sum("NVIDIA H100" in c for c in captions) == 1 and sum("AMD EPYC" in c for c in captions) == 1


def test_estimate_counts_query_images_and_models_from_the_grid(tmp_path, synthetic_root):
    from benchmark.outputs.estimate import estimate
    from benchmark.run.experiment import load_experiment
    from conftest import write_experiment

    nagl = {"name": "nagl_tiny", "adapter": "nagl", "config": {"backbone": "lite0_imagenet", "input_size": 64}}
    nn = {"name": "nn_tiny", "adapter": "normal_nn", "config": {"backbone": "lite0_imagenet", "input_size": 64}}
    experiment = load_experiment(write_experiment(tmp_path / "e.yaml", synthetic_root, methods=[nagl, nn],
                                                  settings=["N1", "N2", "N1+A1", "N2+A1"], seeds=[0, 1, 2]))
    figures = {"nagl_tiny": {"images_per_second": 2.0, "training_seconds": 60.0},
               "nn_tiny": {"images_per_second": 4.0, "training_seconds": None}}
    table = estimate(experiment, figures).set_index("method")
    from benchmark.data import read_dataset

    tests = {name: int((read_dataset(experiment.datasets[name]).split == "test").sum()) for name in ("tiny_objects", "tiny_textures")}
    tests_per_domain = sum(tests.values()) / 2  # each domain is a target once
    # NAGL: 2 pairs x 2 settings x 3 seeds; one model per (source, k): 2 sources x 2 k
    assert table.loc["nagl_tiny", "query_images"] == 2 * 2 * 3 * tests_per_domain
    assert table.loc["nagl_tiny", "models"] == 4
    assert abs(table.loc["nagl_tiny", "total_hours"] - (12 * tests_per_domain / 2.0 + 4 * 60) / 3600) < 1e-12
    # normal NN: training-free, one cell per target (shared by sources), 2 settings x 3 seeds
    assert table.loc["nn_tiny", "query_images"] == 2 * 2 * 3 * tests_per_domain and table.loc["nn_tiny", "models"] == 0


def test_estimate_counts_evaluation_from_the_test_pixels_and_the_measured_cost(tmp_path, synthetic_root):
    """Evaluation = each pixel-level cell's test megapixels (read from the images' headers, or the
    documented test_megapixels when the data is absent) x the measured ms per megapixel."""
    from benchmark.data import read_dataset
    from benchmark.data.images import image_size
    from benchmark.outputs.estimate import estimate
    from benchmark.run.experiment import load_experiment
    from conftest import write_experiment

    nn = {"name": "nn_tiny", "adapter": "normal_nn", "config": {"backbone": "lite0_imagenet", "input_size": 64}}
    absent = {"layout": "mvtec", "root": str(tmp_path / "not_here"), "test_images": 10, "test_megapixels": 7.5}
    experiment = load_experiment(write_experiment(
        tmp_path / "e.yaml", synthetic_root, methods=[nn], settings=["N1"], seeds=[0, 1],
        pairs=[["tiny_objects", "tiny_textures"], ["tiny_objects", "elsewhere"]],
        datasets={"tiny_objects": {"layout": "mvtec", "root": str(synthetic_root / "objects")},
                  "tiny_textures": {"layout": "mvtec", "root": str(synthetic_root / "textures")}, "elsewhere": absent},
        tables={"main": ["tiny_textures"]}))
    table = estimate(experiment, {"nn_tiny": {"images_per_second": 4.0, "training_seconds": None,
                                              "evaluation_ms_per_mpx": 20.0}}).set_index("method")
    textures = read_dataset(experiment.datasets["tiny_textures"])
    pixels = sum(h * w for h, w in map(image_size, textures[textures.split == "test"].path)) / 1e6
    expected = 2 * (pixels + 7.5) * 20.0 / 1e3 / 3600  # two seeds of each target
    assert table.loc["nn_tiny", "evaluation_hours"] == pytest.approx(expected, rel=1e-12)
    assert table.loc["nn_tiny", "total_hours"] == pytest.approx(expected + 2 * (len(textures[textures.split == "test"]) + 10)
                                                                / 4.0 / 3600, rel=1e-12)


def test_cpu_steal_is_the_share_of_all_cpu_time_the_host_took_in_between():
    assert steal_share((100, 10_000), (130, 10_200)) == pytest.approx(30 / 200)
    assert steal_share(None, (1, 2)) is None and steal_share((5, 100), (5, 100)) is None
    steal, total = cpu_times()  # this machine's /proc/stat: user nice system idle iowait irq softirq steal
    assert 0 <= steal <= total and total > 0


@pytest.mark.parametrize("line, message", [
    ("batch_size: [1]", "bad.yaml: unknown key 'batch_size'; did you mean 'batch_sizes'"),
    ("bursts: 0", "bad.yaml: bursts must be a whole number of at least 1, not 0")])
def test_a_bad_efficiency_file_is_one_line_and_exit_2(tmp_path, capsys, line, message):
    path = tmp_path / "bad.yaml"
    path.write_text(f"name: x\nsource: a\ntarget: b\nmethods: [normal_nn_lite0]\n{line}\n")
    assert main(["bench", "-e", str(path), "--results", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_throughput_is_taken_from_the_median_call_so_one_burst_of_load_does_not_move_it():
    durations = iter([0.0, 0.01, 0.4, 0.01])  # warm-up, then one call slowed by a burst of load
    calls = timed_calls(lambda: time.sleep(next(durations)), warmup=1, min_calls=3, min_seconds=0.0)
    assert len(calls) == 3 and calls[1] >= 0.4
    row = round_row({2: {"calls": calls, "bursts": [], "peak_memory_mib": 1.0}}, None)
    # the mean call is 0.14 s; the median is one of the 0.01 s calls
    call_seconds = row["per_batch"][2]["seconds_per_call"]
    assert 0.01 <= call_seconds < 0.1 and abs(row["per_batch"][2]["images_per_second"] - 2 / call_seconds) < 1e-12


def _fake_methods(per_image: dict, loads: list[float], log: list):
    """Burst functions whose calls take per_image[method] x size x the machine's load, the load
    changing after every burst cycle (one burst of each method)."""
    def burst(method):
        def run(size, warmup, min_calls, min_seconds):
            load = loads[len(log) // len(per_image) % len(loads)]
            log.append((method, size, warmup))
            return {"began": float(len(log)), "calls": [per_image[method] * size * load] * min_calls, "peak_memory_mib": 1.0}
        return run
    return {method: burst(method) for method in per_image}


def test_bursts_alternate_between_methods_and_ratios_are_taken_burst_by_burst():
    log, loads = [], [1.0, 3.0, 1.5, 6.0]  # the machine's load changes 6-fold from cycle to cycle
    bench = {"bursts": 4, "min_seconds": 1.0, "warmup": 2, "batch_sizes": [1], "max_batch_seconds": 10.0}
    timings = time_in_bursts(bench, _fake_methods({"ref": 0.01, "other": 0.04}, loads, log))
    assert [m for m, _, _ in log] == ["ref", "other", "other", "ref", "ref", "other", "other", "ref"]
    assert [w for _, _, w in log] == [2, 2, 0, 0, 0, 0, 0, 0]  # warm-up before each method's first burst only
    row = round_row(timings["other"], timings["ref"])
    assert row["burst_ratios"] == pytest.approx([0.25] * 4) and row["ratio_batch1"] == pytest.approx(0.25)
    # the absolute figure moves with the load; the side-by-side ratio does not
    assert max(b["median"] for b in timings["ref"][1]["bursts"]) == pytest.approx(6 * min(b["median"] for b in timings["ref"][1]["bursts"]))


def test_a_batch_size_expected_to_exceed_max_batch_seconds_is_not_timed():
    bench = {"bursts": 3, "min_seconds": 0.0, "warmup": 0, "batch_sizes": [2, 4, 32], "max_batch_seconds": 0.1}
    timings = time_in_bursts(bench, _fake_methods({"fast": 0.01, "slow": 0.05}, [1.0], []))
    # fast: batch 4 is expected at 0.04 s a call, 32 at 0.32 s; slow: batch 2 at 0.1 s, 4 at 0.2 s
    assert sorted(timings["fast"]) == [1, 2, 4] and sorted(timings["slow"]) == [1, 2]
    # the later rounds time exactly the sizes the first one did
    again = time_in_bursts(bench, _fake_methods({"fast": 0.01, "slow": 0.05}, [1.0], []), sizes={"fast": [1, 32], "slow": [1]})
    assert sorted(again["fast"]) == [1, 32] and sorted(again["slow"]) == [1]


def test_share_trained_copies_each_checkpoint_once_and_never_replaces_one(tmp_path):
    trained, destination = tmp_path / "bench", tmp_path / "checkpoints"
    for name, text in (("k1-aaa", "one"), ("k2-bbb", "two")):
        (trained / name).mkdir(parents=True)
        (trained / name / "model.pt").write_text(text)
        (trained / name / "training_state.pt").write_text("state")
    (destination / "k2-bbb").mkdir(parents=True)
    (destination / "k2-bbb" / "model.pt").write_text("already here")
    assert share_trained(trained, destination) == [destination / "k1-aaa" / "model.pt"]
    assert (destination / "k1-aaa" / "model.pt").read_text() == "one"
    assert not (destination / "k1-aaa" / "training_state.pt").exists()
    assert (destination / "k2-bbb" / "model.pt").read_text() == "already here"


def test_a_grid_loads_the_checkpoint_the_bench_trained_instead_of_training_again(tmp_path, synthetic_root, capsys):
    from conftest import write_experiment

    nagl = {"name": "nagl_tiny", "adapter": "nagl", "label": "NAGL tiny",
            "config": {"backbone": "lite0_imagenet", "input_size": 64, "proxies": 4,
                       "training": {"epochs": 1, "episodes_per_epoch": 4, "batch_size": 4, "learning_rate": 1e-3,
                                    "milestones": [1]}}}
    data = yaml.safe_load(_bench_file(tmp_path, synthetic_root).read_text())
    data.update(rounds=1, batch_sizes=[1], min_seconds=0.0, reference="nagl_tiny", methods=[{"method": nagl}])
    (tmp_path / "bench.yaml").write_text(yaml.safe_dump(data))
    results = tmp_path / "results"
    assert main(["bench", "-e", str(tmp_path / "bench.yaml"), "--results", str(results), "--device", "cpu",
                 "--checkpoints", str(results / "checkpoints")]) == 0
    steps = [line.split(" on ")[0] for line in capsys.readouterr().out.splitlines() if line.startswith("nagl_tiny: ")]
    assert steps == ["nagl_tiny: training", "nagl_tiny: round 1/1"]  # trained in a process of its own, then timed
    row = json.loads((results / "efficiency" / "efficiency_tiny" / "cpu" / "nagl_tiny.json").read_text())
    assert row["training_seconds"] > 0  # the bench trained it, from scratch, and timed it
    (shared,) = (results / "checkpoints" / "nagl_tiny" / "tiny_objects").glob("*/model.pt")
    experiment = write_experiment(tmp_path / "e.yaml", synthetic_root, methods=[nagl], settings=["N1+A1"], seeds=[0],
                                  pairs=[["tiny_objects", "tiny_textures"]])
    assert main(["run", "-e", str(experiment), "--results", str(results), "--no-progress"]) == 0
    (cell,) = [json.loads(p.read_text()) for p in (results / "runs").rglob("*.json")]
    assert cell["status"] == "done" and cell["checkpoint"] == str(shared)
    assert not (shared.parent / "training_state.pt").exists()  # loaded, not trained again
