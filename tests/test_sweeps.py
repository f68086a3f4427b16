"""Method variants swept in an experiment file (benchmark/run/sweeps.py)."""

from pathlib import Path

import pytest
import yaml

from benchmark.errors import GadbenchError
from benchmark.run.experiment import load_experiment
from conftest import write_experiment

NAGL = {"name": "nagl_tiny", "adapter": "nagl", "label": "NAGL tiny",
        "config": {"backbone": "lite0_imagenet", "input_size": 64, "proxies": 25, "training": {"epochs": 2}}}


def methods_of(tmp_path, synthetic_root, entry):
    path = write_experiment(tmp_path / "e.yaml", synthetic_root, methods=[entry], settings=["N1+A1"], seeds=[0])
    return load_experiment(path).methods


def test_a_sweep_gives_one_method_per_value_each_its_own_identity(tmp_path, synthetic_root):
    variants = methods_of(tmp_path, synthetic_root, {**NAGL, "sweep": {"proxies": [5, 25, 50]}})
    assert [m.name for m in variants] == ["nagl_tiny@proxies=5", "nagl_tiny@proxies=25", "nagl_tiny@proxies=50"]
    assert [m.label for m in variants] == ["NAGL tiny, proxies=5", "NAGL tiny, proxies=25", "NAGL tiny, proxies=50"]
    assert [m.config["proxies"] for m in variants] == [5, 25, 50]
    assert all(m.config["training"] == {"epochs": 2} and m.config["backbone"] == "lite0_imagenet" for m in variants)
    assert len({m.hash for m in variants}) == 3  # three cell keys, three checkpoint identities
    assert NAGL["config"]["proxies"] == 25  # the base config is not changed in place


def test_nested_keys_and_several_keys_give_every_combination(tmp_path, synthetic_root):
    sweep = {"training.learning_rate": [1e-4, 1e-5], "heads": [2, 4]}
    variants = methods_of(tmp_path, synthetic_root, {**NAGL, "sweep": sweep})
    assert [(m.config["training"]["learning_rate"], m.config["heads"]) for m in variants] == \
        [(1e-4, 2), (1e-4, 4), (1e-5, 2), (1e-5, 4)]
    assert variants[0].name == "nagl_tiny@training.learning_rate=0.0001,heads=2"
    assert all(m.config["training"]["epochs"] == 2 for m in variants)


def test_a_named_method_can_be_swept(tmp_path, synthetic_root):
    variants = methods_of(tmp_path, synthetic_root, {"use": "nagl_lite0", "sweep": {"proxies": [5]}})
    assert [(m.name, m.config["proxies"], m.config["training"]["epochs"]) for m in variants] == [("nagl_lite0@proxies=5", 5, 6)]


@pytest.mark.parametrize("sweep, fragment", [
    ({"proxy": [5]}, "unknown config key 'proxy'"),
    ({"proxies": []}, "sweep 'proxies' needs a non-empty list of values"),
    ({"proxies": 5}, "sweep 'proxies' needs a non-empty list of values"),
    ([5], "sweep is a mapping of config keys to lists of values"),
])
def test_a_wrong_sweep_is_one_line_naming_the_file_and_key(tmp_path, synthetic_root, sweep, fragment):
    with pytest.raises(GadbenchError) as refused:
        methods_of(tmp_path, synthetic_root, {**NAGL, "sweep": sweep})
    assert fragment in str(refused.value) and str(tmp_path / "e.yaml") in str(refused.value)
    assert "\n" not in str(refused.value)


def test_the_probe_experiment_sweeps_the_proxies():
    data = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "experiments" / "nagl_probes_mini.yaml").read_text())
    assert {"use": "nagl_lite0_paper", "sweep": {"proxies": [8]}} in data["methods"]


def test_a_dotted_key_creates_missing_levels_and_list_values_name_the_variant():
    from benchmark.run.sweeps import _shown, with_value

    config = {"training": {"epochs": 6}}
    assert with_value(config, "training.schedule.milestones", [3, 5]) == {
        "training": {"epochs": 6, "schedule": {"milestones": [3, 5]}}}
    assert with_value({}, "a.b.c", 1) == {"a": {"b": {"c": 1}}}
    assert config == {"training": {"epochs": 6}}  # the method's own config is left alone
    assert _shown([2, 3]) == "2-3" and _shown((448, 518)) == "448-518" and _shown(0.5) == "0.5"
