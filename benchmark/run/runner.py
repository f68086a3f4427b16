"""The runner: one cell -> one atomic JSON, and what the cells of an experiment share (data
tables, reference manifests, the feature service). benchmark/run/grid.py runs a grid of cells
with it, here or in worker processes; benchmark/run/engine.py scores a category.

It owns everything that is the same for every method: data, references, preprocessing, batching,
seeds, feature caching, timing and metrics. Adapters see only references and query batches.
"""

from __future__ import annotations

import os
import random
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from benchmark import registry
from benchmark.adapter import Domain, RunContext
from benchmark.config import config_hash
from benchmark.data import DatasetSpec, check_category, read_dataset
from benchmark.errors import GadbenchError, MissingWeights
from benchmark.run.experiment import Cell, Experiment
from benchmark.features.disk_cache import DiskFeatureCache
from benchmark.features.service import FeatureService
from benchmark.data.images import file_sha256
from benchmark.run.intervals import DESCRIPTION as BOOTSTRAP_DESCRIPTION, category_replicates, cell_replicates, interval
from benchmark.run.engine import evaluate_plan
from benchmark.run.metrics import METRIC_NAMES
from benchmark.run.provenance import git_state, package_versions
from benchmark.data.references import ensure_manifest, limit_queries, plan_category
from benchmark.run.results import DONE, FAILED, SKIPPED, cell_path, read_cell, write_json_atomic
from benchmark.features.weights import WeightStore


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise GadbenchError(f"--device {name}: CUDA is not available on this machine; use --device cpu or auto")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_deterministic(device: torch.device) -> None:
    """On CUDA: deterministic cuDNN and cuBLAS kernels (docs/reliability.md). The CPU path is
    deterministic already for a fixed thread count."""
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True, warn_only=True)


@dataclass
class Runner:
    experiment: Experiment
    results_root: Path = Path("results")
    device: torch.device = torch.device("cpu")
    weights: WeightStore = field(default_factory=WeightStore)
    batch_size: int = 8
    show_progress: bool = True
    debug: bool = False
    # the disk tier of the feature cache; None keeps features in memory only
    cache_dir: Path | None = None

    def __post_init__(self):
        self.results_root = Path(self.results_root)
        disk = DiskFeatureCache(self.cache_dir) if self.cache_dir is not None else None
        self.features = FeatureService(self.weights, self.device, disk=disk)
        self._tables: dict[str, pd.DataFrame] = {}
        make_deterministic(self.device)

    # ------------------------------------------------------------------ data
    def table(self, name: str) -> pd.DataFrame:
        if name not in self._tables:
            spec = self.experiment.datasets[name]
            table = read_dataset(spec)
            wanted = self.experiment.categories.get(name)
            if wanted:
                unknown = sorted(set(wanted) - set(table.category))
                if unknown:
                    raise GadbenchError(f"{self.experiment.path}: categories {unknown} not in dataset {name!r} (has {sorted(table.category.unique())})")
                table = table[table.category.isin(wanted)].reset_index(drop=True)
            self._tables[name] = table
        return self._tables[name]

    def domain(self, name: str) -> Domain:
        return Domain(name, self.table(name), self.experiment.datasets[name].mask_threshold)

    def cell_key(self, cell: Cell) -> str:
        spec: DatasetSpec = self.experiment.datasets[cell.target]
        return config_hash({
            "method": cell.method.hash, "adapter_version": registry.resolve(cell.method.adapter).version, "source": cell.source,
            "target": [spec.layout, str(spec.root), spec.options, spec.mask_threshold, spec.max_per_group],
            "categories": self.experiment.categories.get(cell.target), "protocol": self.experiment.protocol,
            "protocol_options": self.experiment.protocol_options, "setting": cell.setting.label, "seed": cell.seed,
            **({"limit": self.experiment.limit} if self.experiment.limit else {}),
            **({"rehearsal": True} if self.experiment.rehearsal else {}),
        })

    def path(self, cell: Cell) -> Path:
        return cell_path(self.results_root, cell, self.experiment.protocol)

    def is_finished(self, cell: Cell) -> bool:
        existing = read_cell(self.path(cell))
        return bool(existing) and existing.get("status") == DONE and existing.get("cell_key") == self.cell_key(cell)

    # ------------------------------------------------------------------ grid
    def preflight(self, cells: list[Cell]) -> None:
        """Input errors stop the run here, with one line, before any cell is written: the data
        sets read and validate, every target category can be scored, and every reference
        manifest exists (drawn once) and matches the files on disk."""
        for name in sorted({c.source for c in cells if c.source != "*"} | {c.target for c in cells}):
            self.table(name)
        self.ensure_manifests({(c.target, c.setting, c.seed) for c in cells})

    def ensure_manifests(self, needed) -> int:
        """Draw (once) and verify the manifest of every (target, setting, seed) x category."""
        experiment, count = self.experiment, 0
        for target, setting, seed in sorted(needed, key=str):
            spec, table = experiment.datasets[target], self.table(target)
            for category in sorted(table.category.unique()):
                check_category(table, target, category)
                ensure_manifest(self.results_root / "references", target, spec.files_root, table, category, setting, seed,
                                experiment.protocol, experiment.protocol_options["nested_block"], spec.mask_threshold)
                count += 1
        return count

    def sweep_temporary_files(self) -> int:
        """Remove the temporary files a killed run can leave beside its cell files."""
        removed = 0
        for folder in ("runs", "references", "checkpoints", "tables"):
            for temp in (self.results_root / folder).rglob(".*.tmp"):
                temp.unlink(missing_ok=True)
                removed += 1
        return removed

    # ------------------------------------------------------------------ one cell
    def run_cell(self, cell: Cell) -> dict:
        started = time.time()
        adapter_class = registry.resolve(cell.method.adapter)
        record = {"cell": {"method": cell.method.name, "method_label": cell.method.label, "adapter": cell.method.adapter,
                           "source": cell.source, "target": cell.target, "setting": cell.setting.label,
                           "k": cell.setting.k_normal, "abnormal": cell.setting.k_abnormal,
                           "seed": cell.seed, "reference_seed": cell.seed, "trains_on_source": adapter_class.trains_on_source,
                           "pixel_level": adapter_class.pixel_level, "experiment": self.experiment.name},
                  "cell_key": self.cell_key(cell), "protocol": self.experiment.protocol,
                  "limit": self.experiment.limit, "rehearsal": self.experiment.rehearsal,
                  "protocol_options": self.experiment.protocol_options,
                  "provenance": {**git_state(), "packages": package_versions(), "method_config": cell.method.config,
                                 "method_config_hash": cell.method.hash, "device": str(self.device),
                                 "torch_threads": torch.get_num_threads(),
                                 "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started))}}
        counters_before = self.features.counters()
        try:
            record.update(self._evaluate(cell))
            record["status"] = DONE
        except MissingWeights as error:
            record.update(status=SKIPPED, reason=str(error))
        except Exception as error:  # one failing cell never stops the grid
            record.update(status=FAILED, error=f"{type(error).__name__}: {error}", traceback=traceback.format_exc())
            if self.debug:
                raise
        after = self.features.counters()
        record["provenance"].update({k: after[k] - counters_before[k] for k in after})
        record["provenance"]["seconds_total"] = time.time() - started
        record["cell"]["training_seed"] = record.pop("training_seed", None)
        write_json_atomic(record, self.path(cell))
        if record["status"] != DONE:  # one line per cell that did not finish, with or without progress bars
            tqdm.write(f"{record['status']}: {cell.id}: {record.get('reason') or record.get('error')}", file=sys.stderr)
        return record

    def adapter_for(self, cell: Cell, timings: dict | None = None):
        """The cell's adapter, trained on (or loaded for) its source when the method trains;
        returns (adapter, checkpoint)."""
        seed_everything(cell.seed)
        workdir = self.results_root / "checkpoints" / cell.method.name
        context = RunContext(device=self.device, weights=self.weights, features=self.features, workdir=workdir,
                             allow_download=self.weights.allow_download)
        adapter = registry.resolve(cell.method.adapter)(cell.method.config, context)
        checkpoint = None
        if adapter.trains_on_source:
            start = time.time()
            target = self.domain(cell.target) if adapter.uses_target_for_training() else None
            checkpoint = adapter.fit_source(self.domain(cell.source), cell.seed, workdir / cell.source,
                                            setting=cell.setting, target=target)
            if timings is not None:
                timings["fit_source_seconds"] = time.time() - start
        return adapter, checkpoint

    def plan(self, cell: Cell, category: str):
        """The category's references and query groups for this cell (from its manifest)."""
        experiment, spec, table = self.experiment, self.experiment.datasets[cell.target], self.table(cell.target)
        check_category(table, cell.target, category)
        manifest_file, manifest = ensure_manifest(
            self.results_root / "references", cell.target, spec.files_root, table, category, cell.setting, cell.seed,
            experiment.protocol, experiment.protocol_options["nested_block"], spec.mask_threshold)
        plan = plan_category(manifest_file, manifest, table, category, experiment.protocol)
        return manifest_file, limit_queries(plan, experiment.limit) if experiment.limit else plan

    def _evaluate(self, cell: Cell) -> dict:
        spec = self.experiment.datasets[cell.target]
        timings = {}
        adapter, checkpoint = self.adapter_for(cell, timings)
        table = self.table(cell.target)
        per_category, counts, manifests, per_image, replicates = {}, {}, {}, {}, {}
        predict_seconds, images_scored = 0.0, 0
        for category in sorted(table.category.unique()):
            manifest_file, plan = self.plan(cell, category)
            result = evaluate_plan(adapter, category, plan, files_root=spec.files_root, mask_threshold=spec.mask_threshold,
                                   k_abnormal=cell.setting.k_abnormal, batch_size=self.batch_size, progress=self.show_progress)
            predict_seconds += result.seconds
            images_scored += len(result.labels)
            per_category[category] = result.metrics
            # per-image scores (paths relative to the data set): ROC curves and paired tests need them
            per_image[category] = {"path": result.paths, "label": result.labels, "score": result.scores}
            replicates[category] = category_replicates(category, cell.seed, result.paths, result.labels, result.scores,
                                                       result.pixel_histograms)
            counts[category] = {"queries": len(result.labels), "anomalous": int(np.sum(result.labels)),
                                "removed_references_from_queries": plan.removed_from_queries,
                                "abnormal_reference_groups": len(plan.groups)}
            manifests[category] = {"path": str(manifest_file), "sha256": file_sha256(str(manifest_file))}
        mean = {name: float(np.nanmean([m[name] for m in per_category.values()]))
                if any(np.isfinite(m[name]) for m in per_category.values()) else float("nan") for name in METRIC_NAMES}
        timings.update(predict_seconds=predict_seconds, images_scored=images_scored,
                       images_per_second=images_scored / predict_seconds if predict_seconds else None)
        bootstrap = cell_replicates(replicates)
        intervals = {metric: interval(values) for metric, values in bootstrap.items()}
        bootstrap = {metric: None if v is None else np.round(v, 6).tolist() for metric, v in bootstrap.items()}
        return {"metrics": {"mean": mean, "per_category": per_category, "intervals": intervals,
                            "bootstrap": {"description": BOOTSTRAP_DESCRIPTION, **bootstrap}},
                "counts": counts, "manifests": manifests,
                "per_image": per_image, "training_seed": getattr(adapter, "training_seed", None),
                "method": adapter.describe(), "checkpoint": str(checkpoint) if checkpoint else None, "timings": timings}
