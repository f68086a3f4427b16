"""What the cells of an experiment share besides the methods: the data sets' sample tables (read
once), their reference manifests (drawn once, verified on every use) and each category's plan of
references and query groups; and the sweeping of temporary files a killed run left."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pandas as pd

from benchmark.api import TrainingData
from benchmark.api.atomic import temporary_owner
from benchmark.data import check_category, read_dataset
from benchmark.data.batches import training_data
from benchmark.data.references import ensure_manifest, limit_queries, manifest_path, plan_category
from benchmark.errors import GadbenchError
from benchmark.run.claims import STALE_AFTER_SECONDS, owner_gone
from benchmark.run.experiment import Cell, Experiment


class DataCatalogue:
    def __init__(self, experiment: Experiment, results_root: Path):
        self.experiment, self.results_root = experiment, Path(results_root)
        self._tables: dict[str, pd.DataFrame] = {}

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

    def training_data(self, name: str) -> TrainingData:
        """A data set as a trained method is lent it."""
        return training_data(name, self.table(name), self.experiment.datasets[name].mask_threshold)

    def preflight(self, cells: list[Cell]) -> None:
        """Input errors stop the run here, with one line, before any cell is written: the data
        sets read and validate, every target category can be scored, and every reference
        manifest exists (drawn once) and matches the files on disk."""
        for name in sorted({c.source for c in cells if c.source != "*"} | {c.target for c in cells}):
            self.table(name)
        self.ensure_manifests({(c.target, c.setting, c.seed) for c in cells})

    def manifest_file(self, target: str, category: str, setting, seed: int) -> Path:
        return manifest_path(self.results_root / "references", self.experiment.protocol, target, category, setting, seed,
                             self.experiment.protocol_options["abnormal_block"])

    def _manifest(self, target: str, category: str, setting, seed: int):
        experiment, spec = self.experiment, self.experiment.datasets[target]
        return ensure_manifest(self.results_root / "references", target, spec.files_root, self.table(target), category,
                               setting, seed, experiment.protocol, experiment.protocol_options["nested_block"],
                               spec.mask_threshold, experiment.protocol_options["abnormal_block"])

    def ensure_manifests(self, needed) -> int:
        """Draw (once) and verify the manifest of every (target, setting, seed) x category."""
        count = 0
        for target, setting, seed in sorted(needed, key=str):
            table = self.table(target)
            for category in sorted(table.category.unique()):
                check_category(table, target, category)
                self._manifest(target, category, setting, seed)
                count += 1
        return count

    def plan(self, cell: Cell, category: str):
        """The category's references and query groups for this cell (from its manifest)."""
        table = self.table(cell.target)
        check_category(table, cell.target, category)
        manifest_file, manifest = self._manifest(cell.target, category, cell.setting, cell.seed)
        plan = plan_category(manifest_file, manifest, table, category, self.experiment.protocol)
        return manifest_file, limit_queries(plan, self.experiment.limit) if self.experiment.limit else plan

    def sweep_temporary_files(self, feature_cache: Path | None = None) -> int:
        """Remove the temporary files a killed run can leave beside its cell files and in the disk
        feature cache (wherever it is); those of a run still writing (another `gadbench run` on
        this folder or cache) are kept."""
        removed = 0
        folders = [self.results_root / f for f in ("runs", "references", "checkpoints", "tables")]
        for folder in folders + ([feature_cache] if feature_cache is not None else []):
            for temp in folder.rglob(".*.tmp"):
                host, pid = temporary_owner(temp) or (None, None)
                with contextlib.suppress(FileNotFoundError):  # its writer renamed it meanwhile
                    if owner_gone(host, pid, temp.stat().st_mtime, STALE_AFTER_SECONDS):
                        temp.unlink()
                        removed += 1
        return removed
