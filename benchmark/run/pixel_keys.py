"""The arithmetic under benchmark/run/pixel_accumulator.py: order-preserving integer keys of float32
scores and their 16-bit buckets, on numpy arrays or torch tensors alike; the PRO weights of a mask;
and the thread pool the accumulator's passes share."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from scipy import ndimage

from benchmark.run.metrics import REGION_STRUCTURE

BUCKETS = 1 << 16
HALF = 1 << 15
NAN_MESSAGE = "scores contain NaN: an adapter returned an undefined score or anomaly map"


def is_torch(array) -> bool:
    return isinstance(array, torch.Tensor)


def ordered_keys(scores, nonnegative: bool | None = None):
    """float32 scores -> int32 keys in the same (signed) order; -0.0 and +0.0 get one key.
    `nonnegative`: the caller knows the minimum is > 0 (the float's bits are then the key)."""
    if is_torch(scores):
        scores = scores.float()
        bits = (scores if nonnegative else scores + 0.0).contiguous().view(torch.int32)
    else:
        scores = np.asarray(scores, dtype=np.float32)
        bits = (scores if nonnegative else scores + np.float32(0.0)).view(np.int32)
    if nonnegative:
        return bits
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


def key_scores(keys: np.ndarray) -> np.ndarray:
    """The float32 scores of int32 keys (ordered_keys is its own inverse on the bits)."""
    keys = np.asarray(keys, dtype=np.int32)
    return (keys ^ ((keys >> 31) & 0x7FFFFFFF)).view(np.float32)


def buckets(keys):
    """The high 16 bits of each key as 0..65535 (signed order kept)."""
    return (keys >> 16) + HALF


# numpy path: the high 16 bits of little-endian int32 keys are every second uint16 of their bytes,
# a view that costs nothing; as unsigned numbers they are the buckets with their halves swapped
SWAP_HALVES = np.arange(BUCKETS) ^ HALF


def high_halves(keys: np.ndarray) -> np.ndarray:
    if np.little_endian:
        return keys.reshape(-1).view(np.uint16)[1::2]
    return ((keys.reshape(-1) >> 16) & 0xFFFF).astype(np.uint16)


def bincount(values, minlength: int) -> np.ndarray:
    if is_torch(values):
        return torch.bincount(values.reshape(-1).long(), minlength=minlength).cpu().numpy()
    return np.bincount(values.reshape(-1), minlength=minlength)


def to_numpy(array) -> np.ndarray:
    return array.detach().cpu().numpy() if is_torch(array) else np.asarray(array)


_POOL: list = []


def workers_for(maps) -> int:
    """Threads for the maps' work: torch's thread count on the CPU, one on a GPU."""
    return 1 if any(is_torch(m) and m.device.type != "cpu" for m in maps) else max(1, torch.get_num_threads())


def map_in_threads(function, items: list, maps):
    """function over items, in order (results yielded as they are taken), in a pool of workers_for
    threads: the numpy operations release the GIL."""
    workers = workers_for(maps)
    if len(items) < 2 or workers < 2:
        yield from map(function, items)
        return
    if not _POOL or _POOL[0]._max_workers != workers:
        _POOL[:] = [ThreadPoolExecutor(workers, thread_name_prefix="pixel-metrics")]
    for start in range(0, len(items), workers):  # at most one result per thread waits to be merged
        yield from _POOL[0].map(function, items[start:start + workers])


def concatenate(parts):
    return torch.cat(parts) if is_torch(parts[0]) else np.concatenate(parts)


def add_counts(total, counts):
    return counts if total is None else total + counts


def region_inverse_sizes(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """1 / (size of its 8-connected region) for each defect pixel (row-major order), and the
    number of regions; labelled inside the defects' bounding box only."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return np.zeros(0), 0
    box = mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    regions, count = ndimage.label(box, structure=REGION_STRUCTURE)
    sizes = np.bincount(regions.ravel())
    inverse = np.zeros(sizes.size)
    inverse[1:] = 1.0 / sizes[1:]
    return inverse[regions[box]], count
