"""Coverage: is an anomalous query's defect type among its abnormal references' types?

The paper's protocol gives every anomalous query an abnormal reference of its own type (covered by
construction); the clean protocol draws the references once per (category, seed), so most
anomalous queries there are uncovered. A cell with abnormal references records, per anomalous
query, its defect type and whether it is covered, and its image and pixel AUROC split into
covered and uncovered anomalous queries, each scored against all the normal queries of the
category; a part's cell value is the mean over the categories where it has anomalous queries.
Intervals come from the cell's bootstrap (benchmark/run/intervals.py) restricted to the part's
images; the part's pixel AUROC is that of the bootstrap's quantised maps (PIXEL_BINS levels), not
the exact one of the main tables (a second exact pass would double the cost of evaluation).
"""

from __future__ import annotations

import numpy as np

from benchmark.run.intervals import category_replicates, cell_replicates, histogram_auroc, interval, weighted_auroc

PARTS = ("covered", "uncovered")


def coverage_flags(queries: list[dict], references: list[dict]) -> list[bool | None]:
    """Per query: None for a normal one, else whether a reference has its defect type."""
    types = {reference["defect"] for reference in references}
    return [None if int(query["label"]) == 0 else query["defect"] in types for query in queries]


def _part_values(labels: np.ndarray, scores: np.ndarray, histograms: np.ndarray | None) -> dict:
    """The exact image AUROC and the quantised pixel AUROC of one part of a category."""
    ones = np.ones((1, labels.size))
    pixel = None if histograms is None else float(histogram_auroc(histograms, ones)[0])
    return {"image_auroc": float(weighted_auroc(labels, scores, ones)[0]), "pixel_auroc": pixel}


def category_coverage(category: str, reference_seed: int, paths: list[str], labels: list[int], scores: list[float],
                      covered: list[bool | None], histograms: np.ndarray | None) -> dict:
    """{part: {values, replicates, anomalous}} for one category (a part with no anomalous query is left out)."""
    labels, covered = np.asarray(labels), np.asarray(covered, dtype=object)
    out = {}
    for part in PARTS:
        keep = (labels == 0) | (covered == (part == "covered"))
        anomalous = int((labels[keep] == 1).sum())
        if not anomalous or not (labels[keep] == 0).any():
            continue
        index = np.flatnonzero(keep)
        part_histograms = None if histograms is None else np.asarray(histograms)[index]
        kept = ([paths[i] for i in index], labels[index], np.asarray(scores, dtype=np.float64)[index])
        out[part] = {"values": _part_values(kept[1], kept[2], part_histograms), "anomalous": anomalous,
                     "replicates": category_replicates(category, reference_seed, *kept, part_histograms)}
    return out


def cell_coverage(per_category: dict[str, dict], by_construction: bool) -> dict:
    """The cell's breakdown: per part, the mean over categories, its interval, and the counts."""
    out = {"by_construction": by_construction}
    for part in PARTS:
        present = {c: parts[part] for c, parts in per_category.items() if part in parts}
        if not present:
            out[part] = {"anomalous": 0, "categories": 0}
            continue
        replicates = cell_replicates({c: p["replicates"] for c, p in present.items()})
        entry = {"anomalous": sum(p["anomalous"] for p in present.values()), "categories": len(present), "bootstrap": {}}
        for metric in ("image_auroc", "pixel_auroc"):
            values = [p["values"][metric] for p in present.values() if p["values"][metric] is not None]
            finite = [v for v in values if np.isfinite(v)]
            entry[metric] = float(np.mean(finite)) if finite else None
            entry[f"{metric}_interval"] = interval(replicates[metric])
            entry["bootstrap"][metric] = None if replicates[metric] is None else np.round(replicates[metric], 6).tolist()
        out[part] = entry
    return out
