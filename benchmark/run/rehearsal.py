"""The paper's grid rehearsed on stand-in data before anyone rents a GPU (`gadbench rehearse`).

A rehearsal runs the real experiment files (main, ablation, the paper's efficiency bench) with the
paper's architectures on random weights, on layout-faithful stand-ins of MVTec AD, VisA and BraTS
(benchmark/data/standin.py) that go through the same readers and converters as the real data,
with at most `limit` queries per category and each method's shortest schedule
(`Adapter.rehearsal_config`). Its rows are marked as a rehearsal in every table and file, live in
their own results folder, and are refused by the regression gate: they exercise every path the
real run takes, and measure nothing.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

from benchmark.config import CONFIG_DIR, deep_merge, load_yaml
from benchmark.data import standin
from benchmark.data.reference_rules import NORMAL_RULES, normal_slice
from benchmark.errors import GadbenchError
from benchmark.run.experiment import Experiment, MethodSpec, load_experiment, load_method

REHEARSAL_NOTE = ("rehearsal on stand-in data with random weights, shortest schedules and at most {limit} queries"
                  " per category: it exercises the pipeline and measures nothing")
# what configs/datasets.yaml expects under the data root, and how each stand-in is made there
LAYOUT = {"mvtec": "mvtec_anomaly_detection", "visa": "VisA_20220922", "brats_nifti": "brats_nifti", "brats": "brats2d"}


def default_experiments(data_root: Path) -> list[Experiment]:
    """Every experiment file of configs/experiments whose data the stand-ins provide (each pair's
    data sets live under a stand-in's folder), loaded against `data_root`: what `gadbench
    rehearse` runs by default (bench files, which have no pairs, are the bench's business)."""
    provided = {Path(data_root) / folder for folder in LAYOUT.values()}
    chosen = []
    for path in sorted((CONFIG_DIR / "experiments").glob("*.yaml")):
        if "pairs" not in load_yaml(path):
            continue
        experiment = load_experiment(path, data_root)
        names = {name for pair in experiment.pairs for name in pair}
        if all(experiment.datasets[name].root in provided for name in names):
            chosen.append(experiment)
    return chosen


def rehearsal_method(method: MethodSpec) -> MethodSpec:
    """The method on random weights with its adapter's shortest schedule (its label says so)."""
    adapter = method.adapter_class
    config = deep_merge(method.config, {"allow_random_weights": True, **copy.deepcopy(adapter.rehearsal_config)})
    return dataclasses.replace(method, config=config, label=f"{method.label} [rehearsal]", _adapter_class=adapter)


def rehearsal_experiment(experiment: Experiment, limit: int, seeds: list[int] | None = None,
                         settings: list | None = None, pairs: list[str] | None = None) -> Experiment:
    """The experiment rehearsed; seeds, settings and 'source:target' pairs narrow it (a reduced
    rehearsal). An experiment with none of the pairs keeps one of its own (one with a named pair's
    source first, so that trained models are shared), so that every experiment is rehearsed."""
    if limit < 1:
        raise GadbenchError(f"--limit {limit}: give at least 1 query per category")
    kept = experiment.pairs
    if pairs:
        wanted = {tuple(p.split(":", 1)) for p in pairs}
        kept = [p for p in experiment.pairs if p in wanted]
        if not kept:  # every experiment is rehearsed: one pair, with a source already trained on if it can
            sources = {source for source, _ in wanted}
            kept = [next((p for p in experiment.pairs if p[0] in sources), experiment.pairs[0])]
    return dataclasses.replace(experiment, methods=[rehearsal_method(m) for m in experiment.methods], limit=limit,
                               rehearsal=True, seeds=seeds or experiment.seeds, settings=settings or experiment.settings,
                               pairs=kept)


def rehearsal_bench(bench: dict, only: list[str] | None = None) -> dict:
    """The efficiency bench with every method (or those named) rehearsed and the shortest timing loop."""
    methods = []
    for entry in bench["methods"]:
        method = rehearsal_method(load_method(entry["method"], bench["path"]))
        if only and method.name not in only:
            continue
        methods.append({**entry, "config": deep_merge(entry.get("config") or {}, method.config), "random_weights": True,
                        "label": method.label})
    kept = {load_method(entry["method"], bench["path"]).name for entry in methods}
    reference = bench.get("reference") if bench.get("reference") in kept else None  # None: the first method kept
    return {**bench, "name": f"{bench.get('name', 'efficiency')}_rehearsal", "methods": methods, "batch_sizes": [1, 2],
            "reference": reference,
            "warmup": 0, "min_seconds": 0.0, "max_batch_seconds": 1.0, "rounds": 1, "rehearsal": True}


def standin_counts(experiments: list[Experiment]) -> dict:
    """Images per category and split that the stand-ins need so that every cell of these
    experiments can be planned: train/good for the last seed's normal references (its nested
    block, or its official slice), and per defect type one file past the official protocol's
    seed-th per-type slice of j abnormal references (or past the clean protocol's block of
    abnormal references), so that a query of that type remains; and test/good for a training
    episode of the largest k (a query and k normal references: NAGL trains on the source's test
    split)."""
    counts = dict(standin.MIN_COUNTS)
    for experiment in experiments:
        rule, block = NORMAL_RULES[experiment.protocol], experiment.protocol_options["abnormal_block"]
        for setting in experiment.settings:
            k = max(setting.k_normal, 0)  # Nall takes what there is; N0 none
            counts["test_good"] = max(counts["test_good"], k + 1)
            for seed in experiment.seeds:
                _, end = normal_slice(k, seed, rule, experiment.protocol_options["nested_block"])
                counts["train_good"] = max(counts["train_good"], end)
                if experiment.protocol == "official" and setting.k_abnormal:
                    counts["test_per_defect"] = max(counts["test_per_defect"], (seed + 1) * setting.k_abnormal + 1)
                elif setting.k_abnormal:  # the clean block is drawn across types: one type may give all of it
                    counts["test_per_defect"] = max(counts["test_per_defect"], block + 1)
    return counts


def prepare_standin_data(root: Path, categories: int | None = None, counts: dict | None = None, echo=print) -> Path:
    """Write the stand-ins under `root` as configs/datasets.yaml names them, once: MVTec AD, VisA
    in its original layout, and BraTS as NIfTI volumes (2023+ naming) converted by `prepare brats`,
    each with `counts` images per category and split (standin_counts). `categories` keeps the first
    N categories of MVTec AD and VisA (a reduced rehearsal)."""
    from benchmark.data.prepare.brats import BratsRules, prepare_brats

    root, counts = Path(root), {**standin.MIN_COUNTS, **(counts or {})}
    wanted = {"standin_version": standin.STANDIN_VERSION, "categories": categories, "counts": counts}
    stamp = root / "REHEARSAL_DATA.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == wanted:
        return root
    mvtec = sorted(standin.MVTEC)[:categories] if categories else None
    visa = sorted(standin.VISA)[:categories] if categories else None
    echo(f"rehearsal: writing stand-in data under {root}")
    standin.generate_mvtec(root / LAYOUT["mvtec"], categories=mvtec, counts=counts)
    standin.generate_visa(root / LAYOUT["visa"], categories=visa, counts=counts)
    standin.generate_brats(root / LAYOUT["brats_nifti"], naming="2023", counts=counts)
    prepare_brats(root / LAYOUT["brats_nifti"], root / LAYOUT["brats"], BratsRules(modality="t2f", strict=True))
    stamp.write_text(json.dumps(wanted))
    return root
