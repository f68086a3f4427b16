"""The `gadbench` commands: each takes the parsed arguments and returns the exit status."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from benchmark.cli.options import DEFAULT_EXPERIMENT
from benchmark.config import CONFIG_DIR
from benchmark.errors import GadbenchError


def _experiment_path(args) -> str | None:
    """The experiment named positionally or with -e (not both, unless they agree)."""
    positional = getattr(args, "experiment_file", None)
    if positional and args.experiment not in (None, str(DEFAULT_EXPERIMENT)) and Path(positional) != Path(args.experiment):
        raise GadbenchError(f"two experiments given ({positional} and -e {args.experiment}); name one")
    return positional or args.experiment


def _experiment(args):
    from benchmark.run.experiment import load_experiment

    experiment = load_experiment(_experiment_path(args), args.data_root, args.adapter, args.method)
    if getattr(args, "limit", None) is not None:
        if args.limit < 1:
            raise GadbenchError(f"--limit {args.limit}: give at least 1 query per category")
        experiment.limit = args.limit
    return experiment


def cache_dir(args) -> Path | None:
    """--cache-dir, else $GADBENCH_CACHE_DIR, else <results>/cache/features; None with --no-feature-cache."""
    if getattr(args, "no_feature_cache", False):
        return None
    return Path(args.cache_dir or os.environ.get("GADBENCH_CACHE_DIR") or Path(args.results) / "cache" / "features")


def cmd_run(args) -> int:
    from benchmark.run.grid import run_grid, summary_line
    from benchmark.run.runner import Runner
    from benchmark.run.session import pick_device
    from benchmark.features.weights import WeightStore

    experiment = _experiment(args)
    runner = Runner(experiment, Path(args.results), pick_device(args.device),
                    WeightStore(args.weights_dir, args.allow_download), batch_size=args.batch_size,
                    show_progress=not args.no_progress, debug=args.debug, cache_dir=cache_dir(args))
    if args.backend == "dask" and not args.scheduler:
        raise GadbenchError("--backend dask needs --scheduler ADDRESS (e.g. tcp://10.0.0.5:8786); see docs/reproducing.md")
    if args.jobs < 1:
        raise GadbenchError(f"--jobs {args.jobs}: give 1 or more local processes")
    summary = run_grid(runner, jobs=args.jobs, scheduler=args.scheduler if args.backend == "dask" else None,
                         threads_per_job=args.threads_per_job)
    print(summary_line(experiment.name, summary))
    return 1 if summary["failed"] else 0


def cmd_cache(args) -> int:
    from tabulate import tabulate

    from benchmark.features.disk_cache import DiskFeatureCache

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
    from benchmark.bench.rounds import run_bench
    from benchmark.bench.config import load_bench
    from benchmark.outputs.efficiency_tables import write_efficiency_tables
    from benchmark.run.session import pick_device

    bench = load_bench(args.experiment, args.data_root)
    run_bench(bench, Path(args.results), pick_device(args.device), args.weights_dir, args.force, args.method,
              share_checkpoints=Path(args.checkpoints) if args.checkpoints else None)
    written = write_efficiency_tables(Path(args.results), bench["name"])
    print("\nwrote " + ", ".join(str(p) for p in written))
    return 0


def cmd_report(args) -> int:
    from benchmark.run.experiment import load_experiment
    from benchmark.outputs.report import write_report

    experiments = [load_experiment(path, args.data_root) for path in (args.experiment or [str(DEFAULT_EXPERIMENT)])]
    report = write_report(experiments, Path(args.results), k=args.k, images_per_category=args.images, seed=args.seed,
                          cache_dir=cache_dir(args), roc_on=args.roc_category)
    print(f"wrote {report} and its figures under {report.parent / 'figures'}")
    return 0


def cmd_estimate(args) -> int:
    from benchmark.outputs.estimate import estimate, figures_from_bench, figures_from_paper, format_estimate, load_bench_frame

    experiment = _experiment(args)
    if args.from_paper:
        figures, source = figures_from_paper()
    else:
        figures, source = figures_from_bench(load_bench_frame(Path(args.results)), args.device)
    print(format_estimate(estimate(experiment, figures), experiment, source))
    return 0


def cmd_tables(args) -> int:
    from benchmark.outputs.tables import write_tables

    written = write_tables(_experiment(args), Path(args.results))
    print("\nwrote " + ", ".join(str(p.relative_to(Path(args.results).resolve().parent)) if p.is_absolute() else str(p) for p in written))
    return 0


def cmd_refs(args) -> int:
    from benchmark.run.runner import Runner

    from benchmark.run.experiment import Cell
    from benchmark.run.planning import raise_for_shortages, shortages

    experiment = _experiment(args)
    runner = Runner(experiment, Path(args.results), show_progress=False)
    targets = sorted({t for _, t in experiment.pairs})
    every = [Cell(None, "*", t, s, seed) for t in targets for s in experiment.settings for seed in experiment.seeds]
    raise_for_shortages(shortages(runner.data, every), str(experiment.path))
    made = runner.data.ensure_manifests({(c.target, c.setting, c.seed) for c in every})
    print(f"{made} manifests present and verified under {Path(args.results) / 'references' / experiment.protocol}")
    return 0


def cmd_check(args) -> int:
    from benchmark.outputs import golden
    from benchmark.run.experiment import load_experiment

    named = _experiment_path(args)
    if named:
        experiments = [_experiment(args)]
    else:  # the gate: every experiment with a golden file whose data is here
        experiments = []
        for path in golden.gate_experiments(Path(args.golden)):
            experiment = load_experiment(path, args.data_root)
            absent = [s.root for s in experiment.datasets.values() if s.name in {t for p in experiment.pairs for t in p}
                      and s.layout != "synthetic" and not s.root.exists()]
            if absent:
                print(f"{experiment.name}: not checked, its data is absent ({absent[0]})")
                continue
            experiments.append(experiment)
    if args.update:
        for experiment in experiments:
            print(f"wrote {golden.update(experiment, Path(args.results), Path(args.golden), args.tolerance or 0.01)}")
        return 0
    failed = 0
    for experiment in experiments:
        problems = golden.check(experiment, Path(args.results), Path(args.golden), args.tolerance)
        for line in problems:
            print(line)
        failed += bool(problems)
        print(f"{experiment.name}: {'FAILED, ' + str(len(problems)) + ' cell(s) moved or missing' if problems else 'every cell within tolerance of its golden value'}")
    return 1 if failed else 0


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

    import torch

    from benchmark.features.weights import WeightStore
    from benchmark.run.experiment import load_method
    from benchmark.run.session import open_method

    store = WeightStore(args.weights_dir, allow_download=False)
    rows = []
    for path in sorted((CONFIG_DIR / "methods").glob("*.yaml")):
        method = load_method(path.stem, str(path))
        adapter = open_method(method, device=torch.device("cpu"), weights=store, workdir=Path(".")).adapter
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
        from benchmark.data.synthetic import DOMAINS, generate

        for domain in args.domain or sorted(DOMAINS):
            print(f"wrote {generate(Path(args.out) / domain, domain, seed=args.seed, size=args.size)}")
        return 0
    if not args.src:
        raise GadbenchError(f"prepare {args.what}: --src is required (the folder of the downloaded data set)")
    if args.what == "brats":
        from benchmark.data.prepare.brats import BratsRules, prepare_brats

        rules = BratsRules(args.modality, args.slice, args.min_brain_fraction, args.lesion_min_pixels, args.normal_test_fraction,
                           strict=args.strict)
        counts = prepare_brats(Path(args.src), Path(args.out), rules)
        if "warning" in counts:
            print(f"gadbench: warning: {counts.pop('warning')}", file=sys.stderr)
    else:
        from benchmark.data.prepare.visa import prepare_visa

        counts = prepare_visa(Path(args.src), Path(args.out))
    print(f"wrote {args.out}: {counts}")
    return 0


