"""`gadbench` command line: run | tables | report | refs | check | list | weights | prepare | cache |
bench | estimate | rehearse | compare. The commands live in benchmark/cli/commands.py."""

from __future__ import annotations

import argparse
import sys
import warnings

from benchmark.cli.commands import (cmd_bench, cmd_cache, cmd_check, cmd_estimate, cmd_list, cmd_prepare, cmd_refs,
                                    cmd_report, cmd_run, cmd_tables, cmd_weights)
from benchmark.cli.compare import cmd_compare
from benchmark.cli.rehearse import cmd_rehearse
from benchmark.cli.options import DEFAULT_RESULTS, _common
from benchmark.config import CONFIG_DIR
from benchmark.errors import GadbenchError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gadbench", description="Generalist anomaly detection benchmark harness")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the cells of an experiment (finished cells are skipped)")
    _common(run)
    run.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1 ...")
    run.add_argument("--weights-dir", help="local weights folder (default: $GADBENCH_WEIGHTS, else ./weights)")
    run.add_argument("--allow-download", action="store_true", help="let missing weights be downloaded (needs internet)")
    run.add_argument("--batch-size", type=int, default=8)
    run.add_argument("--no-progress", action="store_true")
    run.add_argument("--limit", type=int, help="at most N queries per category (a quick smoke run; rows are marked, the gate refuses them)")
    run.add_argument("--cache-dir", help="feature cache folder (default: $GADBENCH_CACHE_DIR, else <results>/cache/features)")
    run.add_argument("--no-feature-cache", action="store_true", help="keep backbone features in memory only")
    run.add_argument("--jobs", "-j", type=int, default=1, help="local worker processes (joblib); cells sharing a trained model stay together")
    run.add_argument("--backend", choices=["local", "dask"], default="local", help="dask: send cell groups to --scheduler")
    run.add_argument("--scheduler", help="Dask scheduler address, e.g. tcp://10.0.0.5:8786 (with --backend dask)")
    run.add_argument("--threads-per-job", type=int, help="torch threads in each worker (default: this process's; "
                     "CPU results are bit-identical only for equal thread counts)")
    run.set_defaults(func=cmd_run)

    cache = sub.add_parser("cache", help="the on-disk feature cache: what it holds, or empty it")
    cache.add_argument("action", choices=["info", "clear"])
    cache.add_argument("--results", default=str(DEFAULT_RESULTS))
    cache.add_argument("--cache-dir", help="default: $GADBENCH_CACHE_DIR, else <results>/cache/features")
    cache.set_defaults(func=cmd_cache)

    bench = sub.add_parser("bench", help="the efficiency table: parameters, training time, throughput, peak memory")
    bench.add_argument("--experiment", "-e", default=str(CONFIG_DIR / "experiments" / "efficiency.yaml"))
    bench.add_argument("--data-root", help="folder holding the data sets (default: $DATA_ROOT, else the file's data_root)")
    bench.add_argument("--results", default=str(DEFAULT_RESULTS))
    bench.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1 ...")
    bench.add_argument("--weights-dir", help="local weights folder (default: $GADBENCH_WEIGHTS, else ./weights)")
    bench.add_argument("--method", action="append", help="measure only this method (repeatable)")
    bench.add_argument("--force", action="store_true", help="measure again what was measured on this device")
    bench.add_argument("--checkpoints", help="copy the checkpoints the bench trains (methods without config overrides) into "
                                             "this folder, where `gadbench run` finds them (e.g. results/checkpoints)")
    bench.set_defaults(func=cmd_bench)

    report = sub.add_parser("report", help="results/report.md: tables, qualitative grid, ROC curves, per-category bars")
    report.add_argument("--experiment", "-e", action="append", help="experiment YAML (repeatable; default: mini)")
    report.add_argument("--data-root", help="folder holding the data sets (default: $DATA_ROOT, else the experiment's data_root)")
    report.add_argument("--results", default=str(DEFAULT_RESULTS))
    report.add_argument("--k", type=int, help="shot count the figures show (default: the smallest that ran)")
    report.add_argument("--images", type=int, default=1, help="qualitative grid: anomalous images per target category")
    report.add_argument("--seed", type=int, default=0, help="seed whose references the ROC curves and maps use")
    report.add_argument("--roc-category", help="ROC figure's category, as CATEGORY or TARGET/CATEGORY (default: the first)")
    report.add_argument("--cache-dir", help="feature cache folder (default: $GADBENCH_CACHE_DIR, else <results>/cache/features)")
    report.set_defaults(func=cmd_report)

    estimate = sub.add_parser("estimate", help="how long an experiment takes, from the efficiency table of a device")
    _common(estimate)
    estimate.add_argument("--device", default="cpu", help="device kind or name of the `gadbench bench` rows to use (cpu, cuda, ...)")
    estimate.add_argument("--from-paper", action="store_true", help="use the paper's GPU figures (NAGL, InCTRL, ResAD) instead")
    estimate.set_defaults(func=cmd_estimate)

    tables = sub.add_parser("tables", help="write results/tables from the cell files")
    _common(tables)
    tables.set_defaults(func=cmd_tables)

    compare = sub.add_parser("compare", help="method A - method B on the same queries: paired intervals and tests")
    compare.add_argument("a", metavar="A", help="a method of the experiment")
    compare.add_argument("b", metavar="B", help="the method it is compared with")
    compare.add_argument("--experiment", "-e", default=str(CONFIG_DIR / "experiments" / "mini.yaml"))
    compare.add_argument("--data-root", help="folder holding the data sets (default: $DATA_ROOT, else the experiment's data_root)")
    compare.add_argument("--results", default=str(DEFAULT_RESULTS))
    compare.set_defaults(func=cmd_compare)

    rehearse = sub.add_parser("rehearse", help="rehearse the paper's grid (main, ablation, efficiency) on stand-in data "
                              "with the paper's architectures on random weights, before renting a GPU")
    rehearse.add_argument("--experiment", "-e", action="append", help="experiment YAML (repeatable; default: every file of "
                          "configs/experiments whose data the stand-ins provide: main, ablation)")
    rehearse.add_argument("--bench", default=str(CONFIG_DIR / "experiments" / "efficiency_paper.yaml"), help="efficiency bench YAML")
    rehearse.add_argument("--results", help="its own results folder (default: results/rehearsal, with --quick "
                          "results/rehearsal_quick: the tiers' stand-ins differ)")
    rehearse.add_argument("--limit", type=int, default=2, help="queries per category (2: one normal, one anomalous, the "
                          "fewest that take every metric's code path)")
    rehearse.add_argument("--quick", action="store_true", help="the quick tier: the first category of MVTec AD and VisA only "
                          "(unless --categories says otherwise); every method, setting, seed and pair kept")
    rehearse.add_argument("--categories", type=int, help="only the first N categories of MVTec AD and VisA (a reduced rehearsal)")
    rehearse.add_argument("--seed", type=int, action="append", help="only these reference seeds (repeatable)")
    rehearse.add_argument("--setting", action="append", help="only these settings, e.g. N1, N1+A1 (repeatable)")
    rehearse.add_argument("--pair", action="append", help="only this source:target pair, e.g. mvtec:brats (repeatable); an "
                          "experiment with none of them is rehearsed on one of its own")
    rehearse.add_argument("--bench-method", action="append", help="bench only this method (repeatable)")
    rehearse.add_argument("--no-bench", action="store_true", help="leave out the efficiency bench")
    rehearse.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1 ...")
    rehearse.add_argument("--weights-dir", help="local weights folder (only its presence is irrelevant: weights are random)")
    rehearse.add_argument("--no-progress", action="store_true")
    rehearse.set_defaults(func=cmd_rehearse)

    refs = sub.add_parser("refs", help="reference manifests")
    refs.add_argument("action", choices=["make", "verify"], help="make: create missing manifests and verify all; verify: the same, a no-op when all exist")
    _common(refs)
    refs.set_defaults(func=cmd_refs)

    gate = sub.add_parser("check", help="compare the latest results with results/golden (the AUROC regression gate); "
                          "without an experiment: every experiment with a golden file")
    _common(gate, default=None)
    gate.add_argument("--golden", default=str(DEFAULT_RESULTS / "golden"), help="folder of golden files")
    gate.add_argument("--tolerance", type=float, help="AUROC difference allowed (default: the golden file's)")
    gate.add_argument("--update", action="store_true", help="rewrite the golden file from the latest results, on purpose")
    gate.set_defaults(func=cmd_check)

    listing = sub.add_parser("list", help="adapters, methods, datasets and experiments")
    listing.set_defaults(func=cmd_list)

    weights = sub.add_parser("weights", help="which weight files each backbone expects, and whether they are here")
    weights.add_argument("--weights-dir")
    weights.set_defaults(func=cmd_weights)

    prepare = sub.add_parser("prepare", help="convert a data set to the MVTec layout (rules: docs/datasets.md)")
    prepare.add_argument("what", choices=["brats", "visa", "synthetic"])
    prepare.add_argument("--src", help="the downloaded data set (brats: subject folders; visa: the folder with split_csv/)")
    prepare.add_argument("--out", required=True)
    prepare.add_argument("--modality", default="flair", help="brats: flair, t1, t1ce or t2 (or t2f, t1n, t1c, t2w)")
    prepare.add_argument("--strict", action="store_true", help="brats: an empty train/good, test/good or test/lesion is an error")
    prepare.add_argument("--slice", default="83", help="brats: an axial slice index, or 'all'")
    prepare.add_argument("--min-brain-fraction", type=float, default=0.1, help="brats --slice all: keep slices with this much brain")
    prepare.add_argument("--lesion-min-pixels", type=int, default=1, help="brats: tumour pixels that make a slice a lesion slice")
    prepare.add_argument("--normal-test-fraction", type=float, default=0.5, help="brats: share of subjects whose normal slices are test images")
    prepare.add_argument("--domain", action="append", help="synthetic: objects and/or textures")
    prepare.add_argument("--seed", type=int, default=0)
    prepare.add_argument("--size", type=int, default=256)
    prepare.set_defaults(func=cmd_prepare)
    return parser


def main(argv: list[str] | None = None) -> int:
    # anomalib and timm warn about their own internal deprecations on import: not the user's business
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(timm|anomalib)(\.|$)")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except GadbenchError as error:
        if args.debug:
            raise
        print(f"gadbench: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gadbench: interrupted; finished cells are kept, rerun to resume", file=sys.stderr)
        return 130
