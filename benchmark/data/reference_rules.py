"""Which images are a (category, setting, seed)'s references, under each protocol (docs/protocol.md,
"Reference settings"). Pure rules over the sample table: nothing here writes a file.

Normal references
  clean     sorted train/good[seed*B : seed*B + k], B = protocol_options.nested_block: nested across
            k within a seed, disjoint across seeds
  official  sorted train/good[seed*k : (seed+1)*k], as the code's get_ref_sample_dir
  Nall      every train/good image (the code's k = -1); N0: none (the method takes the normal
            patches from the abnormal references' own normal region)
Abnormal references
  clean     a block of B = protocol_options.abnormal_block references per (category, seed), drawn
            one after another with one seeded generator (a defect type uniformly, then a file of
            it, each with defect pixels, without replacement); A^j is the block's first j, so
            A^1 c A^2 c A^4, and the whole block leaves the queries of every setting of the seed
  official  per defect type, the seed-th slice of j sorted files of test/<type>
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from benchmark.data.images import image_size, load_mask
from benchmark.data.settings import Setting
from benchmark.errors import GadbenchError, closest

PROTOCOLS = ("clean", "official")
NORMAL_RULES = {"clean": "nested", "official": "official-slice"}


def category_seed_rng(category: str, seed: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(category.encode())])


def _good(table: pd.DataFrame, category: str) -> pd.DataFrame:
    good = table[(table.category == category) & (table.split == "train") & (table.label == 0)]
    return good.sort_values("path", key=lambda p: p.map(lambda s: Path(s).name), kind="stable")


def _defects(table: pd.DataFrame, category: str) -> pd.DataFrame:
    return table[(table.category == category) & (table.split == "test") & (table.label == 1)]


def normal_slice(k: int, seed: int, rule: str, nested_block: int) -> tuple[int, int]:
    """[start, end) of the sorted train/good images that are a seed's k normal references."""
    start = seed * nested_block if rule == "nested" else seed * k
    return start, start + k


def normal_references(table: pd.DataFrame, category: str, k: int, seed: int, rule: str, nested_block: int) -> pd.DataFrame:
    good = _good(table, category)
    if k < 0:  # Nall
        return good
    problems = normal_shortage(len(good), category, k, seed, rule, nested_block)
    if problems:
        raise GadbenchError(problems[0])
    start, end = normal_slice(k, seed, rule, nested_block)
    return good.iloc[start:end]


def normal_shortage(available: int, category: str, k: int, seed: int, rule: str, nested_block: int) -> list[str]:
    """What a seed's normal references lack ([] when nothing), each with the option that fixes it."""
    if k < 0:
        return [] if available else [f"category {category!r} has no train/good images; Nall needs at least one"]
    if rule == "nested" and k > nested_block:
        return [f"k={k} exceeds nested_block={nested_block}; raise protocol_options.nested_block"]
    _, needed = normal_slice(k, seed, rule, nested_block)
    if needed > available:
        return [f"category {category!r} has {available} train/good images; k={k} at seed {seed} ({rule}) needs {needed}:"
                " use fewer seeds or a smaller k"]
    return []


def _has_defect_pixels(row, mask_threshold: int) -> bool:
    return bool(load_mask(row["mask"], image_size(row["path"]), mask_threshold).any())


def clean_abnormal_block(table: pd.DataFrame, category: str, seed: int, mask_threshold: int, block: int) -> list[pd.Series]:
    """Up to `block` references per (category, seed), in draw order ([] when the category has no
    defect with defect pixels: no defects, or no masks as ELPV). The first is drawn exactly as
    gadbench always drew its one reference, so a block of 1 (the experiments' default) keeps every
    manifest. A file with an empty mask is never drawn again."""
    defects = _defects(table, category)
    defects = defects[defects["mask"].notna()]
    if defects.empty:
        return []
    rng = category_seed_rng(category, seed)
    types = sorted(defects.defect.unique())
    chosen, rejected = [], set()
    for _ in range(len(defects)):
        chosen_type = types[rng.integers(len(types))]
        candidates = defects[defects.defect == chosen_type].sort_values("path")
        row = candidates.iloc[rng.integers(len(candidates))]
        if _has_defect_pixels(row, mask_threshold):  # an empty mask teaches nothing (Magnetic Tile has four)
            chosen.append(row)
            break
        rejected.add(row.path)
    while chosen and len(chosen) < block:  # the rest of the block: the same generator, without replacement
        taken = rejected | {r.path for r in chosen}
        left = defects[~defects.path.isin(taken)]
        if left.empty:
            break
        left_types = sorted(left.defect.unique())
        candidates = left[left.defect == left_types[rng.integers(len(left_types))]].sort_values("path")
        row = candidates.iloc[rng.integers(len(candidates))]
        if _has_defect_pixels(row, mask_threshold):
            chosen.append(row)
        else:
            rejected.add(row.path)
    return chosen


def official_abnormal_slices(table: pd.DataFrame, category: str, j: int, seed: int) -> dict[str, pd.DataFrame]:
    """Per defect type, the seed-th slice of j sorted files of test/<type> (get_ref_sample_dir)."""
    defects = _defects(table, category)
    return {defect_type: defects[defects.defect == defect_type].sort_values("path").iloc[seed * j:(seed + 1) * j]
            for defect_type in sorted(defects.defect.unique())}


def abnormal_shortage(table: pd.DataFrame, category: str, setting: Setting, seed: int, protocol: str,
                      mask_threshold: int, drawn: list | None, abnormal_block: int) -> list[str]:
    """What a setting's abnormal references lack at this seed ([] when nothing); `drawn`: the clean
    protocol's block when the caller has drawn it already (it reads masks to draw it)."""
    j = setting.k_abnormal
    if not j:
        return []
    if protocol == "clean":
        if j > abnormal_block:
            return [f"setting {setting.label} needs {j} abnormal references per (category, seed) but"
                    f" protocol_options.abnormal_block is {abnormal_block}; raise abnormal_block to at least {j}"]
        block = drawn if drawn is not None else clean_abnormal_block(table, category, seed, mask_threshold, abnormal_block)
        if not block:
            return [f"category {category!r} has no defective test image with a non-empty mask;"
                    f" setting {setting.label} needs one (use N<k> settings for this data set)"]
        if len(block) < j:
            return [f"category {category!r} has {len(block)} defective test images with a non-empty mask;"
                    f" setting {setting.label} needs {j} (use a smaller j)"]
        return []
    if _defects(table, category).empty:
        return [f"category {category!r} has no defective test images; setting {setting.label} needs one"]
    return [f"category {category!r}, defect type {defect_type!r} has {count} test images; the official"
            f" protocol's {j} abnormal reference(s) for seed {seed} need {(seed + 1) * j} (use fewer seeds or a smaller j)"
            for defect_type, count in sorted(_defects(table, category).defect.value_counts().items())
            if (seed + 1) * j > count]


def manifest_shortages(table: pd.DataFrame, category: str, setting: Setting, seed: int, protocol: str,
                       nested_block: int, mask_threshold: int, drawn: list | None = None, *,
                       abnormal_block: int) -> list[str]:
    """Everything one (category, setting, seed) lacks for its manifest, one line each, without
    drawing or writing anything: the planning pass reports them all before a run starts."""
    if protocol not in PROTOCOLS:
        return [f"unknown protocol {protocol!r}{closest(protocol, PROTOCOLS)}"]
    good = len(_good(table, category))
    normal = [] if setting.k_normal == 0 else normal_shortage(good, category, setting.k_normal, seed,
                                                               NORMAL_RULES[protocol], nested_block)
    return normal + abnormal_shortage(table, category, setting, seed, protocol, mask_threshold, drawn, abnormal_block)
