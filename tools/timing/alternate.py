"""Side-by-side timing for the scripts in tools/timing: the functions are called in turn, A B A B
..., `repeats` times in one process, so load on a shared machine falls on each alike; the median
seconds of each."""

from __future__ import annotations

import statistics
import time


def alternate(functions: dict, *args, repeats: int = 7) -> dict[str, float]:
    seconds = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            start = time.perf_counter()
            function(*args)
            seconds[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in seconds.items()}
