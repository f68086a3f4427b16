"""Experiment YAML -> a validated grid of methods x domain pairs x settings x seeds."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from benchmark import registry
from benchmark.config import CONFIG_DIR, PROJECT_ROOT, check_keys, config_hash, load_yaml
from benchmark.data import DatasetSpec
from benchmark.errors import GadbenchError, closest
from benchmark.data.reference_rules import PROTOCOLS
from benchmark.data.settings import Setting, parse_setting
from benchmark.run.sweeps import expand

EXPERIMENT_KEYS = {"name", "description", "protocol", "protocol_options", "data_root", "datasets", "pairs",
                   "settings", "seeds", "methods", "tables", "categories"}
DATASET_KEYS = {"layout", "root", "display", "mask_threshold", "options", "max_per_group", "test_images", "test_megapixels"}
METHOD_KEYS = {"name", "adapter", "label", "config", "description"}
TABLE_KEYS = {"targets", "mean", "kind"}
TABLE_KINDS = ("main", "abnormal_shots", "coverage", "proxies")  # benchmark/outputs/question_tables.py
PROTOCOL_OPTION_KEYS = {"nested_block", "abnormal_block"}


@dataclass
class MethodSpec:
    name: str
    adapter: str
    label: str
    config: dict = field(default_factory=dict)
    _adapter_class: type | None = field(default=None, repr=False, compare=False)

    @property
    def hash(self) -> str:
        return config_hash({"adapter": self.adapter, "config": self.config})

    def __getstate__(self):  # workers resolve the class themselves (a plug-in file is no importable module)
        return {**self.__dict__, "_adapter_class": None}

    @property
    def adapter_class(self):
        """The adapter class, resolved once per spec (a plug-in module is imported once)."""
        if self._adapter_class is None:
            self._adapter_class = registry.resolve(self.adapter)
        return self._adapter_class


@dataclass
class Cell:
    """One unit of work: a method on a target (trained on a source, if it trains), a setting, a seed."""

    method: MethodSpec
    source: str  # '*' for methods that do not train on the source: one cell serves every pair
    target: str
    setting: Setting
    seed: int

    @property
    def id(self) -> str:
        return f"{self.method.name}/{self.source}->{self.target}/{self.setting.label}/seed{self.seed}"


@dataclass
class Experiment:
    name: str
    path: Path
    protocol: str
    protocol_options: dict
    data_root: Path
    datasets: dict[str, DatasetSpec]
    pairs: list[tuple[str, str]]
    settings: list[Setting]
    seeds: list[int]
    methods: list[MethodSpec]
    tables: dict[str, dict]  # name -> {targets: [...], mean: bool (add a column averaging every value)}
    categories: dict[str, list[str]]
    description: str = ""
    # at most this many queries per category (`gadbench run --limit`, rehearsals); None: all
    limit: int | None = None
    # a rehearsal on stand-in data (benchmark/run/rehearsal.py): every row is marked, the gate refuses it
    rehearsal: bool = False

    @property
    def runs_folder(self) -> str:
        """The folder of its cell files under results/runs/: the protocol, and for a clean
        abnormal block other than 1 the block too (another block scores other queries)."""
        block = self.protocol_options.get("abnormal_block", 1)
        return self.protocol + (f"_block{block}" if self.protocol == "clean" and block != 1 else "")

    @property
    def keyed_protocol_options(self) -> dict:
        """The protocol options as part of a cell's key: abnormal_block at its default (1) is left
        out, so cells computed before the option existed keep their keys."""
        return {k: v for k, v in self.protocol_options.items() if not (k == "abnormal_block" and v == 1)}

    def grid(self) -> list[tuple[Cell, str | None]]:
        """Every cell of the grid, once (training-free methods share one cell across sources),
        with None, or why its method cannot run its setting (an 'n/a' cell: never run)."""
        cells, seen = [], set()
        for method in self.methods:
            adapter_class = method.adapter_class
            for source, target in self.pairs:
                src = source if adapter_class.trains_on_source else "*"
                for setting in self.settings:
                    why_not = adapter_class.setting_support(setting)
                    for seed in self.seeds:
                        cell = Cell(method, src, target, setting, seed)
                        if cell.id not in seen:
                            seen.add(cell.id)
                            cells.append((cell, why_not))
        return cells

    def cells(self) -> list[Cell]:
        """The cells to run: the grid without its 'n/a' cells."""
        return [cell for cell, why_not in self.grid() if why_not is None]


def _expand(value: str) -> str:
    return os.path.expandvars(os.path.expanduser(value))


def load_method(entry, where: str) -> MethodSpec:
    """A method is a name of configs/methods/<name>.yaml, an inline mapping, or {use: <name>,
    label: ...} to show a named method under another label (its cells stay shared). Either
    mapping may add `sweep:` in an experiment file (load_methods)."""
    if isinstance(entry, dict) and "use" in entry:
        check_keys(f"{where}: method {entry['use']!r}", entry, {"use", "label"})
        method = load_method(entry["use"], where)
        method.label = entry.get("label", method.label)
        return method
    if isinstance(entry, str):
        path = CONFIG_DIR / "methods" / f"{entry}.yaml"
        if not path.is_file():
            known = [p.stem for p in (CONFIG_DIR / "methods").glob("*.yaml")]
            raise GadbenchError(f"{where}: unknown method {entry!r}{closest(entry, known)}")
        data = load_yaml(path)
        data.setdefault("name", entry)
        where = str(path)
    elif isinstance(entry, dict):
        data = dict(entry)
    else:
        raise GadbenchError(f"{where}: a method is a name or a mapping, not {entry!r}")
    check_keys(where, data, METHOD_KEYS, {"name", "adapter"})
    return MethodSpec(data["name"], data["adapter"], data.get("label", data["name"]), data.get("config") or {})


def load_methods(entry, where: str) -> list[MethodSpec]:
    """A method entry of an experiment file: one method, or the variants its `sweep:` asks for
    (benchmark/run/sweeps.py)."""
    if not (isinstance(entry, dict) and "sweep" in entry):
        return [load_method(entry, where)]
    return expand(load_method({k: v for k, v in entry.items() if k != "sweep"}, where), entry["sweep"], where)


def adapter_method(spec: str) -> MethodSpec:
    """A method made from `--adapter module:Class` alone (its default config)."""
    cls = registry.resolve(spec)
    return MethodSpec(name=cls.name, adapter=spec, label=cls.name, config={}, _adapter_class=cls)


def load_datasets(extra: dict | None, data_root: Path, where: str) -> dict[str, DatasetSpec]:
    entries = dict(load_yaml(CONFIG_DIR / "datasets.yaml"))
    entries.update(extra or {})
    specs = {}
    for name, entry in entries.items():
        check_keys(f"{where}: dataset {name!r}", entry, DATASET_KEYS, {"layout", "root"})
        root = Path(_expand(str(entry["root"])))
        specs[name] = DatasetSpec(name=name, layout=entry["layout"], root=root if root.is_absolute() else data_root / root,
                                  display=entry.get("display", ""), mask_threshold=int(entry.get("mask_threshold", 127)),
                                  options=entry.get("options") or {}, max_per_group=entry.get("max_per_group"),
                                  test_images=entry.get("test_images"), test_megapixels=entry.get("test_megapixels"))
    return specs


def check_abnormal_block(settings: list[Setting], protocol: str, options: dict, where: str) -> None:
    """Clean protocol: A^j is the first j of a block of `abnormal_block` references per (category,
    seed), so j may not exceed the block (benchmark/data/reference_rules.py)."""
    block = options["abnormal_block"]
    if not isinstance(block, int) or block < 1:
        raise GadbenchError(f"{where}: protocol_options.abnormal_block must be a whole number >= 1, not {block!r}")
    largest = max(s.k_abnormal for s in settings)
    if protocol == "clean" and largest > block:
        raise GadbenchError(f"{where}: setting with A{largest} needs protocol_options.abnormal_block >= {largest}"
                            f" (it is {block}): set `protocol_options: {{abnormal_block: {largest}}}`")


def load_experiment(path: str | Path, data_root: str | Path | None = None, adapter: str | None = None,
                    methods: list[str] | None = None) -> Experiment:
    path = Path(path)
    data = load_yaml(path)
    where = str(path)
    check_keys(where, data, EXPERIMENT_KEYS, {"pairs", "settings", "seeds"})
    for key in ("pairs", "settings", "seeds"):
        if not isinstance(data[key], list) or not data[key]:
            raise GadbenchError(f"{where}: {key} must be a list of at least one entry, not {data[key]!r}")
    root = data_root or os.environ.get("DATA_ROOT") or _expand(str(data.get("data_root", "data")))
    root = Path(root)
    root = root if root.is_absolute() else (PROJECT_ROOT / root)
    datasets = load_datasets(data.get("datasets"), root, where)
    pairs = []
    for pair in data["pairs"]:
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
            raise GadbenchError(f"{where}: a pair is [source, target], not {pair!r}")
        for name in pair:
            if name not in datasets:
                raise GadbenchError(f"{where}: pair {pair}: unknown dataset {name!r}{closest(name, datasets)}")
        pairs.append((pair[0], pair[1]))
    protocol = data.get("protocol", "clean")
    if protocol not in PROTOCOLS:
        raise GadbenchError(f"{where}: unknown protocol {protocol!r}{closest(protocol, PROTOCOLS)}")
    options = {"nested_block": 4, "abnormal_block": 1, **(data.get("protocol_options") or {})}
    check_keys(f"{where}: protocol_options", options, PROTOCOL_OPTION_KEYS)
    settings = list(dict.fromkeys(parse_setting(s) for s in data["settings"]))
    check_abnormal_block(settings, protocol, options, where)
    seeds = [int(s) for s in data["seeds"]]
    if adapter:
        method_specs = [adapter_method(adapter)]
    else:
        method_specs = [method for entry in data.get("methods") or [] for method in load_methods(entry, where)]
        if methods:
            names = {m.name for m in method_specs}
            for wanted in methods:
                if wanted not in names:
                    raise GadbenchError(f"--method {wanted!r} is not in {where}{closest(wanted, names)}")
            method_specs = [m for m in method_specs if m.name in methods]
    if not method_specs:
        raise GadbenchError(f"{where}: no methods; list some under 'methods:' or pass --adapter module:Class")
    for method in method_specs:
        method.adapter_class.check_config(method.config, f"{where}: method {method.name!r}")  # fail early
    targets = [t for _, t in pairs]
    tables = {}
    for table, spec in (data.get("tables") or {"main": sorted(set(targets), key=targets.index)}).items():
        spec = {"targets": spec} if isinstance(spec, list) else dict(spec)
        check_keys(f"{where}: table {table!r}", spec, TABLE_KEYS, {"targets"})
        for name in spec["targets"]:
            if name not in datasets:
                raise GadbenchError(f"{where}: table {table!r}: unknown dataset {name!r}{closest(name, datasets)}")
        kind = spec.get("kind", "main")
        if kind not in TABLE_KINDS:
            raise GadbenchError(f"{where}: table {table!r}: unknown kind {kind!r}{closest(str(kind), TABLE_KINDS)}")
        tables[table] = {"targets": list(spec["targets"]), "mean": bool(spec.get("mean", False)), "kind": kind}
    categories = data.get("categories") or {}
    return Experiment(name=data.get("name", path.stem), path=path, protocol=protocol, protocol_options=options,
                      data_root=root, datasets=datasets, pairs=pairs, settings=settings, seeds=seeds,
                      methods=method_specs, tables=tables, categories=categories,
                      description=str(data.get("description", "")))
