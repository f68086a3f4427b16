"""The planning pass: every cell of every experiment given is planned (its data sets read, every
category checked, every (category, setting, seed) checked against what its reference manifest
needs) without drawing, writing or scoring anything, and every shortage is reported at once,
one line each. `gadbench run`, `gadbench rehearse` and `gadbench refs make` stop on it, having
written nothing: on the paper's data it is the check to run before renting a GPU."""

from __future__ import annotations

from dataclasses import dataclass

from benchmark.data import check_category
from benchmark.data.reference_rules import manifest_shortages
from benchmark.errors import GadbenchError
from benchmark.run.catalogue import DataCatalogue
from benchmark.run.experiment import Cell


@dataclass(frozen=True)
class Shortage:
    dataset: str
    category: str  # '*' when the whole data set is unreadable
    setting: str  # '*' when it concerns every setting
    seed: int | None
    problem: str  # what is missing and the option that fixes it

    def line(self) -> str:
        where = self.dataset + (f"/{self.category}" if self.category != "*" else "")
        where += f", {self.setting}" if self.setting != "*" else ""
        where += f", seed {self.seed}" if self.seed is not None else ""
        return f"{where}: {self.problem}"


def shortages(catalogue: DataCatalogue, cells: list[Cell]) -> list[Shortage]:
    """Every shortage of these cells' data, in a stable order, each once."""
    experiment, found = catalogue.experiment, []
    sources = {c.source for c in cells if c.source != "*"}
    needed = sorted({(c.target, c.setting, c.seed) for c in cells}, key=str)
    readable = {}
    for name in sorted(sources | {target for target, _, _ in needed}):
        try:
            readable[name] = catalogue.table(name)
        except GadbenchError as error:
            found.append(Shortage(name, "*", "*", None, str(error)))
    checked = set()
    for target, setting, seed in needed:
        if target not in readable:
            continue
        table, spec = readable[target], experiment.datasets[target]
        for category in sorted(table.category.unique()):
            if (target, category) not in checked:
                checked.add((target, category))
                try:
                    check_category(table, target, category)
                except GadbenchError as error:
                    found.append(Shortage(target, category, "*", None, str(error)))
                    continue
            if catalogue.manifest_file(target, category, setting, seed).is_file():
                continue  # drawn before: the pre-flight verifies it against the files on disk
            options = experiment.protocol_options
            for problem in manifest_shortages(table, category, setting, seed, experiment.protocol, options["nested_block"],
                                              spec.mask_threshold, abnormal_block=options["abnormal_block"]):
                found.append(Shortage(target, category, setting.label, seed, problem))
    found += _training_shortages(cells, readable)
    return list(dict.fromkeys(found))


def _training_shortages(cells: list[Cell], tables: dict) -> list[Shortage]:
    """What each trained method's source (and target, where its training reads it) lacks,
    once per (method, source, target, k)."""
    found, asked = [], set()
    for cell in cells:
        if cell.method is None or not cell.method.adapter_class.trains_on_source:  # `refs make` plans no method
            continue
        key = (cell.method.name, cell.source, cell.target, cell.setting.k_normal, cell.setting.k_abnormal)
        if key in asked or cell.source not in tables or cell.target not in tables:
            continue
        asked.add(key)
        for problem in cell.method.adapter_class.training_shortages(cell.method.config, tables[cell.source],
                                                                    tables[cell.target], cell.setting):
            found.append(Shortage(f"{cell.source}->{cell.target}", "*", cell.setting.label, None,
                                  f"{cell.method.name}: {problem}"))
    return found


def raise_for_shortages(found: list[Shortage], what: str) -> None:
    """One error listing every shortage (one line each; a single one is a one-line error), or nothing."""
    if len(found) == 1:
        raise GadbenchError(f"{what}: {found[0].line()} (nothing was written)")
    if found:
        lines = "\n".join(f"  {s.line()}" for s in found)
        raise GadbenchError(f"{what}: {len(found)} shortage(s) found while planning; nothing was written:\n{lines}")
