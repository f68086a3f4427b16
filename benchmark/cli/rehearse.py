"""`gadbench rehearse`: the paper's grid planned, then rehearsed on stand-in data with the paper's
architectures on random weights (benchmark/run/rehearsal.py, docs/reproducing.md section 0)."""

from __future__ import annotations

from pathlib import Path

from benchmark.errors import GadbenchError


def cmd_rehearse(args) -> int:
    import time

    from benchmark.bench.rounds import run_bench
    from benchmark.bench.config import load_bench

    from benchmark.outputs.efficiency_tables import write_efficiency_tables
    from benchmark.run.experiment import load_experiment
    from benchmark.data.settings import parse_setting
    from benchmark.run.rehearsal import (default_experiments, prepare_standin_data, rehearsal_bench, rehearsal_experiment,
                                         standin_counts)
    from benchmark.outputs.report import write_report
    from benchmark.run.grid import run_grid, summary_line
    from benchmark.run.planning import shortages
    from benchmark.run.runner import Runner
    from benchmark.run.session import pick_device
    from benchmark.outputs.tables import write_tables
    from benchmark.features.weights import WeightStore

    from benchmark.cli.options import DEFAULT_RESULTS

    started = time.time()
    results = Path(args.results or DEFAULT_RESULTS / ("rehearsal_quick" if args.quick else "rehearsal"))
    if args.categories is None and args.quick:
        args.categories = 1
    data = results / "data"
    loaded = [load_experiment(path, data) for path in args.experiment] if args.experiment else default_experiments(data)
    prepare_standin_data(data, args.categories, standin_counts(loaded))  # sized by the whole grids, not the narrowed ones
    device, store = pick_device(args.device), WeightStore(args.weights_dir)
    settings = [parse_setting(s) for s in args.setting] if args.setting else None
    experiments, failed, runners, found = [], 0, [], []
    for full in loaded:
        experiment = rehearsal_experiment(full, args.limit, args.seed, settings, args.pair)
        if args.pair and not set(experiment.pairs) & {tuple(p.split(":", 1)) for p in args.pair}:
            print(f"{experiment.name} (rehearsal): no pair among {', '.join(args.pair)}; rehearsed on"
                  f" {':'.join(experiment.pairs[0])}")
        runner = Runner(experiment, results, device, store, show_progress=not args.no_progress, cache_dir=results / "cache")
        found += [f"{experiment.name}: {s.line()}" for s in shortages(runner.data, experiment.cells())]
        runners.append(runner)
    if found:  # every experiment is planned before any is run
        raise GadbenchError(f"rehearsal: {len(found)} shortage(s) found while planning; nothing was scored:\n  "
                            + "\n  ".join(found))
    for runner in runners:
        experiment = runner.experiment
        summary = run_grid(runner)
        failed += summary["failed"]
        print(summary_line(f"{experiment.name} (rehearsal)", summary))
        write_tables(experiment, results)
        experiments.append(experiment)
    benches = []
    if not args.no_bench:
        bench = rehearsal_bench(load_bench(args.bench, data), args.bench_method)
        run_bench(bench, results, device, args.weights_dir)
        write_efficiency_tables(results, bench["name"])
        benches.append(bench["name"])
    report = write_report(experiments, results, benches=benches, cache_dir=results / "cache")
    print(f"rehearsal finished in {time.time() - started:.0f} s: tables under {results / 'tables'}, report {report}")
    return 1 if failed else 0
