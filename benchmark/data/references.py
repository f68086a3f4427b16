"""Reference manifests: which images each (dataset, category, setting, seed) uses as references.

One CSV per (protocol, dataset, category, k normal, k abnormal, seed) under results/references/,
columns: role, path, defect, mask, sha256 (paths relative to the dataset root). A manifest is made
once and then only read: a file whose bytes changed is an error, never a silent re-draw.

Protocols (docs/protocol.md):
  clean     normal refs nested across k within a seed: sorted train/good[seed*B : seed*B + k] with
            B = nested_block (4, the largest k); one abnormal reference per (category, seed),
            drawn with a seeded RNG among test defects with a non-empty mask, removed from the
            queries of every setting of that seed (role 'excluded' when the setting has no A^j),
            so N^k and N^k+A^1 score the same query set.
  official  the NAGL code: normal refs sorted train/good[seed*k : (seed+1)*k]; for each query of
            defect type T the abnormal reference is the seed-th sorted file of test/T (an error
            when a type has fewer files); all normal queries share the reference of one type drawn
            once per (category, setting, seed), as the code draws it once per call (it leaves the
            draw unseeded; here it is seeded and recorded as 'assignment' rows); references stay
            in the test set and are scored.
"""

from __future__ import annotations

import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from benchmark.api.atomic import atomic_file
from benchmark.errors import GadbenchError, closest
from benchmark.data.images import file_sha256, image_size, load_mask

MANIFEST_COLUMNS = ["role", "path", "defect", "mask", "sha256"]
PROTOCOLS = ("clean", "official")
NORMAL_RULES = {"clean": "nested", "official": "official-slice"}


@dataclass(frozen=True)
class Setting:
    k_normal: int
    k_abnormal: int = 0

    @property
    def label(self) -> str:
        return f"N{self.k_normal}" + (f"+A{self.k_abnormal}" if self.k_abnormal else "")

    @property
    def latex(self) -> str:
        return f"$N^{{{self.k_normal}}}$" + (f"$+A^{{{self.k_abnormal}}}$" if self.k_abnormal else "")


def parse_setting(text: str) -> Setting:
    match = re.fullmatch(r"\s*N\^?(\d+)\s*(?:\+\s*A\^?(\d+))?\s*", str(text))
    if not match:
        raise GadbenchError(f"setting {text!r} not understood; write N<k> or N<k>+A<j>, e.g. N1, N4+A1")
    k_normal, k_abnormal = int(match[1]), int(match[2] or 0)
    if k_normal < 1:
        raise GadbenchError(f"setting {text!r}: needs at least one normal reference")
    if k_abnormal > 1:
        raise GadbenchError(f"setting {text!r}: more than one abnormal reference is not supported by the protocols yet")
    return Setting(k_normal, k_abnormal)


@dataclass
class QueryGroup:
    """Queries that share one abnormal reference (the clean protocol has exactly one group)."""

    abnormal: dict | None
    queries: pd.DataFrame


@dataclass
class Plan:
    """Everything the runner needs for one (category, setting, seed)."""

    manifest_path: Path
    normal: pd.DataFrame
    groups: list[QueryGroup]
    removed_from_queries: int


def _category_seed_rng(category: str, seed: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(category.encode())])


def manifest_path(root: Path, protocol: str, dataset: str, category: str, setting: Setting, seed: int) -> Path:
    return Path(root) / protocol / dataset / category / f"n{setting.k_normal}_a{setting.k_abnormal}_seed{seed}.csv"


def _relative(path: str, data_root: Path) -> str:
    return os.path.relpath(path, data_root)


def _resolve_inside(data_root: Path, relative: str, manifest: Path) -> str:
    if os.path.isabs(relative) or ".." in Path(relative).parts:
        raise GadbenchError(f"{manifest}: path {relative!r} points outside the data root; manifests hold paths relative to it")
    return str((data_root / relative).resolve())


def normal_slice(k: int, seed: int, rule: str, nested_block: int) -> tuple[int, int]:
    """[start, end) of the sorted train/good images that are a seed's k normal references."""
    start = seed * nested_block if rule == "nested" else seed * k
    return start, start + k


def normal_references(table: pd.DataFrame, category: str, k: int, seed: int, rule: str, nested_block: int) -> pd.DataFrame:
    good = table[(table.category == category) & (table.split == "train") & (table.label == 0)]
    good = good.sort_values("path", key=lambda p: p.map(lambda s: Path(s).name), kind="stable")
    problems = normal_shortage(len(good), category, k, seed, rule, nested_block)
    if problems:
        raise GadbenchError(problems[0])
    start, end = normal_slice(k, seed, rule, nested_block)
    return good.iloc[start:end]


def normal_shortage(available: int, category: str, k: int, seed: int, rule: str, nested_block: int) -> list[str]:
    """What a seed's normal references lack ([] when nothing), each with the option that fixes it."""
    if rule == "nested" and k > nested_block:
        return [f"k={k} exceeds nested_block={nested_block}; raise protocol_options.nested_block"]
    _, needed = normal_slice(k, seed, rule, nested_block)
    if needed > available:
        return [f"category {category!r} has {available} train/good images; k={k} at seed {seed} ({rule}) needs {needed}:"
                " use fewer seeds or a smaller k"]
    return []


def abnormal_shortage(table: pd.DataFrame, category: str, setting: Setting, seed: int, protocol: str,
                      mask_threshold: int, drawn: pd.Series | None = None) -> list[str]:
    """What a setting's abnormal references lack at this seed ([] when nothing); `drawn`: the clean
    protocol's reference when the caller has drawn it already (it reads masks to draw it)."""
    if not setting.k_abnormal:
        return []
    defects = table[(table.category == category) & (table.split == "test") & (table.label == 1)]
    if protocol == "clean":
        if (drawn if drawn is not None else clean_abnormal_reference(table, category, seed, mask_threshold)) is None:
            return [f"category {category!r} has no defective test image with a non-empty mask;"
                    f" setting {setting.label} needs one (use N<k> settings for this data set)"]
        return []
    if defects.empty:
        return [f"category {category!r} has no defective test images; setting {setting.label} needs one"]
    return [f"category {category!r}, defect type {defect_type!r} has {count} test images; the official"
            f" protocol's abnormal reference for seed {seed} needs {seed + 1} (use fewer seeds)"
            for defect_type, count in sorted(defects.defect.value_counts().items()) if seed >= count]


def manifest_shortages(table: pd.DataFrame, category: str, setting: Setting, seed: int, protocol: str,
                       nested_block: int, mask_threshold: int, drawn: pd.Series | None = None) -> list[str]:
    """Everything one (category, setting, seed) lacks for its manifest, one line each, without
    drawing or writing anything: the planning pass reports them all before a run starts."""
    if protocol not in PROTOCOLS:
        return [f"unknown protocol {protocol!r}{closest(protocol, PROTOCOLS)}"]
    good = int(((table.category == category) & (table.split == "train") & (table.label == 0)).sum())
    return (normal_shortage(good, category, setting.k_normal, seed, NORMAL_RULES[protocol], nested_block)
            + abnormal_shortage(table, category, setting, seed, protocol, mask_threshold, drawn))


def _has_defect_pixels(row, mask_threshold: int) -> bool:
    return bool(load_mask(row["mask"], image_size(row["path"]), mask_threshold).any())


def clean_abnormal_reference(table: pd.DataFrame, category: str, seed: int, mask_threshold: int) -> pd.Series | None:
    """One seeded draw per (category, seed): a defect type uniformly, then a file of that type.
    None when the category has no defect with defect pixels (no defects, or no masks: ELPV)."""
    defects = table[(table.category == category) & (table.split == "test") & (table.label == 1)]
    defects = defects[defects["mask"].notna()]
    if defects.empty:
        return None
    rng = _category_seed_rng(category, seed)
    types = sorted(defects.defect.unique())
    for _ in range(len(defects)):
        chosen_type = types[rng.integers(len(types))]
        candidates = defects[defects.defect == chosen_type].sort_values("path")
        row = candidates.iloc[rng.integers(len(candidates))]
        if _has_defect_pixels(row, mask_threshold):  # an empty mask teaches nothing (Magnetic Tile has four)
            return row
    return None


def _rows(frame: pd.DataFrame | list, role: str, data_root: Path) -> list[dict]:
    records = frame.to_dict("records") if isinstance(frame, pd.DataFrame) else frame
    return [
        {"role": role, "path": _relative(r["path"], data_root), "defect": r["defect"],
         "mask": _relative(r["mask"], data_root) if r.get("mask") else "", "sha256": file_sha256(r["path"])}
        for r in records
    ]


def make_manifest(table: pd.DataFrame, data_root: Path, category: str, setting: Setting, seed: int,
                  protocol: str, nested_block: int, mask_threshold: int) -> pd.DataFrame:
    abnormal = clean_abnormal_reference(table, category, seed, mask_threshold) if protocol == "clean" else None
    problems = manifest_shortages(table, category, setting, seed, protocol, nested_block, mask_threshold, abnormal)
    if problems:
        raise GadbenchError(problems[0])
    normal = normal_references(table, category, setting.k_normal, seed, NORMAL_RULES[protocol], nested_block)
    rows = _rows(normal, "normal", data_root)
    if protocol == "clean":
        if abnormal is not None:
            rows += _rows([abnormal.to_dict()], "abnormal" if setting.k_abnormal else "excluded", data_root)
    elif setting.k_abnormal:
        defects = table[(table.category == category) & (table.split == "test") & (table.label == 1)]
        for defect_type in sorted(defects.defect.unique()):
            files = defects[defects.defect == defect_type].sort_values("path")
            rows += _rows([files.iloc[seed].to_dict()], "abnormal", data_root)
        normal_queries = table[(table.category == category) & (table.split == "test") & (table.label == 0)].sort_values("path")
        types = sorted(defects.defect.unique())
        drawn = types[_category_seed_rng(category, seed).integers(len(types))]  # once: every normal query shares it
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
                    setting: Setting, seed: int, protocol: str, nested_block: int = 4, mask_threshold: int = 127) -> tuple[Path, pd.DataFrame]:
    path = manifest_path(references_root, protocol, dataset, category, setting, seed)
    if not path.is_file():
        write_atomic_csv(make_manifest(table, data_root, category, setting, seed, protocol, nested_block, mask_threshold), path)
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
        reference = abnormal.iloc[0].to_dict() if len(abnormal) else None
        return Plan(manifest_path_, normal, [QueryGroup(reference, queries)], removed)
    if abnormal.empty:
        return Plan(manifest_path_, normal, [QueryGroup(None, tests)], 0)
    assignments = manifest[manifest.role == "assignment"]
    if assignments.defect.nunique() > 1:
        raise GadbenchError(f"{manifest_path_}: normal queries are assigned several defect types (a manifest drawn per query"
                            " by an older gadbench); the official code draws one per call: delete the manifest and run `gadbench refs make`")
    assignment = dict(zip(assignments.path, assignments.defect))
    assigned = tests.apply(lambda r: r.defect if r.label == 1 else assignment.get(r.path), axis=1)
    if assigned.isna().any():
        missing = tests.path[assigned.isna()].iloc[0]
        raise GadbenchError(f"{manifest_path_}: normal query {missing} has no assignment row; delete the manifest and run `gadbench refs make`")
    groups = [QueryGroup(ref.to_dict(), tests[assigned == ref.defect]) for _, ref in abnormal.iterrows()]
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
