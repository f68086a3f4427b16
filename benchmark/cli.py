"""`gadbench` command line: run | tables | report | refs | check | list | weights | prepare | cache | bench | estimate."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

from benchmark.config import CONFIG_DIR, PROJECT_ROOT
from benchmark.errors import GadbenchError

DEFAULT_EXPERIMENT = CONFIG_DIR / "experiments" / "mini.yaml"
DEFAULT_RESULTS = PROJECT_ROOT / "results"


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--experiment", "-e", default=str(DEFAULT_EXPERIMENT), help="experiment YAML (default: mini)")
    parser.add_argument("--data-root", help="folder holding the data sets (default: $DATA_ROOT, else the experiment's data_root)")
    parser.add_argument("--results", default=str(DEFAULT_RESULTS), help="results folder (runs, references, tables)")
    parser.add_argument("--adapter", help="run this adapter instead of the experiment's methods: a registered name, module:Class or file.py:Class")
    parser.add_argument("--method", action="append", help="run only this method of the experiment (repeatable)")


def _experiment(args):
    from benchmark.experiment import load_experiment

    return load_experiment(args.experiment, args.data_root, args.adapter, args.method)


def cache_dir(args) -> Path | None:
    """--cache-dir, else $GADBENCH_CACHE_DIR, else <results>/cache/features; None with --no-feature-cache."""
    if getattr(args, "no_feature_cache", False):
        return None
    return Path(args.cache_dir or os.environ.get("GADBENCH_CACHE_DIR") or Path(args.results) / "cache" / "features")


def cmd_run(args) -> int:
    from benchmark.runner import Runner, pick_device
    from benchmark.weights import WeightStore

    experiment = _experiment(args)
    runner = Runner(experiment, Path(args.results), pick_device(args.device),
                    WeightStore(args.weights_dir, args.allow_download), batch_size=args.batch_size,
                    show_progress=not args.no_progress, debug=args.debug, cache_dir=cache_dir(args))
    if args.backend == "dask" and not args.scheduler:
        raise GadbenchError("--backend dask needs --scheduler ADDRESS (e.g. tcp://10.0.0.5:8786); see docs/reproducing.md")
    if args.jobs < 1:
        raise GadbenchError(f"--jobs {args.jobs}: give 1 or more local processes")
    summary = runner.run(jobs=args.jobs, scheduler=args.scheduler if args.backend == "dask" else None,
                         threads_per_job=args.threads_per_job)
    print(f"{experiment.name}: {summary['total']} cells: {summary['already_done']} already done, "
          f"{summary['done']} run, {summary['skipped']} skipped, {summary['failed']} failed")
    return 1 if summary["failed"] else 0


def cmd_cache(args) -> int:
    from tabulate import tabulate

    from benchmark.feature_cache import DiskFeatureCache

    cache = DiskFeatureCache(cache_dir(args))
    if args.action == "clear":
        print(f"removed {cache.clear()} cached feature files from {cache.root}")
        return 0
    rows = cache.info()
    if not rows:
        print(f"{cache.root}: empty")
        return 0
    print(f"{cache.root}")
    print(tabulate([[r["backbone"], r["entries"], f"{r['bytes'] / 2**20:.1f}", r["temporary_files"]] for r in rows],
                   headers=["backbone", "entries", "MiB", "temporary files"]))
    print(f"total: {sum(r['entries'] for r in rows)} entries, {sum(r['bytes'] for r in rows) / 2**20:.1f} MiB")
    return 0


def cmd_bench(args) -> int:
    from benchmark.efficiency import load_bench, run_bench, write_efficiency_tables
    from benchmark.runner import pick_device

    bench = load_bench(args.experiment, args.data_root)
    run_bench(bench, Path(args.results), pick_device(args.device), args.weights_dir, args.force, args.method)
    written = write_efficiency_tables(Path(args.results))
    print("\nwrote " + ", ".join(str(p) for p in written))
    return 0


def cmd_report(args) -> int:
    from benchmark.experiment import load_experiment
    from benchmark.report import write_report

    experiments = [load_experiment(path, args.data_root) for path in (args.experiment or [str(DEFAULT_EXPERIMENT)])]
    report = write_report(experiments, Path(args.results), k=args.k, images_per_category=args.images, seed=args.seed,
                          cache_dir=cache_dir(args), roc_on=args.roc_category)
    print(f"wrote {report} and its figures under {report.parent / 'figures'}")
    return 0


def cmd_estimate(args) -> int:
    from benchmark.estimate import estimate, figures_from_bench, figures_from_paper, format_estimate, load_bench_frame

    experiment = _experiment(args)
    if args.from_paper:
        figures, source = figures_from_paper()
    else:
        figures, source = figures_from_bench(load_bench_frame(Path(args.results)), args.device)
    print(format_estimate(estimate(experiment, figures), experiment, source))
    return 0


def cmd_tables(args) -> int:
    from benchmark.tables import write_tables

    written = write_tables(_experiment(args), Path(args.results))
    print("\nwrote " + ", ".join(str(p.relative_to(Path(args.results).resolve().parent)) if p.is_absolute() else str(p) for p in written))
    return 0


def cmd_refs(args) -> int:
    from benchmark.runner import Runner

    experiment = _experiment(args)
    runner = Runner(experiment, Path(args.results), show_progress=False)
    targets = sorted({t for _, t in experiment.pairs})
    made = runner.ensure_manifests({(t, s, seed) for t in targets for s in experiment.settings for seed in experiment.seeds})
    print(f"{made} manifests present and verified under {Path(args.results) / 'references' / experiment.protocol}")
    return 0


def cmd_check(args) -> int:
    from benchmark import golden

    experiment = _experiment(args)
    if args.update:
        path = golden.update(experiment, Path(args.results), Path(args.golden), args.tolerance or 0.01)
        print(f"wrote {path}")
        return 0
    problems = golden.check(experiment, Path(args.results), Path(args.golden), args.tolerance)
    for line in problems:
        print(line)
    print(f"{experiment.name}: {'FAILED, ' + str(len(problems)) + ' cell(s) moved or missing' if problems else 'every cell within tolerance of its golden value'}")
    return 1 if problems else 0


def cmd_list(args) -> int:
    from tabulate import tabulate

    from benchmark import registry
    from benchmark.config import load_yaml

    rows = []
    for name in registry.known():
        cls = registry.resolve(name)
        rows.append([name, registry.ADAPTERS[name], ", ".join(cls.supports), "yes" if cls.trains_on_source else "no"])
    print("adapters\n" + tabulate(rows, headers=["name", "class", "settings", "trains on source"]))
    methods = []
    for path in sorted((CONFIG_DIR / "methods").glob("*.yaml")):
        data = load_yaml(path)
        methods.append([path.stem, data.get("adapter"), data.get("label", "")])
    print("\nmethods (configs/methods)\n" + tabulate(methods, headers=["name", "adapter", "label"]))
    datasets = [[n, d["layout"], d["root"], d.get("display", "")] for n, d in load_yaml(CONFIG_DIR / "datasets.yaml").items()]
    print("\ndatasets (configs/datasets.yaml)\n" + tabulate(datasets, headers=["name", "layout", "root", "display"]))
    experiments = [[p.stem, load_yaml(p).get("description", "")] for p in sorted((CONFIG_DIR / "experiments").glob("*.yaml"))]
    print("\nexperiments (configs/experiments)\n" + tabulate(experiments, headers=["name", "description"]))
    return 0


def cmd_weights(args) -> int:
    from tabulate import tabulate

    from benchmark import registry
    from benchmark.adapter import RunContext
    from benchmark.experiment import load_method
    from benchmark.weights import WeightStore

    store = WeightStore(args.weights_dir, allow_download=False)
    context = RunContext(device=None, weights=store, features=None, workdir=Path("."))
    rows = []
    for path in sorted((CONFIG_DIR / "methods").glob("*.yaml")):
        method = load_method(path.stem, str(path))
        adapter = registry.resolve(method.adapter)(method.config, context)
        for weight in adapter.required_weights() or [None]:
            if weight is None:
                rows.append([method.name, "(none: random or no weights)", "", "", "", ""])
                continue
            status = store.status(weight)
            state = "ok" if status["valid"] else ("wrong sha256" if status["present"] else "missing")
            rows.append([method.name, status["file"], state, status["expected_sha256"][:16],
                         status["path"] if status["present"] else "", status["get"]])
    print(f"weights folder: {store.dir} (set with --weights-dir or GADBENCH_WEIGHTS)")
    print(tabulate(rows, headers=["method", "file", "status", "sha256 (expected)", "found at", "where to get it"]))
    return 0


def cmd_prepare(args) -> int:
    if args.what == "synthetic":
        from benchmark.datasets.synthetic import DOMAINS, generate

        for domain in args.domain or sorted(DOMAINS):
            print(f"wrote {generate(Path(args.out) / domain, domain, seed=args.seed, size=args.size)}")
        return 0
    if not args.src:
        raise GadbenchError(f"prepare {args.what}: --src is required (the folder of the downloaded data set)")
    if args.what == "brats":
        from benchmark.prepare.brats import BratsRules, prepare_brats

        rules = BratsRules(args.modality, args.slice, args.min_brain_fraction, args.lesion_min_pixels, args.normal_test_fraction)
        counts = prepare_brats(Path(args.src), Path(args.out), rules)
    else:
        from benchmark.prepare.visa import prepare_visa

        counts = prepare_visa(Path(args.src), Path(args.out))
    print(f"wrote {args.out}: {counts}")
    return 0


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

    refs = sub.add_parser("refs", help="reference manifests")
    refs.add_argument("action", choices=["make", "verify"], help="make: create missing manifests and verify all; verify: the same, a no-op when all exist")
    _common(refs)
    refs.set_defaults(func=cmd_refs)

    gate = sub.add_parser("check", help="compare the latest results with results/golden (the AUROC regression gate)")
    _common(gate)
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
    prepare.add_argument("--modality", default="flair", help="brats: flair, t1, t1ce or t2")
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
