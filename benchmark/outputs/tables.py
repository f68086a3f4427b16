"""Cell files -> tables: main / medical (per the experiment's `tables:`) and per-category tables.

Every value is the mean +- std over seeds of the per-seed mean over categories, in percent, with
its 95 % bootstrap interval in the CSV; rows not significantly worse than the best of their shot
group are marked (benchmark/outputs/significance.py).
CSV holds the numbers (mean and std columns); LaTeX (booktabs) and the console view show
'mean +- std', best of each shot group in bold and second underlined. Cells that were skipped
(missing weights) or failed show as missing with a footnote that says why; a cell whose method
cannot run its setting shows 'n/a', with the reason as a footnote.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from benchmark.api.atomic import write_text
from benchmark.outputs import question_tables
from benchmark.outputs.rendered import RenderedTable, caption
from benchmark.outputs.significance import LEVEL_TEXT, mark_not_worse, pooled_interval, with_replicates
from benchmark.run.experiment import Experiment
from benchmark.data.settings import parse_setting
from benchmark.run.record import DONE, MISSING, NOT_APPLICABLE
from benchmark.run.results import recorded_cells

TABLE_METRICS = [("image_auroc", "Image"), ("pixel_auroc", "Pixel")]


def collect(experiment: Experiment, results_root: Path) -> pd.DataFrame:
    """One row per cell of the grid (also the missing ones), with its status and mean metrics."""
    rows = []
    for cell, record in recorded_cells(experiment, Path(results_root)):
        row = {"method": cell.method.name, "label": cell.method.label, "setting": cell.setting.label,
               "k": cell.setting.k_normal, "abnormal": cell.setting.k_abnormal, "source": cell.source,
               "target": cell.target, "seed": cell.seed, "status": record.status if record else MISSING,
               "reason": record.why_not if record else "not run yet",
               "random_weights": bool(record and record.random_weights),
               "target_selected": bool(record and record.target_selected),
               "rehearsal": bool(record and record.rehearsal), "limit": record.limit if record else None,
               "per_category": record.per_category if record else {},
               "per_image": record.per_image if record else {},
               "bootstrap": record.bootstrap if record else None, "coverage": record.coverage if record else None,
               "config": cell.method.config}
        for name, value in (record.mean_metrics if record else {}).items():
            row[name] = np.nan if value is None else value
        rows.append(row)
    return pd.DataFrame(rows)


def _row_order(frame: pd.DataFrame, experiment: Experiment) -> list[tuple[str, str]]:
    method_order = {m.name: i for i, m in enumerate(experiment.methods)}
    keys = frame[["k", "abnormal", "setting", "method"]].drop_duplicates()
    keys = keys.assign(order=keys.method.map(method_order), k_order=keys.k.where(keys.k >= 0, 10**9))  # Nall last
    keys = keys.sort_values(["k_order", "abnormal", "order"])
    return list(zip(keys.setting, keys.method))


def _cells_for(frame: pd.DataFrame, setting: str, method: str, target: str) -> pd.DataFrame:
    return frame[(frame.setting == setting) & (frame.method == method) & (frame.target == target)]


def summarise(experiment: Experiment, frame: pd.DataFrame, targets: list[str], with_mean: bool = False) -> tuple[pd.DataFrame, list[str]]:
    """The numeric table (one row per setting x method) and its footnotes."""
    notes: dict[str, str] = {}
    out = []
    for setting, method in _row_order(frame, experiment):
        label = frame[frame.method == method].label.iloc[0]
        part = frame[(frame.setting == setting) & (frame.method == method)]
        row = {"setting": setting, "method": label, "k": int(part.k.iloc[0]),
               "random_weights": bool(part.random_weights.any()),
               "target_selected": bool(part.target_selected.any()), "rehearsal": bool(part.rehearsal.any()),
               "limit": next((int(v) for v in part.limit if pd.notna(v) and v), None)}
        for target in targets:
            cells = _cells_for(frame, setting, method, target)
            done = cells[cells.status == DONE]
            for metric, _ in TABLE_METRICS:
                values = done[metric].dropna().to_numpy() if metric in done else np.array([])
                row[f"{target}:{metric}:mean"] = 100 * values.mean() if values.size else np.nan
                row[f"{target}:{metric}:std"] = 100 * values.std(ddof=0) if values.size > 1 else np.nan  # one seed: no spread
                bounds = pooled_interval(done, metric) if len(done) == len(cells) and len(done) else None
                row[f"{target}:{metric}:ci_low"], row[f"{target}:{metric}:ci_high"] = \
                    (100 * bounds[0], 100 * bounds[1]) if bounds else (np.nan, np.nan)
            row[f"{target}:seeds"] = len(done)
            not_applicable = bool(len(cells)) and bool((cells.status == NOT_APPLICABLE).all())
            row[f"{target}:not_applicable"] = cells.reason.iloc[0] if not_applicable else ""  # the CSV keeps why
            bad = cells[cells.status != DONE]
            if len(bad):
                reason = f"{bad.status.iloc[0]}: {bad.reason.iloc[0]}"
                notes.setdefault(reason, chr(ord("a") + len(notes)))
                row[f"{target}:note"] = notes[reason]
            else:
                row[f"{target}:note"] = ""
        if with_mean:
            values = [row[f"{t}:{m}:mean"] for t in targets for m, _ in TABLE_METRICS]
            row["mean"] = np.nan if any(np.isnan(values)) else float(np.mean(values))
        out.append(row)
    footnotes = [f"({mark}) {reason}" for reason, mark in notes.items()]
    table = pd.DataFrame(out)
    if len(table):
        table = mark_not_worse(table, frame, targets, [m for m, _ in TABLE_METRICS], dict(zip(frame.label, frame.method)))
        if any(table[f"{t}:{m}:not_worse"].eq(True).sum() > 1 for t in targets for m, _ in TABLE_METRICS):
            footnotes.append(f"(≈) not significantly worse than the best of its shot group: the {LEVEL_TEXT} paired-bootstrap"
                             " interval of the difference (test images resampled within category and label, pooled over"
                             " seeds) reaches 0; columns ci_low / ci_high in the CSV are each entry's interval")
    if len(table) and table.random_weights.any():
        footnotes.append("(†) random backbone weights: not a measurement of the method")
    if len(table) and table.target_selected.any():
        footnotes.append("(‡) checkpoint chosen on the target data set (the official NAGL choice; it leaks the target)")
    if len(table) and table.rehearsal.any():
        from benchmark.run.rehearsal import REHEARSAL_NOTE

        footnotes.append("(◊) " + REHEARSAL_NOTE.format(limit=int(table.limit.dropna().max())))
    elif len(table) and table.limit.notna().any():
        footnotes.append(f"(◊) at most {int(table.limit.dropna().max())} queries per category: not the full test sets")
    return table, footnotes


def _ranks(table: pd.DataFrame, column: str) -> dict[int, int]:
    """Rank 1 / 2 of each row within its shot group (k), for bold / underline."""
    ranks = {}
    for _, group in table.groupby("k"):
        values = group[column].dropna().sort_values(ascending=False).round(1)
        distinct = values.unique()
        for index, value in values.items():
            if len(distinct) and value == distinct[0]:
                ranks[index] = 1
            elif len(distinct) > 1 and value == distinct[1]:
                ranks[index] = 2
    return ranks


def _formatted(table: pd.DataFrame, targets: list[str], style: str) -> tuple[list[str], list[list[str]]]:
    headers = ["Setting", "Method"]
    columns = []
    for target in targets:
        for metric, short in TABLE_METRICS:
            headers.append(f"{target} {short}")
            columns.append((target, metric))
    ranks = {col: _ranks(table, f"{col[0]}:{col[1]}:mean") for col in columns}
    rows = []
    for index, record in table.iterrows():
        setting = record.setting
        if style == "latex":
            setting = parse_setting(setting).latex
        method = record.method + (" †" if record.random_weights else "") + (" ‡" if record.target_selected else "") + \
            (" ◊" if record.rehearsal or pd.notna(record.limit) else "")
        line = [setting, method]
        for target, metric in columns:
            mean, std = record[f"{target}:{metric}:mean"], record[f"{target}:{metric}:std"]
            note = record[f"{target}:note"]
            if record.get(f"{target}:not_applicable"):
                text = "n/a"
            elif np.isnan(mean):
                text = "–"
            else:
                spread = "" if np.isnan(std) else (f" ± {std:.1f}" if style == "console" else f"$\\pm${std:.1f}")
                text = f"{mean:.1f}{spread}"
                rank = ranks[(target, metric)].get(index)
                if style == "latex" and rank == 1:
                    text = f"\\textbf{{{mean:.1f}}}{spread}"
                elif style == "latex" and rank == 2:
                    text = f"\\underline{{{mean:.1f}}}{spread}"
                elif style == "console" and rank == 1:
                    text += " *"
                if rank != 1 and record.get(f"{target}:{metric}:not_worse") in (True,):
                    text += " ≈" if style == "console" else "$^{\\approx}$"
            if note:
                text += f" ({note})" if style == "console" else f"$^{{{note}}}$"
            line.append(text)
        if "mean" in table:
            line.append("–" if np.isnan(record["mean"]) else f"{record['mean']:.1f}")
        rows.append(line)
    if "mean" in table:
        headers.append("Mean")
    return headers, rows


def latex_table(table: pd.DataFrame, targets: list[str], displays: dict[str, str], caption: str, footnotes: list[str]) -> str:
    _, rows = _formatted(table, targets, "latex")
    with_mean = "mean" in table
    spec = "ll" + "cc" * len(targets) + ("c" if with_mean else "")
    lines = ["\\begin{table}[t]", "\\centering", f"\\caption{{{caption}}}", f"\\begin{{tabular}}{{{spec}}}", "\\toprule"]
    lines.append(" & ".join(["", ""] + [f"\\multicolumn{{2}}{{c}}{{{displays[t]}}}" for t in targets] + ([""] if with_mean else [])) + " \\\\")
    lines.append(" ".join(f"\\cmidrule(lr){{{3 + 2 * i}-{4 + 2 * i}}}" for i in range(len(targets))))
    lines.append(" & ".join(["Setting", "Method"] + ["Image", "Pixel"] * len(targets) + (["Mean"] if with_mean else [])) + " \\\\")
    lines.append("\\midrule")
    previous_k = None
    for (index, record), row in zip(table.iterrows(), rows):
        if previous_k is not None and record.k != previous_k:
            lines.append("\\midrule")
        previous_k = record.k
        lines.append(" & ".join(cell.replace("_", "\\_").replace("†", "$^\\dagger$").replace("‡", "$^\\ddagger$").replace("◊", "$^\\diamond$") for cell in row) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    for note in footnotes:
        note = note.replace("_", "\\_").replace("†", "$^\\dagger$").replace("‡", "$^\\ddagger$").replace("◊", "$^\\diamond$")
        lines.append(f"\\par\\footnotesize {note}")
    lines.append("\\end{table}")
    return "\n".join(lines) + "\n"


def per_category_table(experiment: Experiment, frame: pd.DataFrame, target: str) -> pd.DataFrame:
    out = []
    for setting, method in _row_order(frame, experiment):
        cells = _cells_for(frame, setting, method, target)
        done = cells[cells.status == DONE]
        if cells.empty:
            continue
        row = {"setting": setting, "method": frame[frame.method == method].label.iloc[0]}
        categories = sorted({c for per in done.per_category for c in per})
        for category in categories:
            for metric, short in TABLE_METRICS:
                values = [per[category][metric] for per in done.per_category
                          if category in per and per[category].get(metric) is not None]
                row[f"{category}:{metric}:mean"] = 100 * np.mean(values) if values else np.nan
                row[f"{category}:{metric}:std"] = 100 * np.std(values) if len(values) > 1 else np.nan
        out.append(row)
    return pd.DataFrame(out)


def write_tables(experiment: Experiment, results_root: Path, echo=print, rendered: list | None = None) -> list[Path]:
    """CSV and LaTeX per table of the experiment (and per-category CSVs); each table is also
    echoed for the console and, when `rendered` is given, appended to it as a RenderedTable."""
    results_root = Path(results_root)
    out_dir = results_root / "tables" / experiment.name  # experiments may share table names (main)
    frame = with_replicates(collect(experiment, results_root))  # bootstrap replicates derived once per cell
    written = []
    displays = {name: spec.label for name, spec in experiment.datasets.items()}
    for table_name, spec in experiment.tables.items():
        targets = [t for t in spec["targets"] if t in set(frame.target)]
        if not targets:
            continue
        if spec.get("kind", "main") != "main":  # benchmark/outputs/question_tables.py
            written += question_tables.write(experiment, frame, table_name, spec["kind"], targets, out_dir, echo, rendered)
            continue
        table, footnotes = summarise(experiment, frame, targets, spec["mean"])
        numeric = table.drop(columns=[c for c in table.columns if c.endswith(":note")])
        csv_path, tex_path = out_dir / f"{table_name}.csv", out_dir / f"{table_name}.tex"
        write_text(numeric.round(4).to_csv(index=False), csv_path)
        write_text(latex_table(table, targets, displays, caption(experiment, table_name), footnotes), tex_path)
        written += [csv_path, tex_path]
        headers, rows = _formatted(table, targets, "console")
        headers = headers[:2] + [h.replace(t, displays[t], 1) for h in headers[2:] for t in targets if h.startswith(t + " ")] + headers[2 + 2 * len(targets):]
        prefix = "REHEARSAL, not results: " if experiment.rehearsal else ""
        spread = "mean ± std over seeds" if len(experiment.seeds) > 1 else "one seed: no spread"
        RenderedTable(f"{prefix}{table_name} ({experiment.name}, AUROC %, {spread}; * best of its shot group)",
                      headers, rows, footnotes).show(echo, rendered)
    for target in sorted(set(frame.target)):
        per_category = per_category_table(experiment, frame, target)
        if per_category.empty:
            continue
        path = out_dir / f"per_category_{target}.csv"
        write_text(per_category.round(4).to_csv(index=False), path)
        written.append(path)
    return written
