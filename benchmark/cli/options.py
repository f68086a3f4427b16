"""Options shared by several commands, and their defaults."""

from __future__ import annotations

import argparse

from benchmark.config import CONFIG_DIR, PROJECT_ROOT

DEFAULT_EXPERIMENT = CONFIG_DIR / "experiments" / "mini.yaml"
DEFAULT_RESULTS = PROJECT_ROOT / "results"


def _common(parser: argparse.ArgumentParser, default=str(DEFAULT_EXPERIMENT)) -> None:
    parser.add_argument("experiment_file", nargs="?", metavar="EXPERIMENT.yaml", help="the experiment (or use -e)")
    parser.add_argument("--experiment", "-e", default=default, help="experiment YAML (default: mini)")
    parser.add_argument("--data-root", help="folder holding the data sets (default: $DATA_ROOT, else the experiment's data_root)")
    parser.add_argument("--results", default=str(DEFAULT_RESULTS), help="results folder (runs, references, tables)")
    parser.add_argument("--adapter", help="run this adapter instead of the experiment's methods: a registered name, module:Class or file.py:Class")
    parser.add_argument("--method", action="append", help="run only this method of the experiment (repeatable)")


