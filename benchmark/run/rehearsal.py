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

from benchmark import registry
from benchmark.config import deep_merge
from benchmark.data import standin
from benchmark.errors import GadbenchError
from benchmark.run.experiment import Experiment, MethodSpec

REHEARSAL_NOTE = ("rehearsal on stand-in data with random weights, shortest schedules and at most {limit} queries"
                  " per category: it exercises the pipeline and measures nothing")
# what configs/datasets.yaml expects under the data root, and how each stand-in is made there
LAYOUT = {"mvtec": "mvtec_anomaly_detection", "visa": "VisA_20220922", "brats_nifti": "brats_nifti", "brats": "brats2d"}


def rehearsal_method(method: MethodSpec) -> MethodSpec:
    """The method on random weights with its adapter's shortest schedule (its label says so)."""
    adapter = registry.resolve(method.adapter)
    config = deep_merge(method.config, {"allow_random_weights": True, **copy.deepcopy(adapter.rehearsal_config)})
    return dataclasses.replace(method, config=config, label=f"{method.label} [rehearsal]")


def rehearsal_experiment(experiment: Experiment, limit: int, seeds: list[int] | None = None,
                         settings: list | None = None, pairs: list[str] | None = None) -> Experiment:
    """The experiment rehearsed; seeds, settings and 'source:target' pairs narrow it (a reduced rehearsal)."""
    if limit < 1:
        raise GadbenchError(f"--limit {limit}: give at least 1 query per category")
    kept = experiment.pairs
    if pairs:
        wanted = {tuple(p.split(":", 1)) for p in pairs}
        kept = [p for p in experiment.pairs if p in wanted]
    return dataclasses.replace(experiment, methods=[rehearsal_method(m) for m in experiment.methods], limit=limit,
                               rehearsal=True, seeds=seeds or experiment.seeds, settings=settings or experiment.settings,
                               pairs=kept)


def rehearsal_bench(bench: dict, only: list[str] | None = None) -> dict:
    """The efficiency bench with every method (or those named) rehearsed and the shortest timing loop."""
    from benchmark.run.experiment import load_method

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


def prepare_standin_data(root: Path, categories: int | None = None, echo=print) -> Path:
    """Write the stand-ins under `root` as configs/datasets.yaml names them, once: MVTec AD, VisA
    in its original layout, and BraTS as NIfTI volumes (2023+ naming) converted by `prepare brats`.
    `categories` keeps the first N categories of MVTec AD and VisA (a reduced rehearsal)."""
    from benchmark.data.prepare.brats import BratsRules, prepare_brats

    root = Path(root)
    wanted = {"standin_version": standin.STANDIN_VERSION, "categories": categories}
    stamp = root / "REHEARSAL_DATA.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == wanted:
        return root
    mvtec = sorted(standin.MVTEC)[:categories] if categories else None
    visa = sorted(standin.VISA)[:categories] if categories else None
    echo(f"rehearsal: writing stand-in data under {root}")
    standin.generate_mvtec(root / LAYOUT["mvtec"], categories=mvtec)
    standin.generate_visa(root / LAYOUT["visa"], categories=visa)
    standin.generate_brats(root / LAYOUT["brats_nifti"], naming="2023")
    prepare_brats(root / LAYOUT["brats_nifti"], root / LAYOUT["brats"], BratsRules(modality="t2f", strict=True))
    stamp.write_text(json.dumps(wanted))
    return root
