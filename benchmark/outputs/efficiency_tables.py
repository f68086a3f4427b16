"""The efficiency table from the rows `gadbench bench` measured (benchmark/bench/):
<results>/tables/<bench>/efficiency.csv with every row's conditions, efficiency.tex with one table
per device, so that CPU and GPU figures never share a column."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from benchmark.api.atomic import write_text
from benchmark.bench.bursts import NOISY_SPREAD
from benchmark.errors import GadbenchError
from benchmark.outputs.rendered import RenderedTable
from benchmark.run.results import read_cell

STEAL_NOTE = 0.02  # a table notes CPU steal (time the hypervisor gave to other machines) above this share
COLUMNS = [("label", "Method"), ("parameters_total_m", "Params (M)"), ("parameters_trainable_m", "Trainable (M)"),
           ("training_seconds", "Training (s)"), ("throughput_batch1", "img/s @1"), ("throughput_batch1_spread", "spread @1 (%)"),
           ("ratio_batch1", "x ref @1"), ("throughput_best", "img/s best"),
           ("best_batch", "best batch"), ("peak_memory_mib", "Peak mem (MiB)"), ("image_size", "Size"),
           ("evaluation_ms_per_mpx", "Eval (ms/Mpx)")]


def bench_names(results_root: Path) -> list[str]:
    """The benches measured under <results>/efficiency/ (one folder each)."""
    folder = Path(results_root) / "efficiency"
    return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def efficiency_frame(results_root: Path, name: str | None = None) -> pd.DataFrame:
    """The rows of one bench (or of every bench: `gadbench estimate`)."""
    rows = [read_cell(p) for p in sorted((Path(results_root) / "efficiency").glob(f"{name or '*'}/*/*.json"))]
    frame = pd.DataFrame([r for r in rows if r])
    if frame.empty:
        return frame
    frame = frame.sort_values(["device", "order"] if "order" in frame else ["device"], kind="stable")
    keep = ["method", "label", "status", "device", "device_name", "precision", "threads", "image_size",
            "parameters_total_m", "parameters_trainable_m", "training_seconds", "training_epochs", "source",
            "throughput_batch1", "throughput_batch1_spread", "ratio_batch1", "ratio_batch1_spread", "reference", "rounds",
            "best_batch", "throughput_best", "throughput_best_spread", "noisy", "cpu_steal_share", "peak_memory_mib", "memory_kind",
            "random_weights", "overrides", "rehearsal", "reason", "evaluation_ms_per_mpx"]
    return frame.reindex(columns=keep)


def _cell(value, column: str) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "–"
    if column in ("best_batch", "image_size"):
        return str(int(value))
    if column in ("parameters_total_m", "parameters_trainable_m"):
        return f"{value:.2f}"
    if column in ("training_seconds", "peak_memory_mib"):
        return f"{value:.0f}"
    if column == "evaluation_ms_per_mpx":
        return f"{value:.1f}"
    if column.endswith("_spread"):
        return f"{100 * value:.0f}"
    if column == "ratio_batch1":
        return f"{value:.2f}"
    if column.startswith("throughput"):
        return f"{value:.2f}" if value < 100 else f"{value:.0f}"
    return str(value)


def _label_and_notes(record: dict) -> tuple[str, list[str]]:
    """A row's label with its marks, and the notes that explain them."""
    label, notes = record["label"] + (" (random w.)" if record.get("random_weights") is True else ""), []
    if record.get("rehearsal") is True:
        label += " ◊"
        notes.append("◊ rehearsal: random weights, the shortest schedule and timing loop; measures nothing")
    if isinstance(record.get("overrides"), dict) and record["overrides"]:
        label += " §"
        notes.append(f"§ {record['label']}: measured with the config overrides {json.dumps(record['overrides'])}")
    if record.get("noisy") is True:
        label += " (!)"
        notes.append(f"(!) throughput spread over rounds above {round(100 * NOISY_SPREAD)} %: the machine was busy;"
                     " measure again with `gadbench bench --force`")
    return label, notes


def write_efficiency_tables(results_root: Path, name: str, echo=print, rendered: list | None = None) -> list[Path]:
    """<results>/tables/<bench>/efficiency.csv (every row with its conditions) and efficiency.tex
    (one table per device)."""
    from tabulate import tabulate

    frame = efficiency_frame(results_root, name)
    if frame.empty:
        raise GadbenchError(f"{Path(results_root) / 'efficiency' / name}: nothing measured yet; run `gadbench bench` first")
    tables = Path(results_root) / "tables" / name
    csv_path, tex_path = tables / "efficiency.csv", tables / "efficiency.tex"
    write_text(frame.to_csv(index=False), csv_path)
    blocks = []
    for (device, name, precision, threads, memory_kind), group in frame.groupby(
            ["device", "device_name", "precision", "threads", "memory_kind"], dropna=False, sort=True):
        lines, notes = [], []
        for record in group.to_dict("records"):
            label, record_notes = _label_and_notes(record)
            notes += record_notes
            if record["status"] != "done":
                lines.append([label] + ["–"] * (len(COLUMNS) - 1))
                continue
            lines.append([label] + [_cell(record[c], c) for c, _ in COLUMNS[1:]])
        steal = pd.to_numeric(group["cpu_steal_share"], errors="coerce").max()
        if steal > STEAL_NOTE:
            notes.append(f"CPU steal reached {100 * steal:.0f} % during the timing: the host gave that share of this virtual"
                         " machine's CPU time to others; absolute figures, and ratios between methods that suffer"
                         " differently from it, move with such load")
        rounds = group["rounds"].dropna()
        reference = group["reference"].dropna()
        conditions = (f"{name}, {precision}, {int(threads)} torch threads; memory: {memory_kind}; throughput = batch / median"
                      f" call after warm-up, image decoding and metrics excluded, median over {int(rounds.max()) if len(rounds) else 1} interleaved"
                      f" rounds (spread: (max - min) / median)"
                      + (f"; x ref: throughput / {reference.iloc[0]}'s at batch 1, taken burst by burst in alternating"
                         " bursts seconds apart, median" if len(reference) else ""))
        notes = list(dict.fromkeys(notes))
        shown = RenderedTable(f"Efficiency on {conditions}", [h for _, h in COLUMNS], lines, notes)
        echo("\n" + shown.title + "\n" + tabulate(lines, headers=shown.headers, tablefmt="github"))
        for note in notes:
            echo(note)
        if rendered is not None:
            rendered.append(shown)
        header = " & ".join(h for _, h in COLUMNS)
        body = "\n".join(" & ".join(cell.replace("_", r"\_").replace("§", r"\S{}").replace("◊", r"$^\diamond$") for cell in line) + r" \\"
                         for line in lines)
        blocks.append("\n".join([
            r"\begin{table}[t]", r"\centering", r"\small",
            rf"\caption{{Efficiency on {conditions.replace('_', ' ')}. Training: the configured schedule on "
            rf"{group.source.iloc[0].replace('_', ' ')}; random w.: random weights (timing only).}}",
            r"\begin{tabular}{l" + "r" * (len(COLUMNS) - 1) + "}", r"\toprule", header + r" \\", r"\midrule", body,
            r"\bottomrule", r"\end{tabular}",
            *[r"\par\footnotesize " + note.replace("_", r"\_").replace("{", r"\{").replace("}", r"\}").replace("%", r"\%").replace("§", r"\S{}")
              .replace("◊", r"$^\diamond$") for note in notes],
            r"\end{table}"]))
    write_text("\n\n".join(blocks) + "\n", tex_path)
    return [csv_path, tex_path]
