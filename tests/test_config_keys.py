"""Config loading. A misspelt config key of a plug-in adapter is refused in one line, with the
closest name, by every command that opens methods: the check lives in the adapter base class
(Adapter.check_config), not in one caller. Then what an experiment file's keys become (datasets,
methods, the abnormal block) and the helpers it rests on (deep_merge, config_hash)."""

from __future__ import annotations

import re

import pytest
import yaml

from benchmark.cli import main
from benchmark.errors import GadbenchError
from conftest import write_experiment

PLUGIN = "examples/mean_patch_distance.py:MeanPatchDistance"
MISSPELT = {"name": "mpd", "adapter": PLUGIN, "label": "MPD", "config": {"input_size": 64, "blur_sigm": 2.0}}


def _one_line_refusal(capsys, code: int) -> str:
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "blur_sigm" in err and "did you mean 'blur_sigma'" in err
    return err


def test_run_refuses_a_misspelt_plugin_key(tmp_path, synthetic_root, capsys):
    experiment = write_experiment(tmp_path / "e.yaml", synthetic_root, methods=[MISSPELT], settings=["N1"], seeds=[0])
    code = main(["run", "-e", str(experiment), "--results", str(tmp_path / "results"), "--no-progress"])
    assert "method 'mpd'" in _one_line_refusal(capsys, code)
    assert not (tmp_path / "results" / "runs").exists()  # nothing written


def test_report_refuses_a_misspelt_plugin_key(tmp_path, synthetic_root, capsys):
    experiment = write_experiment(tmp_path / "e.yaml", synthetic_root, methods=[MISSPELT], settings=["N1"], seeds=[0])
    _one_line_refusal(capsys, main(["report", "-e", str(experiment), "--results", str(tmp_path / "results")]))
    assert not (tmp_path / "results" / "report.md").exists()


def test_bench_refuses_a_misspelt_override_before_any_process_starts(tmp_path, synthetic_root, capsys):
    bench = {"name": "b", "data_root": str(synthetic_root),
             "datasets": {"o": {"layout": "mvtec", "root": str(synthetic_root / "objects")},
                          "t": {"layout": "mvtec", "root": str(synthetic_root / "textures")}},
             "source": "o", "target": "t",
             "methods": [{"method": {"name": "mpd", "adapter": PLUGIN, "label": "MPD"}, "config": {"blur_sigm": 1.0}}]}
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(bench))
    code = main(["bench", "-e", str(path), "--results", str(tmp_path / "results"), "--device", "cpu"])
    _one_line_refusal(capsys, code)
    assert not (tmp_path / "results" / "efficiency").exists()


def test_a_misspelt_training_key_is_refused_too(tmp_path, synthetic_root, capsys):
    method = {"name": "n", "adapter": "nagl", "label": "N", "config": {"training": {"epochz": 1}}}
    experiment = write_experiment(tmp_path / "e.yaml", synthetic_root, methods=[method], settings=["N1+A1"], seeds=[0])
    code = main(["run", "-e", str(experiment), "--results", str(tmp_path / "results"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "unknown training key 'epochz'" in err and "'epochs'" in err


def test_deep_merge_overrides_key_by_key_and_never_shares_the_base():
    from benchmark.config import deep_merge

    base = {"backbone": "lite0", "training": {"epochs": 6, "milestones": [3, 5], "seed": 111}, "layers": [2, 3]}
    merged = deep_merge(base, {"training": {"epochs": 20, "extra": {"a": 1}}, "layers": [1], "proxies": 5})
    assert merged == {"backbone": "lite0", "training": {"epochs": 20, "milestones": [3, 5], "seed": 111, "extra": {"a": 1}},
                      "layers": [1], "proxies": 5}
    merged["training"]["milestones"].append(9)
    assert base["training"]["milestones"] == [3, 5]  # a deep copy: editing the result leaves the base alone
    assert deep_merge({"training": None}, {"training": {"epochs": 2}}) == {"training": {"epochs": 2}}


def test_config_hash_is_the_sha256_prefix_of_the_canonical_json():
    import hashlib
    from pathlib import Path

    from benchmark.config import config_hash

    value = {"b": [1, 2], "a": {"root": Path("/data"), "z": 1.5}}
    canonical = '{"a": {"root": "/data", "z": 1.5}, "b": [1, 2]}'  # keys sorted, a path as its text
    assert config_hash(value) == hashlib.sha256(canonical.encode()).hexdigest()[:16]
    assert config_hash({"a": {"z": 1.5, "root": Path("/data")}, "b": [1, 2]}) == config_hash(value)


def test_a_method_from_adapter_alone_takes_its_name_and_defaults_and_pickles_without_its_class():
    import pickle

    from benchmark.run.experiment import adapter_method

    spec = "examples/mean_patch_distance.py:MeanPatchDistance"
    method = adapter_method(spec)
    assert (method.name, method.adapter, method.label, method.config) == ("mean_patch_distance", spec, "mean_patch_distance", {})
    assert method.adapter_class.__name__ == "MeanPatchDistance"
    copy = pickle.loads(pickle.dumps(method))
    assert copy._adapter_class is None and copy == method  # a worker resolves the class itself
    assert copy.adapter_class.__name__ == "MeanPatchDistance"


def test_an_experiments_own_datasets_keep_every_declared_field(tmp_path, synthetic_root):
    """Inline datasets: every key reaches its DatasetSpec (a relative root under the data root, an
    absolute one as given); the defaults of the keys left out; the configured datasets stay."""
    from benchmark.run.experiment import load_experiment

    experiment_file = write_experiment(tmp_path / "e.yaml", synthetic_root, datasets={
        "full": {"layout": "mvtec", "root": "objects", "display": "Full", "mask_threshold": 3, "options": {"a": 1},
                 "max_per_group": 5, "test_images": 40, "test_megapixels": 1.5},
        "bare": {"layout": "mvtec", "root": str(synthetic_root / "textures")}},
        pairs=[["full", "bare"]], tables={"main": ["bare"]})
    experiment = load_experiment(experiment_file)
    full, bare = experiment.datasets["full"], experiment.datasets["bare"]
    assert (full.name, full.layout, full.root, full.display, full.mask_threshold, full.options, full.max_per_group,
            full.test_images, full.test_megapixels) == ("full", "mvtec", synthetic_root / "objects", "Full", 3, {"a": 1}, 5,
                                                        40, 1.5)
    assert (bare.root, bare.display, bare.mask_threshold, bare.options, bare.max_per_group, bare.test_images,
            bare.test_megapixels) == (synthetic_root / "textures", "", 127, {}, None, None, None)
    assert "mvtec" in experiment.datasets  # configs/datasets.yaml's entries remain
    with pytest.raises(GadbenchError, match=r"e.yaml: dataset 'broken'.*root"):
        load_experiment(write_experiment(tmp_path / "e.yaml", synthetic_root, datasets={"broken": {"layout": "mvtec"}}))


def test_a_run_can_narrow_the_methods_or_replace_them_by_an_adapter(tmp_path, synthetic_root):
    from benchmark.run.experiment import load_experiment

    two = [{"name": "a", "adapter": "normal_nn", "config": {"backbone": "lite0_imagenet"}},
           {"name": "b", "adapter": "normal_nn", "config": {"backbone": "lite0_imagenet"}}]
    experiment_file = write_experiment(tmp_path / "e.yaml", synthetic_root, methods=two)
    assert [m.name for m in load_experiment(experiment_file, methods=["b"]).methods] == ["b"]
    with pytest.raises(GadbenchError, match="'c'"):
        load_experiment(experiment_file, methods=["c"])
    replaced = load_experiment(experiment_file, adapter="examples/mean_patch_distance.py:MeanPatchDistance").methods
    assert [(m.name, m.adapter) for m in replaced] == [("mean_patch_distance", "examples/mean_patch_distance.py:MeanPatchDistance")]


@pytest.mark.parametrize("protocol, block, settings, fragment", [
    ("clean", 0, ["N1"], "abnormal_block must be a whole number >= 1, not 0"),
    ("clean", 1.5, ["N1"], "abnormal_block must be a whole number >= 1, not 1.5"),
    ("clean", 2, ["N1+A4", "N1+A1"], "setting with A4 needs protocol_options.abnormal_block >= 4 (it is 2)"),
    ("official", 1, ["N1+A4"], None),  # the official slices have no block
    ("clean", 1, ["N1"], None),
])
def test_the_abnormal_block_is_checked_against_the_settings(tmp_path, synthetic_root, protocol, block, settings, fragment):
    from benchmark.run.experiment import load_experiment

    experiment_file = write_experiment(tmp_path / "e.yaml", synthetic_root, settings=settings, protocol=protocol,
                                       protocol_options={"abnormal_block": block})
    if fragment is None:
        assert load_experiment(experiment_file).protocol_options["abnormal_block"] == block
    else:
        with pytest.raises(GadbenchError, match="^" + re.escape(f"{experiment_file}: ") + ".*" + re.escape(fragment)):
            load_experiment(experiment_file)


def test_a_named_method_under_another_label_and_the_messages_that_name_the_file():
    from benchmark.run.experiment import load_method

    relabelled = load_method({"use": "nagl_lite0", "label": "NAGL, relabelled"}, "e.yaml")
    assert (relabelled.name, relabelled.label) == ("nagl_lite0", "NAGL, relabelled")
    assert load_method({"use": "nagl_lite0"}, "e.yaml").label == load_method("nagl_lite0", "e.yaml").label == "NAGL (Lite0, short)"
    with pytest.raises(GadbenchError, match=r"^e.yaml: unknown method 'nagl_lite'; did you mean 'nagl_lite0'"):
        load_method({"use": "nagl_lite"}, "e.yaml")
    with pytest.raises(GadbenchError, match=r"^e.yaml: method 'nagl_lite0'.*'colour'"):
        load_method({"use": "nagl_lite0", "colour": "red"}, "e.yaml")


def test_an_experiment_is_named_after_its_file_unless_it_says(tmp_path, synthetic_root):
    from benchmark.run.experiment import load_experiment

    path = write_experiment(tmp_path / "my_grid.yaml", synthetic_root)
    data = yaml.safe_load(path.read_text())
    del data["name"]
    path.write_text(yaml.safe_dump(data))
    experiment = load_experiment(path)
    assert (experiment.name, experiment.description) == ("my_grid", "")
    path.write_text(yaml.safe_dump({**data, "name": "named", "description": "what it is"}))
    named = load_experiment(path)
    assert (named.name, named.description) == ("named", "what it is")


def test_a_malformed_yaml_file_is_named_with_its_line_and_problem(tmp_path):
    from benchmark.config import load_yaml

    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nsettings: [N1\nseeds: [0]\n")
    with pytest.raises(GadbenchError) as caught:
        load_yaml(bad)
    # the unclosed list is found where the next key starts, on line 3 (PyYAML counts from 0)
    assert str(caught.value) == f"{bad}: line 3: malformed YAML (expected ',' or ']', but got ':'); fix the syntax"
    bad.write_text("name: x\a\n")  # a control character: PyYAML's reader refuses it before parsing, with no line
    with pytest.raises(GadbenchError) as caught:
        load_yaml(bad)
    assert str(caught.value) == (f"{bad}: malformed YAML (unacceptable character #x0007: special characters are not"
                                 " allowed); fix the syntax")


def test_the_data_root_comes_from_the_caller_then_data_root_then_the_file(tmp_path, synthetic_root, monkeypatch):
    from benchmark.run.experiment import load_experiment

    path = write_experiment(tmp_path / "e.yaml", synthetic_root, datasets={
        "rel": {"layout": "mvtec", "root": "objects"}}, pairs=[["rel", "rel"]], tables={"main": ["rel"]})
    monkeypatch.delenv("DATA_ROOT", raising=False)
    assert load_experiment(path).datasets["rel"].root == synthetic_root / "objects"  # the file's data_root
    monkeypatch.setenv("DATA_ROOT", str(tmp_path / "env"))
    assert load_experiment(path).datasets["rel"].root == tmp_path / "env" / "objects"
    assert load_experiment(path, tmp_path / "arg").datasets["rel"].root == tmp_path / "arg" / "objects"
    data = yaml.safe_load(path.read_text())
    del data["seeds"]
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(GadbenchError, match="e.yaml.*seeds"):
        load_experiment(path)


def test_what_an_experiment_file_leaves_out_takes_its_documented_default(tmp_path, synthetic_root, monkeypatch):
    """No protocol: clean; no protocol_options: nested_block 4, abnormal_block 1; no tables: one
    'main' of the targets in pair order; no categories: all; a relative data_root is the
    project's, `~` and $VARS expanded; duplicate settings kept once, seeds as integers."""
    from benchmark.config import PROJECT_ROOT
    from benchmark.run.experiment import load_experiment

    monkeypatch.delenv("DATA_ROOT", raising=False)
    path = write_experiment(tmp_path / "e.yaml", synthetic_root, settings=["N1", "N^1", "N2+A1"], seeds=["2", 0],
                            pairs=[["tiny_textures", "tiny_objects"], ["tiny_objects", "tiny_textures"]])
    data = yaml.safe_load(path.read_text())
    for key in ("protocol", "tables"):
        data.pop(key, None)
    data["data_root"] = "$GADBENCH_TEST_ROOT/sub"
    monkeypatch.setenv("GADBENCH_TEST_ROOT", "relative")
    path.write_text(yaml.safe_dump(data))
    experiment = load_experiment(path)
    assert experiment.protocol == "clean" and experiment.protocol_options == {"nested_block": 4, "abnormal_block": 1}
    assert experiment.tables == {"main": {"targets": ["tiny_objects", "tiny_textures"], "mean": False, "kind": "main"}}
    assert experiment.categories == {} and experiment.data_root == PROJECT_ROOT / "relative" / "sub"
    assert [s.label for s in experiment.settings] == ["N1", "N2+A1"] and experiment.seeds == [2, 0]
    assert experiment.pairs == [("tiny_textures", "tiny_objects"), ("tiny_objects", "tiny_textures")]
    data.update(tables={"t": {"targets": ["tiny_objects"], "mean": 1, "kind": "coverage"}}, categories={"tiny_objects": ["a"]},
                protocol="official", protocol_options={"nested_block": 2})
    path.write_text(yaml.safe_dump(data))
    experiment = load_experiment(path)
    assert experiment.tables == {"t": {"targets": ["tiny_objects"], "mean": True, "kind": "coverage"}}
    assert experiment.categories == {"tiny_objects": ["a"]} and experiment.protocol == "official"
    assert experiment.protocol_options == {"nested_block": 2, "abnormal_block": 1}


def test_the_backbone_catalogue_is_a_fresh_copy_and_reread_when_its_file_changes(tmp_path, monkeypatch):
    import os

    from benchmark import config

    (tmp_path / "backbones.yaml").write_text("b: {channels: [1, 2]}\n")
    monkeypatch.setattr(config, "CONFIG_DIR", tmp_path)
    first = config.backbone_catalogue()
    first["b"]["channels"].append(3)  # a caller's edit never reaches the cached parse
    assert config.backbone_catalogue() == {"b": {"channels": [1, 2]}}
    (tmp_path / "backbones.yaml").write_text("b: {channels: [4]}\n")
    os.utime(tmp_path / "backbones.yaml", ns=(10**18, 10**18))  # a new mtime, however coarse the clock
    assert config.backbone_catalogue() == {"b": {"channels": [4]}}


def _experiment_data(path):
    return yaml.safe_load(path.read_text())


@pytest.mark.parametrize("key,value", [("pairs", []), ("settings", []), ("seeds", []), ("settings", "N1")])
def test_an_empty_or_non_list_grid_axis_is_refused_naming_it(tmp_path, synthetic_root, key, value):
    from benchmark.run.experiment import load_experiment

    path = write_experiment(tmp_path / "e.yaml", synthetic_root)
    data = _experiment_data(path)
    data[key] = value
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(GadbenchError, match="^" + re.escape(f"{path}: {key} must be a list of at least one entry, not {value!r}")):
        load_experiment(path)


def test_without_a_data_root_an_experiment_reads_the_projects_data_folder(tmp_path, synthetic_root, monkeypatch):
    from benchmark.config import PROJECT_ROOT
    from benchmark.run.experiment import load_experiment

    monkeypatch.delenv("DATA_ROOT", raising=False)
    path = write_experiment(tmp_path / "e.yaml", synthetic_root)
    data = _experiment_data(path)
    del data["data_root"]
    path.write_text(yaml.safe_dump(data))
    experiment = load_experiment(path)
    assert experiment.data_root == PROJECT_ROOT / "data" and experiment.path == path
    assert load_experiment(path, tmp_path).data_root == tmp_path  # absolute: kept


def test_what_is_wrong_in_an_experiment_file_is_named_with_the_file_and_the_place(tmp_path, synthetic_root):
    from benchmark.run.experiment import load_experiment

    path = write_experiment(tmp_path / "e.yaml", synthetic_root)
    good = _experiment_data(path)
    cases = [
        ({"pairs": [["tiny_objects", "tiny_textures", "tiny_objects"]]}, "a pair is [source, target], not"),
        ({"protocol_options": {"nested_blok": 2}}, "protocol_options: unknown key 'nested_blok'; did you mean 'nested_block'"),
        ({"tables": {"main": {"target": ["tiny_objects"]}}}, "table 'main': unknown key 'target'; did you mean 'targets'"),
        ({"tables": {"main": {"mean": True}}}, "table 'main': missing key 'targets'"),
        ({"methods": ["nagl_lite"]}, "unknown method 'nagl_lite'; did you mean 'nagl_lite0'"),
        ({"methods": [{"name": "x", "adapter": "normal_nn", "colour": 1}]}, "unknown key 'colour'"),
        ({"methods": [{"name": "x"}]}, "missing key 'adapter'"),
        ({"methods": [{"name": "x", "adapter": "normal_nn", "colour": 1, "sweep": {"seed": [1]}}]}, "unknown key 'colour'"),
    ]
    for change, message in cases:
        path.write_text(yaml.safe_dump({**good, **change}))
        with pytest.raises(GadbenchError, match="^" + re.escape(f"{path}: ") + ".*" + re.escape(message)):
            load_experiment(path)


def test_a_named_methods_own_file_is_named_when_it_is_wrong(tmp_path, monkeypatch):
    from benchmark.run import experiment as experiment_module

    (tmp_path / "methods").mkdir()
    (tmp_path / "methods" / "mine.yaml").write_text("adapter: normal_nn\ncolour: red\n")
    monkeypatch.setattr(experiment_module, "CONFIG_DIR", tmp_path)
    with pytest.raises(GadbenchError, match="^" + re.escape(f"{tmp_path / 'methods' / 'mine.yaml'}: unknown key 'colour'")):
        experiment_module.load_method("mine", "e.yaml")
    with pytest.raises(GadbenchError, match=r"^e\.yaml: unknown method 'mien'; did you mean 'mine'"):
        experiment_module.load_method("mien", "e.yaml")


def test_an_inline_method_without_a_label_is_shown_by_its_name_and_the_default_table_keeps_pair_order(tmp_path, synthetic_root):
    from benchmark.run.experiment import load_experiment

    path = write_experiment(tmp_path / "e.yaml", synthetic_root, pairs=[["tiny_textures", "tiny_textures"], ["tiny_textures", "tiny_objects"],
                                                                         ["tiny_objects", "tiny_textures"]],
                            methods=[{"name": "plain", "adapter": "normal_nn", "config": {"backbone": "lite0_imagenet", "input_size": 96}}])
    data = _experiment_data(path)
    del data["tables"]
    path.write_text(yaml.safe_dump(data))
    experiment = load_experiment(path)
    assert [m.label for m in experiment.methods] == ["plain"]
    assert experiment.tables["main"]["targets"] == ["tiny_textures", "tiny_objects"]  # first seen, not sorted


def test_a_training_free_method_has_one_cell_per_target_and_a_trained_one_one_per_pair(tmp_path, synthetic_root):
    from benchmark.run.experiment import load_experiment

    methods = [{"name": "nn", "adapter": "normal_nn", "config": {"backbone": "lite0_imagenet", "input_size": 96}}, "nagl_lite0"]
    pairs = [["tiny_textures", "tiny_objects"], ["tiny_objects", "tiny_objects"], ["tiny_objects", "tiny_textures"]]
    path = write_experiment(tmp_path / "e.yaml", synthetic_root, methods=methods, pairs=pairs, settings=["N1+A1"], seeds=[0])
    ids = [cell.id for cell, why_not in load_experiment(path).grid()]
    assert ids == ["nn/*->tiny_objects/N1+A1/seed0", "nn/*->tiny_textures/N1+A1/seed0",
                   "nagl_lite0/tiny_textures->tiny_objects/N1+A1/seed0", "nagl_lite0/tiny_objects->tiny_objects/N1+A1/seed0",
                   "nagl_lite0/tiny_objects->tiny_textures/N1+A1/seed0"]
