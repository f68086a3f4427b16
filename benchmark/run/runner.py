"""The runner: one cell -> one atomic JSON (a CellRecord). The data and manifests the cells share
are its DataCatalogue's (benchmark/run/catalogue.py), the feature service its own;
benchmark/run/grid.py runs a grid of cells with it, here or in worker processes;
benchmark/run/engine.py scores a category; benchmark/run/session.py opens the method.

It owns everything that is the same for every method: data, references, preprocessing, batching,
seeds, feature caching, timing and metrics. Adapters see only references and query batches.
"""

from __future__ import annotations

import sys
import time
import traceback
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from benchmark.config import config_hash
from benchmark.data import DatasetSpec
from benchmark.errors import MissingWeights
from benchmark.run.catalogue import DataCatalogue
from benchmark.run.claims import Claims
from benchmark.run.session import make_deterministic, open_method
from benchmark.run.experiment import Cell, Experiment
from benchmark.features.disk_cache import DiskFeatureCache
from benchmark.features.service import FeatureService
from benchmark.data.images import file_sha256
from benchmark.run.intervals import DESCRIPTION as BOOTSTRAP_DESCRIPTION, category_replicates, cell_replicates, interval
from benchmark.run.coverage import category_coverage, cell_coverage
from benchmark.run.engine import evaluate_plan
from benchmark.run.metrics import METRIC_NAMES
from benchmark.run.provenance import git_state, package_versions
from benchmark.run.record import DONE, ELSEWHERE, FAILED, SKIPPED, CellIdentity, CellRecord
from benchmark.run.results import cell_identity, cell_path, read_record, write_json_atomic
from benchmark.features.weights import WeightStore


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
        self.features = FeatureService(self.weights, self.device, disk=disk, share_frozen=True)
        self.data = DataCatalogue(self.experiment, self.results_root)
        self.claims = Claims()
        make_deterministic(self.device)

    def cell_key(self, cell: Cell) -> str:
        spec: DatasetSpec = self.experiment.datasets[cell.target]
        return config_hash({
            "method": cell.method.hash, "adapter_version": cell.method.adapter_class.version, "source": cell.source,
            "target": [spec.layout, str(spec.root), spec.options, spec.mask_threshold, spec.max_per_group],
            "categories": self.experiment.categories.get(cell.target), "protocol": self.experiment.protocol,
            "protocol_options": self.experiment.keyed_protocol_options, "setting": cell.setting.label, "seed": cell.seed,
            **({"limit": self.experiment.limit} if self.experiment.limit else {}),
            **({"rehearsal": True} if self.experiment.rehearsal else {}),
        })

    def path(self, cell: Cell) -> Path:
        return cell_path(self.results_root, cell, self.experiment.runs_folder)

    def is_finished(self, cell: Cell, report=None) -> bool:
        """Whether the cell's file records it done under today's cell key; `report` hears of a
        file that cannot be read (benchmark/run/results.py:read_cell)."""
        existing = read_record(self.path(cell), report)
        return existing is not None and existing.done and existing.cell_key == self.cell_key(cell)

    # ------------------------------------------------------------------ one cell
    def run_claimed(self, cell: Cell) -> str:
        """Run the cell unless another run on this results folder holds its claim or has finished
        it since the grid was planned: its status, or ELSEWHERE (benchmark/run/claims.py)."""
        with self.claims.holding(self.path(cell).with_suffix(".claim")) as held:
            if not held or self.is_finished(cell):
                return ELSEWHERE
            return self.run_cell(cell).status

    def identity(self, cell: Cell) -> CellIdentity:
        return cell_identity(cell, self.experiment)

    def run_cell(self, cell: Cell) -> CellRecord:
        started = time.time()
        record = CellRecord(
            cell=self.identity(cell), cell_key=self.cell_key(cell), protocol=self.experiment.protocol,
            limit=self.experiment.limit, rehearsal=self.experiment.rehearsal,
            protocol_options=self.experiment.protocol_options,
            provenance={**git_state(), "packages": package_versions(), "method_config": cell.method.config,
                        "method_config_hash": cell.method.hash, "device": str(self.device),
                        "torch_threads": torch.get_num_threads(),
                        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started))})
        counters_before = self.features.counters()
        try:
            self._evaluate(cell, record)
            record.status = DONE
        except MissingWeights as error:
            record.status, record.reason = SKIPPED, str(error)
        except Exception as error:  # one failing cell never stops the grid
            record.status, record.error, record.traceback = FAILED, f"{type(error).__name__}: {error}", traceback.format_exc()
            if self.debug:
                raise
        after = self.features.counters()
        record.provenance.update({k: after[k] - counters_before[k] for k in after})
        record.provenance["seconds_total"] = time.time() - started
        write_json_atomic(record.to_json(), self.path(cell))
        if not record.done:  # one line per cell that did not finish, with or without progress bars
            tqdm.write(f"{record.status}: {cell.id}: {record.why_not}", file=sys.stderr)
        return record

    def adapter_for(self, cell: Cell, timings: dict | None = None):
        """The cell's adapter, trained on (or loaded for) its source when the method trains;
        returns (adapter, checkpoint)."""
        workdir = self.results_root / "checkpoints" / cell.method.name
        trains = cell.method.adapter_class.trains_on_source
        with self.claims.holding(workdir / cell.source / "training.claim", wait=True) if trains else nullcontext():
            # another run training this model: wait for it, then load its checkpoint
            opened = open_method(cell.method, device=self.device, weights=self.weights, features=self.features,
                                 workdir=workdir, seed=cell.seed, source=self.data.training_data(cell.source) if trains else None,
                                 setting=cell.setting, target=lambda: self.data.training_data(cell.target),
                                 checkpoints=workdir / cell.source)
        if timings is not None and opened.fit_seconds is not None:
            timings["fit_source_seconds"] = opened.fit_seconds
        return opened.adapter, opened.checkpoint

    def _evaluate(self, cell: Cell, record: CellRecord) -> None:
        """Open the method, score every category, and fill the record's results."""
        spec = self.experiment.datasets[cell.target]
        timings = {}
        adapter, checkpoint = self.adapter_for(cell, timings)
        table = self.data.table(cell.target)
        per_category, counts, manifests, per_image, replicates, coverage = {}, {}, {}, {}, {}, {}
        predict_seconds, images_scored = 0.0, 0
        for category in sorted(table.category.unique()):
            manifest_file, plan = self.data.plan(cell, category)
            result = evaluate_plan(adapter, category, plan, files_root=spec.files_root, mask_threshold=spec.mask_threshold,
                                   k_abnormal=cell.setting.k_abnormal, batch_size=self.batch_size, progress=self.show_progress)
            predict_seconds += result.seconds
            images_scored += len(result.labels)
            per_category[category] = result.metrics
            # per-image scores (paths relative to the data set): ROC curves and paired tests need them
            per_image[category] = {"path": result.paths, "label": result.labels, "score": result.scores}
            replicates[category] = category_replicates(category, cell.seed, result.paths, result.labels, result.scores,
                                                       result.pixel_histograms)
            if cell.setting.k_abnormal:  # which anomalous queries an abnormal reference of their type covers
                per_image[category].update(defect=result.defects, covered=result.covered)
                coverage[category] = category_coverage(category, cell.seed, result.paths, result.labels, result.scores,
                                                       result.covered, result.pixel_histograms)
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
        record.metrics = {"mean": mean, "per_category": per_category, "intervals": intervals,
                          "bootstrap": {"description": BOOTSTRAP_DESCRIPTION, **bootstrap}}
        if cell.setting.k_abnormal:
            record.metrics["coverage"] = cell_coverage(coverage, by_construction=self.experiment.protocol == "official")
        record.counts, record.manifests, record.per_image, record.timings = counts, manifests, per_image, timings
        record.cell.training_seed = getattr(adapter, "training_seed", None)
        record.method, record.checkpoint = adapter.describe(), str(checkpoint) if checkpoint else None
