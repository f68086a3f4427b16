"""A critical-difference diagram per experiment: which methods' average ranks differ beyond chance.

Blocks are (target, shot count k, category); in each, every method is ranked by its image AUROC
(mean over seeds) in its own setting at that k (N^k+A^1 where it ran, else N^k), 1 = best. The
Friedman test (scipy) asks whether any ranks differ; the Nemenyi post-hoc test (scikit-posthocs)
which pairs do, at the 5 % level; methods joined by a bar in the diagram are not significantly
different. Blocks where a method has no value (missing weights, failed cells) are left out.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy import stats  # noqa: E402
from benchmark.outputs.significance import own_setting_rows  # noqa: E402

ALPHA = 0.05


def block_values(frame: pd.DataFrame) -> pd.DataFrame:
    """[blocks x methods] image AUROC, each method in its own setting per k; complete blocks only."""
    done = frame[frame.status == "done"]
    records = []
    for (method, k), part in done.groupby(["method", "k"]):
        own = own_setting_rows(part)  # N^k+A^1 where the method ran it
        for row in own.itertuples():
            for category, metrics in row.per_category.items():
                value = metrics.get("image_auroc")
                if value is not None and np.isfinite(value):
                    records.append({"label": row.label, "block": f"{row.target} k={k} {category}", "value": value})
    if not records:
        return pd.DataFrame()
    table = pd.DataFrame(records).groupby(["block", "label"]).value.mean().unstack("label")
    return table.dropna(axis=1, how="all").dropna(axis=0)


def critical_difference(frame: pd.DataFrame, title: str):
    """(figure, one-line summary) or None when fewer than 3 methods or 2 complete blocks."""
    import scikit_posthocs

    values = block_values(frame)
    if values.shape[1] < 3 or values.shape[0] < 2:
        return None
    friedman = stats.friedmanchisquare(*values.to_numpy().T)
    nemenyi = scikit_posthocs.posthoc_nemenyi_friedman(values.to_numpy())
    nemenyi.index = nemenyi.columns = values.columns
    ranks = values.rank(axis=1, ascending=False).mean()
    figure, axis = plt.subplots(figsize=(7, 0.5 + 0.35 * len(ranks)))
    scikit_posthocs.critical_difference_diagram(ranks, nemenyi, ax=axis, alpha=ALPHA)
    axis.set_title(title, fontsize=9)
    summary = (f"Average ranks over {values.shape[0]} blocks (target x k x category, image AUROC, 1 = best); Friedman"
               f" chi2 = {friedman.statistic:.1f}, p = {friedman.pvalue:.2g}; bars join methods the Nemenyi test"
               f" does not separate at the {round(100 * ALPHA)} % level.")
    return figure, summary
