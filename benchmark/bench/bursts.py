"""Bursts of timed calls in rotating order within a round, and the figures of rounds: medians,
spreads and side-by-side ratios to the reference method (benchmark/bench/rounds.py runs them)."""

from __future__ import annotations

import math
import statistics

from benchmark.bench.measure import MIN_TIMED_CALLS

NOISY_SPREAD = 0.20



def _spread(values: list[float]) -> float:
    return (max(values) - min(values)) / statistics.median(values) if len(values) > 1 else 0.0


def combine(rounds: list[dict]) -> dict:
    """One row from a method's rounds (all done): medians over rounds, spreads, and the median of
    the rounds' side-by-side ratios to the reference (when it was measured beside it)."""
    first = rounds[0]
    sizes = list(first["per_batch"])
    per_batch = {}
    for size in sizes:
        throughputs = [r["per_batch"][size]["images_per_second"] for r in rounds]
        per_batch[size] = {"images_per_second": statistics.median(throughputs), "spread": _spread(throughputs),
                           "per_round": throughputs, "peak_memory_mib": max(r["per_batch"][size]["peak_memory_mib"] for r in rounds),
                           "calls_per_round": [r["per_batch"][size]["calls"] for r in rounds],
                           "bursts_per_round": [r["per_batch"][size]["bursts"] for r in rounds]}
    best = max(per_batch, key=lambda b: per_batch[b]["images_per_second"])
    row = {**{k: v for k, v in first.items() if k not in ("ratio_batch1", "burst_ratios", "cpu_steal_share")}, "per_batch": per_batch,
           "rounds": len(rounds), "best_batch": best,
           "throughput_batch1": per_batch[sizes[0]]["images_per_second"], "throughput_batch1_spread": per_batch[sizes[0]]["spread"],
           "throughput_best": per_batch[best]["images_per_second"], "throughput_best_spread": per_batch[best]["spread"],
           "peak_memory_mib": per_batch[best]["peak_memory_mib"], "ratio_batch1": None, "ratio_batch1_spread": None}
    row["noisy"] = bool(max(row["throughput_batch1_spread"], row["throughput_best_spread"]) > NOISY_SPREAD)
    steals = [r.get("cpu_steal_share") for r in rounds]
    row["cpu_steal_share"] = max(steals) if all(v is not None for v in steals) else None
    row["cpu_steal_share_per_round"] = steals
    ratios = [r.get("ratio_batch1") for r in rounds]
    if all(ratio is not None for ratio in ratios):
        row["ratio_batch1"], row["ratio_batch1_spread"] = statistics.median(ratios), _spread(ratios)
        row["ratio_batch1_per_round"] = ratios
        row["burst_ratios_per_round"] = [r["burst_ratios"] for r in rounds]
    return row


def rotated(items: list, by: int) -> list:
    by %= max(1, len(items))
    return items[by:] + items[:by]


def time_in_bursts(bench: dict, bursts: dict, sizes: dict[str, list[int]] | None = None) -> dict[str, dict]:
    """{method: {size: {"calls": [...], "bursts": [{"began", "median"}, ...], "peak_memory_mib"}}}.
    `bursts` maps each method to a function (size, warmup, min_calls, min_seconds) -> one burst's
    reply. Each size is timed in bench["bursts"] bursts per method, in rotating order (A B C,
    B C A, ...); with `sizes` (later rounds) exactly those sizes per method, otherwise batch 1 and
    each larger size of the bench while a method's call is expected to take at most
    max_batch_seconds (its last size's median seconds per image x the size)."""
    count = int(bench["bursts"])
    min_calls, seconds = math.ceil(MIN_TIMED_CALLS / count), float(bench["min_seconds"]) / count
    candidates = sorted(set().union(*sizes.values())) if sizes else sorted(set(bench["batch_sizes"]) | {1})
    timings = {method: {} for method in bursts}
    still_timed, seconds_per_image = list(bursts), {method: 0.0 for method in bursts}
    for size in candidates:
        if sizes:
            methods = [m for m in bursts if size in sizes.get(m, ())]
        else:  # a method stops at the first size expected to be too slow
            still_timed = [m for m in still_timed if seconds_per_image[m] * size <= bench["max_batch_seconds"]]
            methods = still_timed
        for index in range(count):
            for method in rotated(methods, index):
                reply = bursts[method](size, int(bench["warmup"]) if index == 0 else 0, min_calls, seconds)
                timing = timings[method].setdefault(size, {"calls": [], "bursts": []})
                timing["calls"].extend(reply["calls"])
                timing["bursts"].append({"began": reply["began"], "median": statistics.median(reply["calls"])})
                timing["peak_memory_mib"] = reply["peak_memory_mib"]
        for method in methods:
            seconds_per_image[method] = statistics.median(timings[method][size]["calls"]) / size
    return timings


def round_row(per_batch: dict, reference: dict | None) -> dict:
    """A method's figures in one round: per size the throughput from the median call; at batch 1
    the burst-by-burst ratio to the reference (its median call over the method's in the same
    burst cycle) and their median."""
    row = {"per_batch": {size: {"images_per_second": size / statistics.median(t["calls"]),
                                "seconds_per_call": statistics.median(t["calls"]), "peak_memory_mib": t["peak_memory_mib"],
                                "calls": len(t["calls"]), "bursts": t["bursts"]} for size, t in per_batch.items()},
           "ratio_batch1": None}
    if reference is not None and 1 in reference and 1 in per_batch:
        ratios = [ref["median"] / own["median"] for own, ref in zip(per_batch[1]["bursts"], reference[1]["bursts"])]
        row.update(ratio_batch1=statistics.median(ratios), burst_ratios=ratios)
    return row
