"""The tables of the questions the paper leaves open (an experiment's `tables:` entries with `kind:`):

  abnormal_shots  AUROC against the number of abnormal references j (A0 = N^k alone), one row per
                  (target, method, k), a column per j; 'n/a' where the method cannot run it
  coverage        per cell with abnormal references: AUROC over all anomalous queries, over the
                  covered ones (an abnormal reference of their defect type) and over the uncovered
                  ones, each against all normal queries (benchmark/run/coverage.py)
  proxies         NAGL's AUROC against its proxy count M (the experiment's `sweep: {proxies: ...}`)

Every value is the mean over seeds (in %) with the 95 % bootstrap interval pooled over seeds, as
the main tables (benchmark/outputs/tables.py). The CSV is long (one row per value, with its
interval, seeds and, for an n/a value, the reason); LaTeX and the console show `mean [low, high]`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pathlib import Path

from benchmark.api.atomic import write_text
from benchmark.data.settings import parse_setting
from benchmark.outputs.rendered import RenderedTable, caption
from benchmark.outputs.significance import pooled_interval
from benchmark.run.intervals import interval
from benchmark.run.record import DONE, NOT_APPLICABLE

METRICS = (("image_auroc", "Image"), ("pixel_auroc", "Pixel"))
NAGL_DEFAULT_PROXIES = 25


def _summary(cells: pd.DataFrame, metric: str) -> dict:
    """Mean over the done seeds (%), the pooled interval, seeds; or the reason there is no value."""
    done = cells[cells.status == DONE]
    if len(cells) and (cells.status == NOT_APPLICABLE).all():
        return {"mean": np.nan, "ci_low": np.nan, "ci_high": np.nan, "seeds": 0, "status": "n/a: " + cells.reason.iloc[0]}
    values = done[metric].dropna().to_numpy() if metric in done else np.array([])
    bounds = pooled_interval(done, metric) if len(done) == len(cells) and len(done) else None
    status = "" if len(done) == len(cells) else f"{cells[cells.status != DONE].status.iloc[0]}: {cells[cells.status != DONE].reason.iloc[0]}"
    return {"mean": 100 * values.mean() if values.size else np.nan,
            "ci_low": 100 * bounds[0] if bounds else np.nan, "ci_high": 100 * bounds[1] if bounds else np.nan,
            "seeds": len(done), "status": status}


def shown(value: dict) -> str:
    if value["status"].startswith("n/a"):
        return "n/a"
    if np.isnan(value["mean"]):
        return "–"
    if np.isnan(value["ci_low"]):
        return f"{value['mean']:.1f}"
    return f"{value['mean']:.1f} [{value['ci_low']:.1f}, {value['ci_high']:.1f}]"


def _footnotes(long: pd.DataFrame) -> list[str]:
    reasons = [s for s in dict.fromkeys(long.status) if s]
    return [f"{reason}" for reason in reasons] + ["values: mean over seeds [95 % bootstrap interval pooled over seeds], AUROC %"]


def abnormal_shots(experiment, frame: pd.DataFrame, targets: list[str]):
    """Long CSV rows and the wide view: (target, method, k) x j."""
    long = []
    for (target, method, setting), cells in frame[frame.target.isin(targets)].groupby(["target", "method", "setting"], sort=False):
        parsed = parse_setting(setting)
        for metric, _ in METRICS:
            long.append({"target": target, "method": cells.label.iloc[0], "k": parsed.normal_text, "j": parsed.k_abnormal,
                         "setting": setting, "metric": metric, "order": parsed.order, **_summary(cells, metric)})
    long = pd.DataFrame(long)
    if long.empty:
        return long, [], [], []
    position = {t: i for i, t in enumerate(targets)}  # rows: targets as listed, methods as run, then k (Nall last)
    long = long.assign(first=long.target.map(position), second=long.method.map({m: i for i, m in enumerate(dict.fromkeys(long.method))}))
    long = long.sort_values(["first", "second", "order"], kind="stable").drop(columns=["first", "second", "order"])
    headers, rows = _wide(experiment, long, ["Target", "Method", "k"], ["target", "method", "k"], "j", "A{}")
    notes = _footnotes(long) + (["blank: not a setting of this experiment"] if any("" in row for row in rows) else [])
    return long, headers, rows, notes


def coverage(experiment, frame: pd.DataFrame, targets: list[str]):
    """Per (target, method, setting with A^j): all anomalous queries, covered, uncovered."""
    long, rows = [], []
    part = frame[frame.target.isin(targets) & (frame.abnormal > 0)]
    for (target, method, setting), cells in part.groupby(["target", "method", "setting"], sort=False):
        done = cells[cells.status == DONE]
        construction = any((c or {}).get("by_construction") for c in done.coverage)
        line = [experiment.datasets[target].label, cells.label.iloc[0], setting]
        for metric, short in METRICS:
            whole = _summary(cells, metric)
            long.append({"target": target, "method": cells.label.iloc[0], "setting": setting, "metric": metric,
                         "queries": "all anomalous", "anomalous": np.nan, **whole})
            line.append(shown(whole))
            for name in ("covered", "uncovered"):
                value = _part_summary(cells, done, name, metric)
                if name == "uncovered" and construction:
                    value["status"] = "none: covered by construction (official protocol)"
                long.append({"target": target, "method": cells.label.iloc[0], "setting": setting, "metric": metric,
                             "queries": name, **value})
                line.append(f"{shown(value)} ({value['anomalous']:.0f})" if value["anomalous"] else
                            ("by construction" if construction and name == "uncovered" else shown(value)))
        rows.append(line)
    long = pd.DataFrame(long)
    headers = ["Target", "Method", "Setting"] + [f"{short} {name}" for _, short in METRICS for name in ("all", "covered (n)", "uncovered (n)")]
    notes = _footnotes(long) if len(long) else []
    notes.append("covered: the query's defect type is among the cell's abnormal references' types; (n) anomalous queries"
                 " per seed, summed over categories; each part is scored against all normal queries")
    return long, headers, rows, notes


def _part_summary(cells: pd.DataFrame, done: pd.DataFrame, name: str, metric: str) -> dict:
    if (cells.status == NOT_APPLICABLE).all():
        return {**_summary(cells, metric), "anomalous": 0}
    parts = [(c or {}).get(name) or {} for c in done.coverage]
    values = [p.get(metric) for p in parts if p.get(metric) is not None]
    replicates = [np.asarray(p["bootstrap"][metric]) for p in parts if (p.get("bootstrap") or {}).get(metric) is not None]
    bounds = interval(np.mean(replicates, axis=0)) if replicates and len(replicates) == len(done) == len(cells) else None
    anomalous = np.mean([p.get("anomalous", 0) for p in parts]) if parts else 0
    return {"mean": 100 * float(np.mean(values)) if values else np.nan,
            "ci_low": 100 * bounds[0] if bounds else np.nan, "ci_high": 100 * bounds[1] if bounds else np.nan,
            "seeds": len(values), "status": "" if values or not anomalous else "no value", "anomalous": anomalous}


def proxies(experiment, frame: pd.DataFrame, targets: list[str]):
    """NAGL variants by proxy count M: (target, setting) x M."""
    nagl = frame[frame.target.isin(targets) & frame.method.isin(
        [m.name for m in experiment.methods if m.adapter == "nagl"])]
    long = []
    for (target, method, setting), cells in nagl.groupby(["target", "method", "setting"], sort=False):
        count = int((cells.config.iloc[0] or {}).get("proxies", NAGL_DEFAULT_PROXIES))
        for metric, _ in METRICS:
            long.append({"target": target, "method": cells.label.iloc[0], "proxies": count, "setting": setting,
                         "metric": metric, **_summary(cells, metric)})
    long = pd.DataFrame(long)
    if long.empty:
        return long, [], [], []
    headers, rows = _wide(experiment, long, ["Target", "Setting"], ["target", "setting"], "proxies", "M={}")
    return long, headers, rows, _footnotes(long)


def _wide(experiment, long: pd.DataFrame, names: list[str], keys: list[str], column: str, label: str):
    """The long rows as a wide view: a row per `keys` (the first is the target), a column per
    (metric, value of `column`); '' where the experiment has no such setting."""
    values = sorted(long[column].unique())
    headers = names + [f"{label.format(v)} {short}" for _, short in METRICS for v in values]
    rows = []
    for group, part in long.groupby(keys, sort=False):
        line = [experiment.datasets[group[0]].label, *group[1:]]
        for metric, _ in METRICS:
            for v in values:
                value = part[(part.metric == metric) & (part[column] == v)]
                line.append(shown(value.iloc[0].to_dict()) if len(value) else "")
        rows.append(line)
    return headers, rows


BUILDERS = {"abnormal_shots": abnormal_shots, "coverage": coverage, "proxies": proxies}


def latex(headers: list[str], rows: list[list[str]], title: str, footnotes: list[str]) -> str:
    escape = lambda text: str(text).replace("_", "\\_").replace("%", "\\%")
    lines = ["\\begin{table}[t]", "\\centering", f"\\caption{{{title}}}", "\\small",
             f"\\begin{{tabular}}{{{'l' * 3 + 'c' * (len(headers) - 3)}}}", "\\toprule",
             " & ".join(escape(h) for h in headers) + " \\\\", "\\midrule"]
    lines += [" & ".join(escape(cell) for cell in row) + " \\\\" for row in rows]
    lines += ["\\bottomrule", "\\end{tabular}"] + [f"\\par\\footnotesize {escape(note)}" for note in footnotes]
    return "\n".join(lines + ["\\end{table}"]) + "\n"


def write(experiment, frame: pd.DataFrame, name: str, kind: str, targets: list[str], out_dir: Path,
          echo, rendered: list | None) -> list[Path]:
    """The table's long CSV and LaTeX under out_dir, echoed and appended to `rendered`."""
    long, headers, rows, footnotes = BUILDERS[kind](experiment, frame, targets)
    if long.empty:
        return []
    csv_path, tex_path = out_dir / f"{name}.csv", out_dir / f"{name}.tex"
    write_text(long.round(4).to_csv(index=False), csv_path)
    seeds = ", ".join(map(str, experiment.seeds))
    spread = f"mean over seeds {seeds} [95 \\% bootstrap interval pooled over seeds]"
    write_text(latex(headers, rows, caption(experiment, name.replace("_", " "), spread), footnotes), tex_path)
    prefix = "REHEARSAL, not results: " if experiment.rehearsal else ""
    RenderedTable(f"{prefix}{name} ({experiment.name}, AUROC %, mean over seeds [95 % interval])", headers, rows,
                  footnotes).show(echo, rendered)
    return [csv_path, tex_path]
