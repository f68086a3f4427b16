"""`gadbench report`: results/report.md with the tables and the figures papers show (PNG).

Figures, per experiment:
  - qualitative grid: chosen anomalous test images of every target category, their ground-truth
    masks, and each method's anomaly map (recomputed for those images from the finished cells'
    checkpoints and references; features come from the cache);
  - ROC curves per method for one category and shot count (from the per-image scores of seed 0);
  - per-category image AUROC per method as bars, with the spread (std) over seeds;
  - the gain from the abnormal reference: image AUROC against k, N^k methods solid, N^k+A^1 dashed;
  - with an abnormal_shots table: image and pixel AUROC against j, with bootstrap intervals.
Everything is read from the cell files; only the qualitative maps are computed again.
"""

from __future__ import annotations

import textwrap
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from benchmark.api.atomic import atomic_file, write_text  # noqa: E402
from benchmark.errors import GadbenchError  # noqa: E402
from benchmark.run.experiment import Experiment  # noqa: E402
from benchmark.data.images import load_image, load_mask  # noqa: E402
from benchmark.run.qualitative import own_setting, qualitative_maps  # noqa: E402
from benchmark.run.record import DONE  # noqa: E402
from benchmark.outputs.tables import collect, write_tables  # noqa: E402
from benchmark.outputs.cd_diagram import critical_difference  # noqa: E402
from benchmark.outputs.question_figures import auroc_against_j  # noqa: E402


def _save(figure, path: Path) -> Path:
    with atomic_file(path) as temporary:
        figure.savefig(temporary, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return path


# ---------------------------------------------------------------------------------- figures
def per_category_bars(experiment: Experiment, frame: pd.DataFrame, target: str, k: int):
    rows = []
    for method in experiment.methods:
        setting = own_setting(experiment, method.name, k, frame)
        cells = frame[(frame.method == method.name) & (frame.target == target) & (frame.setting == setting) & (frame.status == DONE)]
        for _, cell in cells.iterrows():
            for category, metrics in cell.per_category.items():
                rows.append({"label": f"{method.label} ({setting})", "category": category, "seed": cell.seed,
                             "auroc": 100 * (metrics.get("image_auroc") or np.nan)})
    if not rows:
        return None
    # the tables' spread: the population std over seeds (none for one seed)
    data = pd.DataFrame(rows).groupby(["label", "category"]).auroc.agg(mean="mean", std=lambda v: v.std(ddof=0)).reset_index()
    labels, categories = list(dict.fromkeys(data.label)), sorted(data.category.unique())
    figure, axis = plt.subplots(figsize=(max(6, 1.4 * len(categories) * max(1, len(labels)) / 3), 3.6))
    width = 0.8 / len(labels)
    for i, label in enumerate(labels):
        part = data[data.label == label].set_index("category").reindex(categories)
        axis.bar(np.arange(len(categories)) + i * width - 0.4 + width / 2, part["mean"], width,
                 yerr=part["std"].fillna(0), capsize=2, label=label)
    axis.set_xticks(np.arange(len(categories)), categories, rotation=30, ha="right")
    axis.set_ylabel("image AUROC (%)")
    axis.set_ylim(max(0, np.nanmin(data["mean"]) - 15), 100)
    axis.set_title(f"{experiment.datasets[target].label}: per category, k = {k} (bars: mean, whiskers: std over seeds)")
    axis.legend(fontsize=7, ncol=2)
    return figure


def roc_figure(experiment: Experiment, frame: pd.DataFrame, target: str, category: str, k: int, seed: int):
    figure, axis = plt.subplots(figsize=(4.6, 4.2))
    drawn = 0
    for method in experiment.methods:
        setting = own_setting(experiment, method.name, k, frame)
        cell = frame[(frame.method == method.name) & (frame.target == target) & (frame.setting == setting)
                     & (frame.seed == seed) & (frame.status == DONE)]
        if cell.empty:
            continue
        scores = cell.iloc[0].per_image.get(category)
        if not scores or len(set(scores["label"])) < 2:
            continue
        fpr, tpr, _ = roc_curve(scores["label"], scores["score"])
        auroc = 100 * cell.iloc[0].per_category[category]["image_auroc"]
        axis.plot(fpr, tpr, label=f"{method.label} ({setting}) {auroc:.1f}")
        drawn += 1
    if not drawn:
        plt.close(figure)
        return None
    axis.plot([0, 1], [0, 1], color="grey", linewidth=0.6, linestyle=":")
    axis.set_xlabel("false positive rate")
    axis.set_ylabel("true positive rate")
    axis.set_title(f"ROC, {category} ({experiment.datasets[target].label}), k = {k}, seed {seed}", fontsize=9)
    axis.legend(fontsize=6.5, loc="lower right")
    return figure


def abnormal_reference_gain(experiment: Experiment, frame: pd.DataFrame):
    done = frame[frame.status == DONE]
    if done.empty:
        return None
    figure, axis = plt.subplots(figsize=(5.4, 3.8))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, method in enumerate(experiment.methods):
        for abnormal, style in ((0, "-"), (1, "--")):
            part = done[(done.method == method.name) & (done.abnormal == abnormal)]
            if part.empty:
                continue
            # mean over targets per seed, then mean over seeds: as the tables compute it
            per_seed = part.groupby(["k", "seed"]).image_auroc.mean().groupby("k").mean() * 100
            axis.plot(per_seed.index, per_seed.values, style, marker="o", color=colours[i % len(colours)],
                      label=f"{method.label} ({'N$^k$+A$^1$' if abnormal else 'N$^k$'})")
    axis.set_xlabel("k (normal references)")
    axis.set_xticks(sorted(done.k.unique()))
    axis.set_ylabel("image AUROC (%), mean over targets")
    axis.set_title("Gain from the abnormal reference: solid N$^k$, dashed N$^k$+A$^1$", fontsize=9)
    axis.legend(fontsize=6.5)
    return figure


def qualitative_grid(panels: list, method_labels: list[str]):
    """One row per chosen image: image, ground truth, then one panel per method."""
    if not panels:
        return None
    columns = 2 + len(method_labels)
    figure, axes = plt.subplots(len(panels), columns, figsize=(1.7 * columns, 1.75 * len(panels)), squeeze=False)
    for r, (target, category, row, maps, threshold) in enumerate(panels):
        image = load_image(row.path)
        mask = load_mask(row["mask"], (image.height, image.width), threshold)
        axes[r][0].imshow(image)
        axes[r][0].set_ylabel(f"{category}\n{Path(row.path).name}", fontsize=6)
        axes[r][1].imshow(mask, cmap="gray")
        for c, label in enumerate(method_labels, start=2):
            value = maps.get(label, "not in this experiment")
            if isinstance(value, str):
                short = "weights missing" if value.startswith("weights file") else value
                axes[r][c].text(0.5, 0.5, textwrap.fill(short, 18, max_lines=4, placeholder=" ..."), ha="center",
                                va="center", fontsize=6, transform=axes[r][c].transAxes)
                axes[r][c].set_box_aspect(1)
            else:
                axes[r][c].imshow(image, alpha=1.0)
                axes[r][c].imshow(value, cmap="jet", alpha=0.5)
        for c in range(columns):
            axes[r][c].set_xticks([])
            axes[r][c].set_yticks([])
    for c, title in enumerate(["image", "ground truth"] + method_labels):
        axes[0][c].set_title(title, fontsize=6.5)
    figure.tight_layout()
    return figure


# ---------------------------------------------------------------------------------- report
def write_report(experiments: list[Experiment], results_root: Path, k: int | None = None, benches: list[str] | None = None,
                 images_per_category: int = 1, seed: int = 0, cache_dir: Path | None = None,
                 roc_on: str | None = None, echo=print) -> Path:
    from benchmark.run.runner import Runner

    results_root = Path(results_root)
    figures = results_root / "figures"
    lines = ["# gadbench report", "",
             f"Written {time.strftime('%Y-%m-%d %H:%M')} from the cell files under `{results_root}` "
             "(AUROC in %, mean ± std over seeds; `–` = not available, with the reason below the table).", ""]
    frames, roc_choices = {}, {}
    for experiment in experiments:  # every input problem is found before anything is written
        frame = collect(experiment, results_root)
        if frame.empty or not (frame.status == DONE).any():
            raise GadbenchError(f"{experiment.path}: no finished cells under {results_root}; run `gadbench run -e {experiment.path}` first")
        frames[experiment.name], roc_choices[experiment.name] = frame, roc_category(experiment, frame, roc_on)
    for experiment in experiments:
        frame = frames[experiment.name]
        chosen_k = k if k is not None else int(frame[frame.status == DONE].k.min())
        rendered = []
        write_tables(experiment, results_root, echo=lambda *_: None, rendered=rendered)
        lines += [f"## {experiment.name}: {experiment.description}", ""] + [line for table in rendered for line in table.markdown()]
        for target in sorted({t for _, t in experiment.pairs}):
            figure = per_category_bars(experiment, frame, target, chosen_k)
            if figure is not None:
                path = _save(figure, figures / f"{experiment.name}_per_category_{target}.png")
                lines += [f"![per-category image AUROC, {target}](figures/{path.name})", ""]
        target, category = roc_choices[experiment.name]
        figure = roc_figure(experiment, frame, target, category, chosen_k, seed)
        if figure is not None:
            path = _save(figure, figures / f"{experiment.name}_roc_{target}_{category}.png")
            lines += [f"![ROC curves, {category}](figures/{path.name})", ""]
        figure = abnormal_reference_gain(experiment, frame)
        if figure is not None:
            path = _save(figure, figures / f"{experiment.name}_abnormal_reference_gain.png")
            lines += [f"![gain from the abnormal reference](figures/{path.name})", ""]
        shots = [t for spec in experiment.tables.values() if spec["kind"] == "abnormal_shots" for t in spec["targets"]]
        figure = auroc_against_j(experiment, frame, list(dict.fromkeys(shots))) if shots else None
        if figure is not None:
            path = _save(figure, figures / f"{experiment.name}_auroc_against_j.png")
            lines += [f"![AUROC against the number of abnormal references](figures/{path.name})", ""]
        difference = critical_difference(frame, f"{experiment.name}: critical-difference diagram")
        if difference is not None:
            path = _save(difference[0], figures / f"{experiment.name}_critical_difference.png")
            lines += [difference[1], "", f"![critical-difference diagram](figures/{path.name})", ""]
        runner = Runner(experiment, results_root, show_progress=False, cache_dir=cache_dir)
        panels = qualitative_maps(runner, experiment, frame, chosen_k, images_per_category, seed)
        figure = qualitative_grid(panels, [m.label for m in experiment.methods])
        if figure is not None:
            path = _save(figure, figures / f"{experiment.name}_qualitative.png")
            lines += [f"Qualitative results (k = {chosen_k}, seed {seed}; maps over the image, each method in its own setting):", "",
                      f"![qualitative grid](figures/{path.name})", ""]
        echo(f"{experiment.name}: tables and figures written")
    from benchmark.outputs.efficiency_tables import bench_names, write_efficiency_tables

    for name in benches if benches is not None else bench_names(results_root):
        rendered = []
        write_efficiency_tables(results_root, name, echo=lambda *_: None, rendered=rendered)
        lines += [f"## Efficiency ({name})", ""] + [line for table in rendered for line in table.markdown()]
    report = results_root / "report.md"
    write_text("\n".join(lines), report)
    return report


def roc_category(experiment: Experiment, frame: pd.DataFrame, wanted: str | None) -> tuple[str, str]:
    """(target, category) of the ROC figure: `wanted` ("category" or "target/category"), else the
    first category of the first target."""
    done = frame[frame.status == DONE]
    available = sorted({(t, c) for t, per in zip(done.target, done.per_category) for c in per})
    if not wanted:
        return available[0] if available else (sorted({t for _, t in experiment.pairs})[0], "(none)")
    target, _, category = wanted.rpartition("/")
    matches = [(t, c) for t, c in available if c == category and (not target or t == target)]
    if not matches:
        raise GadbenchError(f"--roc-category {wanted!r}: no finished cell has it; choose one of "
                            f"{', '.join(f'{t}/{c}' for t, c in available)}")
    return matches[0]

