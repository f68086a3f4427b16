"""`gadbench compare -e EXP A B`: is A's gain over B more than the noise of references and test images?"""

from __future__ import annotations

from pathlib import Path

from tabulate import tabulate

from benchmark.errors import GadbenchError, closest


def cmd_compare(args) -> int:
    from benchmark.outputs.significance import LEVEL_TEXT, compare_frame
    from benchmark.outputs.tables import TABLE_METRICS, collect
    from benchmark.run.experiment import load_experiment
    from benchmark.run.intervals import DESCRIPTION

    experiment = load_experiment(args.experiment, args.data_root)
    names = [m.name for m in experiment.methods]
    for name in (args.a, args.b):
        if name not in names:
            raise GadbenchError(f"{args.experiment}: no method {name!r}{closest(name, names)}")
    table = compare_frame(collect(experiment, Path(args.results)), args.a, args.b, [m for m, _ in TABLE_METRICS])
    if table.empty:
        print(f"{args.a} vs {args.b}: no finished cells of both on the same queries under {args.results}; run them first")
        return 1
    rows = [[r.target, r.setting, r.metric.replace("_auroc", ""), f"{r.difference:+.2f}", f"[{r.ci_low:+.2f}, {r.ci_high:+.2f}]",
             f"{r.p_bootstrap:.3f}", "–" if r.p_wilcoxon != r.p_wilcoxon else f"{r.p_wilcoxon:.3f}", r.seeds, r.categories]
            for r in table.itertuples()]
    print(f"{args.a} - {args.b} ({experiment.name}), AUROC points, mean over seeds; {LEVEL_TEXT} interval: {DESCRIPTION};"
          " p (Wilcoxon): signed-rank test over the categories' seed-mean differences")
    print(tabulate(rows, headers=["target", "setting", "AUROC", "A - B", f"{LEVEL_TEXT} interval", "p (bootstrap)",
                                  "p (Wilcoxon)", "seeds", "categories"], tablefmt="github", disable_numparse=True))
    return 0
