"""The cell record: what one cell file holds, as a versioned dataclass. Every reader of cell files
(tables, the gate, the report, `compare`, the runner's resume check) goes through CellRecord, so
a field is named in one place and an old or foreign file is handled in one place.

Schema versions: 1 (files without a `schema` field, written before versioning: the same fields)
and 2 (the current one). A file of a newer schema is refused with one line."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from benchmark.errors import GadbenchError

SCHEMA_VERSION = 2
READABLE_SCHEMAS = (1, 2)
DONE, FAILED, SKIPPED, MISSING = "done", "failed", "skipped", "missing"
ELSEWHERE = "elsewhere"  # not run here: another run on the same results folder holds or finished it
NOT_APPLICABLE = "n/a"  # never run: the method cannot run the setting (Adapter.setting_support says why)


@dataclass
class CellIdentity:
    """Which cell this is: the method as run, the domain pair, the setting and the seed."""

    method: str
    method_label: str
    adapter: str
    source: str  # '*' for methods that do not train: one cell serves every source
    target: str
    setting: str
    k: int
    abnormal: int
    seed: int
    reference_seed: int
    trains_on_source: bool
    pixel_level: bool
    experiment: str
    training_seed: int | None = None


@dataclass
class CellRecord:
    cell: CellIdentity
    cell_key: str
    protocol: str
    status: str = MISSING
    reason: str | None = None  # why a cell was skipped (missing weights)
    error: str | None = None  # why it failed
    traceback: str | None = None
    limit: int | None = None
    rehearsal: bool = False
    protocol_options: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)  # mean, per_category, intervals, bootstrap
    counts: dict = field(default_factory=dict)
    manifests: dict = field(default_factory=dict)
    per_image: dict = field(default_factory=dict)  # category -> {path, label, score}
    method: dict = field(default_factory=dict)  # the adapter's describe()
    checkpoint: str | None = None
    timings: dict = field(default_factory=dict)
    schema: int = SCHEMA_VERSION

    # --- what readers ask -------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self.status == DONE

    @property
    def why_not(self) -> str:
        """One line saying why the cell has no numbers ('' when it is done)."""
        return "" if self.done else (self.reason or self.error or "not run yet")

    @property
    def mean_metrics(self) -> dict:
        return self.metrics.get("mean") or {}

    @property
    def per_category(self) -> dict:
        return self.metrics.get("per_category") or {}

    @property
    def coverage(self) -> dict | None:
        """Covered / uncovered breakdown of a cell with abnormal references (benchmark/run/coverage.py)."""
        return self.metrics.get("coverage")

    @property
    def bootstrap(self) -> dict | None:
        return self.metrics.get("bootstrap")

    @property
    def random_weights(self) -> bool:
        return bool(self.method.get("random_weights"))

    @property
    def target_selected(self) -> bool:
        return self.method.get("checkpoint_policy") == "official-target-selected"

    # --- files -----------------------------------------------------------------------------
    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def not_applicable(cls, identity: CellIdentity, protocol: str, reason: str) -> "CellRecord":
        """The record of a cell whose method cannot run its setting: no file, 'n/a' everywhere."""
        return cls(cell=identity, cell_key="", protocol=protocol, status=NOT_APPLICABLE, reason=reason)

    @classmethod
    def from_json(cls, data: dict, where: str | Path = "cell file") -> "CellRecord":
        schema = data.get("schema", 1)
        if schema not in READABLE_SCHEMAS:
            raise GadbenchError(f"{where}: cell schema {schema} is newer than this gadbench reads "
                                f"({', '.join(map(str, READABLE_SCHEMAS))}); update gadbench or delete the file to recompute it")
        known = {f.name for f in fields(cls)}
        identity_known = {f.name for f in fields(CellIdentity)}
        try:
            identity = CellIdentity(**{k: v for k, v in data["cell"].items() if k in identity_known})
            values = {k: v for k, v in data.items() if k in known and k not in ("cell", "schema")}
            return cls(cell=identity, schema=SCHEMA_VERSION, **values)
        except (KeyError, TypeError) as error:
            raise GadbenchError(f"{where}: not a gadbench cell file ({error}); delete it to recompute the cell") from None
