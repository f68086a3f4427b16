"""Reference manifests: which images each (dataset, category, setting, seed) uses as references.

One CSV per (protocol, dataset, category, k normal, j abnormal, seed) under results/references/,
columns: role, path, defect, mask, sha256 (paths relative to the dataset root). A manifest is made
once and then only read: a file whose bytes changed is an error, never a silent re-draw. The rules
that choose the images are benchmark/data/reference_rules.py's; roles:
  normal      a normal reference (none under N0)
  abnormal    an abnormal reference (with its mask)
  excluded    clean protocol: drawn into the seed's abnormal block but not a reference of this
              setting; it leaves the queries all the same, so every setting of a seed scores the
              same query set
  assignment  official protocol: the defect type whose references a normal query is scored with
              (the code draws one type per call; here it is seeded and recorded)
Under the official protocol the references stay in the test set and are scored, as in the code.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from benchmark.api.atomic import atomic_file
from benchmark.errors import GadbenchError
from benchmark.data.images import file_sha256
from benchmark.data.reference_rules import (NORMAL_RULES, category_seed_rng, clean_abnormal_block, manifest_shortages,
                                            normal_references, official_abnormal_slices)
from benchmark.data.settings import Setting

MANIFEST_COLUMNS = ["role", "path", "defect", "mask", "sha256"]


@dataclass
class QueryGroup:
    """Queries that share their abnormal references (the clean protocol has exactly one group;
    the official one a group per defect type). `abnormal`: the references' sample rows, [] for none."""

    abnormal: list[dict]
    queries: pd.DataFrame


@dataclass
class Plan:
    """Everything the runner needs for one (category, setting, seed)."""

    manifest_path: Path
    normal: pd.DataFrame
    groups: list[QueryGroup]
    removed_from_queries: int


def manifest_path(root: Path, protocol: str, dataset: str, category: str, setting: Setting, seed: int,
                  abnormal_block: int) -> Path:
    """A clean manifest drawn with another abnormal block excludes other queries: its own file."""
    block = f"_block{abnormal_block}" if protocol == "clean" and abnormal_block != 1 else ""
    name = f"n{setting.normal_text}_a{setting.k_abnormal}_seed{seed}{block}.csv"
    return Path(root) / protocol / dataset / category / name


def _relative(path: str, data_root: Path) -> str:
    """The path relative to the data root, both resolved: a data root reached through a symbolic
    link (data on another disk) gives the same relative paths as the real folder."""
    return os.path.relpath(os.path.realpath(path), os.path.realpath(data_root))


def _resolve_inside(data_root: Path, relative: str, manifest: Path) -> str:
    if os.path.isabs(relative) or ".." in Path(relative).parts:
        raise GadbenchError(f"{manifest}: path {relative!r} points outside the data root; manifests hold paths relative to it")
    return str((data_root / relative).resolve())


def _rows(frame: pd.DataFrame | list, role: str, data_root: Path) -> list[dict]:
    records = frame.to_dict("records") if isinstance(frame, pd.DataFrame) else frame
    return [
        {"role": role, "path": _relative(r["path"], data_root), "defect": r["defect"],
         "mask": _relative(r["mask"], data_root) if r.get("mask") else "", "sha256": file_sha256(r["path"])}
        for r in records
    ]


def make_manifest(table: pd.DataFrame, data_root: Path, category: str, setting: Setting, seed: int,
                  protocol: str, nested_block: int, mask_threshold: int, abnormal_block: int) -> pd.DataFrame:
    block = clean_abnormal_block(table, category, seed, mask_threshold, abnormal_block) if protocol == "clean" else None
    problems = manifest_shortages(table, category, setting, seed, protocol, nested_block, mask_threshold, block,
                                  abnormal_block=abnormal_block)
    if problems:
        raise GadbenchError(problems[0])
    rows = []
    if setting.k_normal:  # N0: no normal reference
        rows += _rows(normal_references(table, category, setting.k_normal, seed, NORMAL_RULES[protocol], nested_block),
                      "normal", data_root)
    j = setting.k_abnormal
    if protocol == "clean":
        rows += _rows([r.to_dict() for r in block[:j]], "abnormal", data_root)
        rows += _rows([r.to_dict() for r in block[j:]], "excluded", data_root)
    elif j:
        slices = official_abnormal_slices(table, category, j, seed)
        for files in slices.values():
            rows += _rows(files, "abnormal", data_root)
        normal_queries = table[(table.category == category) & (table.split == "test") & (table.label == 0)].sort_values("path")
        types = sorted(slices)
        drawn = types[category_seed_rng(category, seed).integers(len(types))]  # once: every normal query shares it
        for record in normal_queries.to_dict("records"):
            rows.append({"role": "assignment", "path": _relative(record["path"], data_root),
                         "defect": drawn, "mask": "", "sha256": file_sha256(record["path"])})
    return pd.DataFrame(rows, columns=MANIFEST_COLUMNS)


def write_atomic_csv(frame: pd.DataFrame, path: Path) -> None:
    with atomic_file(path) as temp:
        frame.to_csv(temp, index=False)


def read_manifest(path: Path, data_root: Path) -> pd.DataFrame:
    """Read a manifest and check that every file it names is inside the data root and unchanged."""
    try:
        manifest = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise GadbenchError(f"{path}: unreadable manifest ({type(error).__name__}); delete it and run `gadbench refs make`") from None
    if list(manifest.columns) != MANIFEST_COLUMNS:
        raise GadbenchError(f"{path}: manifest columns {list(manifest.columns)} != {MANIFEST_COLUMNS}; delete it and run `gadbench refs make`")
    manifest["path"] = [_resolve_inside(data_root, p, path) for p in manifest["path"]]
    manifest["mask"] = [_resolve_inside(data_root, m, path) if m else None for m in manifest["mask"]]
    for record in manifest.itertuples():
        if not os.path.isfile(record.path):
            raise GadbenchError(f"{path}: reference {record.path} is missing from the data; restore it (manifests are never re-drawn silently)")
        if file_sha256(record.path) != record.sha256:
            raise GadbenchError(
                f"{path}: {record.path} changed on disk (sha256 differs); restore the original file, or delete the"
                " manifest and run `gadbench refs make` to draw new references on purpose"
            )
    return manifest


def ensure_manifest(references_root: Path, dataset: str, data_root: Path, table: pd.DataFrame, category: str,
                    setting: Setting, seed: int, protocol: str, nested_block: int, mask_threshold: int,
                    abnormal_block: int) -> tuple[Path, pd.DataFrame]:
    path = manifest_path(references_root, protocol, dataset, category, setting, seed, abnormal_block)
    if not path.is_file():
        write_atomic_csv(make_manifest(table, data_root, category, setting, seed, protocol, nested_block, mask_threshold,
                                       abnormal_block), path)
    return path, read_manifest(path, data_root)


def plan_category(manifest_path_: Path, manifest: pd.DataFrame, table: pd.DataFrame, category: str, protocol: str) -> Plan:
    """Split a category's test set into query groups according to the manifest."""
    tests = table[(table.category == category) & (table.split == "test")]
    lookup = table.set_index("path")
    unknown = sorted(set(manifest[manifest.role != "assignment"].path) - set(lookup.index))
    if unknown:
        raise GadbenchError(
            f"{manifest_path_}: reference {unknown[0]} is not in the data set's current sample table (did its"
            " definition or subsampling change?); restore the definition, or delete the manifest to draw new references on purpose"
        )

    def rows(role):
        part = manifest[manifest.role == role]
        return lookup.loc[part.path].reset_index() if len(part) else lookup.iloc[:0].reset_index()

    normal = rows("normal")
    abnormal = rows("abnormal")
    if protocol == "clean":
        removed_paths = set(abnormal.path) | set(rows("excluded").path) | set(normal.path)
        queries = tests[~tests.path.isin(removed_paths)]
        removed = len(tests) - len(queries)
        return Plan(manifest_path_, normal, [QueryGroup(abnormal.to_dict("records"), queries)], removed)
    if abnormal.empty:
        return Plan(manifest_path_, normal, [QueryGroup([], tests)], 0)
    assignments = manifest[manifest.role == "assignment"]
    if assignments.defect.nunique() > 1:
        raise GadbenchError(f"{manifest_path_}: normal queries are assigned several defect types (a manifest drawn per query"
                            " by an older gadbench); the official code draws one per call: delete the manifest and run `gadbench refs make`")
    assignment = dict(zip(assignments.path, assignments.defect))
    assigned = tests.apply(lambda r: r.defect if r.label == 1 else assignment.get(r.path), axis=1)
    if assigned.isna().any():
        missing = tests.path[assigned.isna()].iloc[0]
        raise GadbenchError(f"{manifest_path_}: normal query {missing} has no assignment row; delete the manifest and run `gadbench refs make`")
    groups = [QueryGroup(refs.to_dict("records"), tests[assigned == defect_type])
              for defect_type, refs in abnormal.groupby("defect", sort=True)]
    return Plan(manifest_path_, normal, [g for g in groups if len(g.queries)], 0)


def limit_queries(plan: Plan, limit: int) -> Plan:
    """At most `limit` queries of the category (a smoke run or a rehearsal): normal and anomalous
    queries alternately, each in path order, so that even 2 queries leave an AUROC defined."""
    queries = pd.concat([group.queries for group in plan.groups])
    normal = sorted(queries[queries.label == 0].path)
    anomalous = sorted(queries[queries.label == 1].path)
    interleaved = [p for pair in zip(normal, anomalous) for p in pair]
    longer = normal if len(normal) > len(anomalous) else anomalous
    kept = set((interleaved + longer[min(len(normal), len(anomalous)):])[:limit])
    groups = [QueryGroup(group.abnormal, group.queries[group.queries.path.isin(kept)]) for group in plan.groups]
    return Plan(plan.manifest_path, plan.normal, [g for g in groups if len(g.queries)], plan.removed_from_queries)
