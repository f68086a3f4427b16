"""Per-file mutation score from `mutmut results --all true` output (tools/mutation.sh writes it to
results/mutation/all.txt): killed / all mutants of the file, with survivors, mutants no test
reaches ('no tests'), timeouts and any left unchecked.   python tools/mutation_summary.py ALL.txt"""

from __future__ import annotations

import collections
import re
import sys

COLUMNS = ("killed", "survived", "no tests", "timeout", "not checked")


def summarise(lines) -> dict[str, collections.Counter]:
    per_file: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for line in lines:
        name, _, status = line.strip().rpartition(": ")
        if name:
            module = re.split(r"\.x_|\.xǁ", name)[0]  # mutmut names a mutant module.x_function__mutmut_N
            per_file[module.replace(".", "/") + ".py"][status] += 1
    return per_file


def table(per_file: dict[str, collections.Counter]) -> str:
    rows = ["| file | mutants | " + " | ".join(COLUMNS) + " | killed % |", "|---|" + "---|" * (len(COLUMNS) + 2)]
    total = collections.Counter()
    for path in sorted(per_file):
        counts = per_file[path]
        total.update(counts)
        rows.append(_row(path, counts))
    rows.append(_row("**all**", total))
    return "\n".join(rows)


def _row(label: str, counts: collections.Counter) -> str:
    mutants = sum(counts.values())
    return (f"| {label} | {mutants} | " + " | ".join(str(counts[c]) for c in COLUMNS)
            + f" | {100 * counts['killed'] / mutants:.1f} |")


if __name__ == "__main__":
    with open(sys.argv[1]) as handle:
        print(table(summarise(handle)))
