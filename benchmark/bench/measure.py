"""Timing calls and sampling peak memory inside one bench process."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import torch

MIN_TIMED_CALLS = 3



class PeakRSS:
    """Samples the resident set of this process in a thread: the CPU has no peak counter to reset."""

    def __init__(self, every: float = 0.005):
        import psutil

        self.process, self.every, self.peak, self._stop = psutil.Process(), every, 0, threading.Event()

    def __enter__(self):
        self.peak = self.process.memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(self.every)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_calls(call, warmup: int, min_calls: int, min_seconds: float, sync=lambda: None) -> list[float]:
    """Seconds of each of at least `min_calls` calls lasting at least `min_seconds` together,
    after `warmup` untimed calls; each call timed on its own (sync() waits for the device)."""
    for _ in range(warmup):
        call()
    sync()
    calls, start = [], time.perf_counter()
    while len(calls) < min_calls or time.perf_counter() - start < min_seconds:
        began = time.perf_counter()
        call()
        sync()
        calls.append(time.perf_counter() - began)
    return calls


def cpu_times() -> tuple[int, int] | None:
    """(steal, total) time of all CPUs since boot, from /proc/stat (Linux; None elsewhere)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal [guest guest_nice, already counted in user/nice]
    return (fields[7] if len(fields) > 7 else 0), sum(fields[:8])


def steal_share(before, after) -> float | None:
    """The share of CPU time the hypervisor gave to other machines in between ("steal"): load from
    outside that can fall unequally on methods, which interleaving does not take out of a ratio."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])
