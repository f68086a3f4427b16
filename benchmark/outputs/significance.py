"""Intervals and paired comparisons over seeds, from the cells' bootstrap replicates.

A table entry is the mean over reference seeds of a cell value; its interval is the percentile
interval of the mean over seeds of the cells' replicates (each seed resampled independently,
benchmark/run/intervals.py). Two rows are compared on the same queries: the difference of
their replicates, seed by seed, is a paired bootstrap of the AUROC difference; across categories
a Wilcoxon signed-rank test (scipy) asks whether one method wins category by category. Both
answer for the reference draws and test images seen, not for other training seeds: the training
seed is fixed unless a config varies it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from benchmark.run.intervals import LEVEL, category_replicates, cell_replicates, interval


def with_replicates(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with a `replicates` column, derived once per cell (`cell_bootstrap` then reads it)."""
    if "replicates" in frame or frame.empty:
        return frame
    return frame.assign(replicates=[_replicates(row) for _, row in frame.iterrows()])


def cell_bootstrap(row) -> dict[str, np.ndarray | None]:
    replicates = row.get("replicates")
    return replicates if isinstance(replicates, dict) else _replicates(row)


def _replicates(row) -> dict[str, np.ndarray | None]:
    """A cell's replicates as stored; image ones recomputed from its per-image scores for cells
    written before intervals existed (the same resamples: the result is identical)."""
    stored = row.get("bootstrap") or {}
    out = {metric: None if stored.get(metric) is None else np.asarray(stored[metric]) for metric in ("image_auroc", "pixel_auroc")}
    if out["image_auroc"] is None and row.get("per_image"):
        recomputed = {c: category_replicates(c, int(row["seed"]), p["path"], p["label"], p["score"])
                      for c, p in row["per_image"].items()}
        out["image_auroc"] = cell_replicates(recomputed)["image_auroc"]
    return out


def pooled_replicates(rows: pd.DataFrame, metric: str) -> np.ndarray | None:
    """Mean over the rows' seeds of their replicates; None unless every row has them."""
    replicates = [cell_bootstrap(row)[metric] for _, row in rows.iterrows()]
    if not replicates or any(r is None for r in replicates):
        return None
    return np.mean(replicates, axis=0)


def pooled_interval(rows: pd.DataFrame, metric: str) -> tuple[float, float] | None:
    return interval(pooled_replicates(rows, metric))


@dataclass
class Paired:
    """A - B on the same queries: mean over seeds, its paired-bootstrap interval and two-sided
    bootstrap p-value, and the Wilcoxon signed-rank p-value over categories (seed means)."""

    difference: float
    low: float
    high: float
    p_bootstrap: float
    p_wilcoxon: float
    seeds: int
    categories: int


def _queries(row) -> set:
    return {(c, p) for c, part in (row.get("per_image") or {}).items() for p in part["path"]}


def paired(rows_a: pd.DataFrame, rows_b: pd.DataFrame, metric: str) -> Paired | None:
    """None when the two share no seed, a seed's queries differ, or replicates are missing."""
    seeds = sorted(set(rows_a.seed) & set(rows_b.seed))
    a = {s: rows_a[rows_a.seed == s].iloc[0] for s in seeds}
    b = {s: rows_b[rows_b.seed == s].iloc[0] for s in seeds}
    if not seeds or any(_queries(a[s]) != _queries(b[s]) for s in seeds):
        return None
    differences = []
    for seed in seeds:
        rep_a, rep_b = cell_bootstrap(a[seed])[metric], cell_bootstrap(b[seed])[metric]
        if rep_a is None or rep_b is None:
            return None
        differences.append(rep_a - rep_b)
    replicates = np.mean(differences, axis=0)
    point = float(np.mean([a[s][metric] - b[s][metric] for s in seeds]))
    low, high = interval(replicates)
    p_bootstrap = float(min(1.0, 2 * min(np.mean(replicates <= 0), np.mean(replicates >= 0))))
    per_category = []
    for category in sorted(a[seeds[0]]["per_category"]):
        values = [_value(a[s], category, metric) - _value(b[s], category, metric) for s in seeds]
        if values and np.isfinite(values).all():
            per_category.append(float(np.mean(values)))
    p_wilcoxon = float("nan")
    if len(per_category) >= 2 and np.any(np.asarray(per_category) != 0):
        p_wilcoxon = float(stats.wilcoxon(per_category).pvalue)
    return Paired(point, low, high, p_bootstrap, p_wilcoxon, len(seeds), len(per_category))


def _value(row, category: str, metric: str) -> float:
    value = (row["per_category"].get(category) or {}).get(metric)
    return np.nan if value is None else float(value)


def mark_not_worse(table: pd.DataFrame, frame: pd.DataFrame, targets: list[str], metrics: list[str],
                   method_names: dict[str, str]) -> pd.DataFrame:
    """Adds `{target}:{metric}:not_worse`: within each shot group (k), True for the rows whose
    paired difference to the group's best row has a 95 % interval reaching 0 (the best row itself
    included), False when it does not, None when the two cannot be paired."""
    table = table.copy()
    for target in targets:
        for metric in metrics:
            column = f"{target}:{metric}:not_worse"
            table[column] = pd.Series([None] * len(table), index=table.index, dtype=object)
            for _, group in table.groupby("k"):
                means = group[f"{target}:{metric}:mean"].dropna()
                if means.empty:
                    continue
                best = means.idxmax()
                best_rows = _rows(frame, table.loc[best], target, method_names)
                for index in means.index:
                    result = paired(best_rows, _rows(frame, table.loc[index], target, method_names), metric)
                    if index == best:
                        table.loc[index, column] = True
                    elif result is not None:
                        table.loc[index, column] = bool(result.low <= 0)
    return table


def _rows(frame: pd.DataFrame, record, target: str, method_names: dict[str, str]) -> pd.DataFrame:
    method = method_names[record["method"]]
    return frame[(frame.method == method) & (frame.setting == record["setting"]) & (frame.target == target)
                 & (frame.status == "done")]


def compare_frame(frame: pd.DataFrame, method_a: str, method_b: str, metrics: list[str]) -> pd.DataFrame:
    """`gadbench compare`: per target and shot count k, A - B in points, each method in its own
    setting at k (N^k+A^1 where it ran it, else N^k: both protocols score the same queries in the
    two, and `paired` checks it), with the interval and the tests."""
    out = []
    done = with_replicates(frame[frame.status == "done"])
    for (target, k), part in done.groupby(["target", "k"], sort=False):
        rows_a, rows_b = own_setting_rows(part[part.method == method_a]), own_setting_rows(part[part.method == method_b])
        if rows_a.empty or rows_b.empty:
            continue
        for metric in metrics:
            result = paired(rows_a, rows_b, metric)
            if result is None:
                continue
            settings = rows_a.setting.iloc[0] + ("" if rows_a.setting.iloc[0] == rows_b.setting.iloc[0] else f" vs {rows_b.setting.iloc[0]}")
            out.append({"target": target, "setting": settings, "metric": metric, "difference": 100 * result.difference,
                        "ci_low": 100 * result.low, "ci_high": 100 * result.high, "p_bootstrap": result.p_bootstrap,
                        "p_wilcoxon": result.p_wilcoxon, "seeds": result.seeds, "categories": result.categories})
    return pd.DataFrame(out)


def own_setting_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """A method's rows at one k in its own setting: N^k+A^1 where it ran it (the paper's), else
    its largest j (N^k for a normal-only method)."""
    if not len(rows):
        return rows
    abnormal = 1 if (rows.abnormal == 1).any() else rows.abnormal.max()
    return rows[rows.abnormal == abnormal]


LEVEL_TEXT = f"{round(100 * LEVEL)} %"
