"""The report's figure for the abnormal-reference question: image and pixel AUROC against the
number of abnormal references j, one line per (method, k) (a colour per method, a line style per
k), error bars the 95 % bootstrap interval pooled over seeds (benchmark/outputs/question_tables.py
computes the values)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from benchmark.outputs.question_tables import abnormal_shots  # noqa: E402


def auroc_against_j(experiment, frame: pd.DataFrame, targets: list[str]):
    """A figure with one panel per (target, metric), or None when fewer than two j were run."""
    long, *_ = abnormal_shots(experiment, frame, targets)
    if long.empty:
        return None
    long = long[long["mean"].notna()]
    if long.j.nunique() < 2:
        return None
    panels = [(t, m) for t in targets for m in ("image_auroc", "pixel_auroc") if len(long[(long.target == t) & (long.metric == m)])]
    figure, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels) + 2.6, 3.8), squeeze=False)
    colours = plt.cm.tab10.colors + plt.cm.Dark2.colors
    methods = list(dict.fromkeys(long.method))
    styles = dict(zip(dict.fromkeys(long.k), ["-", "--", ":", "-."] * 4))
    for axis, (target, metric) in zip(axes[0], panels):
        for method, k in dict.fromkeys(zip(long.method, long.k)):
            part = long[(long.target == target) & (long.metric == metric) & (long.method == method) & (long.k == k)].sort_values("j")
            if part.empty:
                continue
            low = np.clip(np.where(part.ci_low.notna(), part["mean"] - part.ci_low, 0), 0, None)  # a percentile interval
            high = np.clip(np.where(part.ci_high.notna(), part.ci_high - part["mean"], 0), 0, None)  # may miss the mean
            axis.errorbar(part.j, part["mean"], yerr=[low, high], marker="o", markersize=3.5, capsize=2.5,
                          color=colours[methods.index(method) % len(colours)], linestyle=styles[k], label=f"{method}, N{k}")
        axis.set_xticks(sorted(long.j.unique()))
        axis.set_xlabel("j (abnormal references; 0 = N^k alone)")
        axis.set_ylabel(f"{'image' if metric == 'image_auroc' else 'pixel'} AUROC (%)")
        axis.set_title(experiment.datasets[target].label, fontsize=9)
    axes[0][-1].legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    figure.suptitle(f"{experiment.name}: AUROC against j (mean over seeds, 95 % bootstrap interval)", fontsize=9)
    figure.tight_layout()
    return figure
