"""Exact pixel metrics of a category, accumulated image by image: no pixel array of the category
is ever concatenated or sorted, so memory does not grow with the category.

Every float32 score becomes an order-preserving int32 key (the float's bits, with the lower 31
bits flipped for negative floats; -0.0 is +0.0). The metrics need, at each distinct score that a
defect pixel has (the thresholds that matter: benchmark/run/metrics.py:Curve), the defect pixels
at it and the normal pixels at or above it and strictly above it. So:

  pass 1 (each image, as it is scored): a histogram of all pixels' keys by their high 16 bits
         (one bincount), the image's minimum and maximum, and its defect pixels' keys, scores and
         PRO weights (1 / region size; defect pixels are few);
  then:  the defect keys' distinct values (the only sort, of defect pixels alone) and the
         'shared' buckets, the high-16-bit buckets that hold a defect key;
  pass 2 (each image again): the pixels of shared buckets counted at full key resolution (a
         bincount over shared bucket x low 16 bits, batched over images), and the image's
         bootstrap histogram on the category's equal-width bins (benchmark/run/intervals.py),
         which needs the category's range.

Normal pixels = all pixels - defect pixels, at either resolution. A normal pixel in a bucket
without a defect key lies on one side of every threshold, so its bucket places it exactly; in a
shared bucket its full key does. Ties therefore count as scikit-learn counts them, and the curve
is the one a global sort gives, value for value (tests/test_pixel_accumulator.py). Memory: a
64 K-bin histogram, the defect pixels, and 64 K counters per shared bucket.

The arithmetic runs on numpy arrays or torch tensors alike; on CUDA the maps stay on the device
and only the counts come back (benchmark/run/engine.py).
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from scipy import ndimage

from benchmark.run.metrics import REGION_STRUCTURE, Curve, aupro_from_curve

BUCKETS = 1 << 16
HALF = 1 << 15
NAN_MESSAGE = "scores contain NaN: an adapter returned an undefined score or anomaly map"


def _is_torch(array) -> bool:
    return isinstance(array, torch.Tensor)


def ordered_keys(scores, nonnegative: bool | None = None):
    """float32 scores -> int32 keys in the same (signed) order; -0.0 and +0.0 get one key.
    `nonnegative`: the caller knows the minimum is > 0 (the float's bits are then the key)."""
    if _is_torch(scores):
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


def _buckets(keys):
    """The high 16 bits of each key as 0..65535 (signed order kept)."""
    return (keys >> 16) + HALF


# numpy path: the high 16 bits of little-endian int32 keys are every second uint16 of their bytes,
# a view that costs nothing; as unsigned numbers they are the buckets with their halves swapped
SWAP_HALVES = np.arange(BUCKETS) ^ HALF


def _high_halves(keys: np.ndarray) -> np.ndarray:
    if np.little_endian:
        return keys.reshape(-1).view(np.uint16)[1::2]
    return ((keys.reshape(-1) >> 16) & 0xFFFF).astype(np.uint16)


def _bincount(values, minlength: int) -> np.ndarray:
    if _is_torch(values):
        return torch.bincount(values.reshape(-1).long(), minlength=minlength).cpu().numpy()
    return np.bincount(values.reshape(-1), minlength=minlength)


def _numpy(array) -> np.ndarray:
    return array.detach().cpu().numpy() if _is_torch(array) else np.asarray(array)


_POOL: list = []


def _workers(maps) -> int:
    """Threads for the maps' work: torch's thread count on the CPU, one on a GPU."""
    return 1 if any(_is_torch(m) and m.device.type != "cpu" for m in maps) else max(1, torch.get_num_threads())


def _map(function, items: list, maps):
    """function over items, in order (results yielded as they are taken), in a pool of _workers
    threads: the numpy operations release the GIL."""
    workers = _workers(maps)
    if len(items) < 2 or workers < 2:
        yield from map(function, items)
        return
    if not _POOL or _POOL[0]._max_workers != workers:
        _POOL[:] = [ThreadPoolExecutor(workers, thread_name_prefix="pixel-metrics")]
    for start in range(0, len(items), workers):  # at most one result per thread waits to be merged
        yield from _POOL[0].map(function, items[start:start + workers])


def _concatenate(parts):
    return torch.cat(parts) if _is_torch(parts[0]) else np.concatenate(parts)


def _add(total, counts):
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


class PixelAccumulator:
    """add() each image's (mask, map); finish(); then add_second_pass() for every image in the
    same order; then metrics() and histograms."""

    def __init__(self, bins: int = 1000, max_table_buckets: int = 768):
        """max_table_buckets: above this many shared buckets (768: a 192 MiB slot table), pixels are
        placed by a binary search among the defect keys instead (memory then grows with those alone)."""
        self.bins, self.max_table_buckets = bins, max_table_buckets
        self.coarse = np.zeros(BUCKETS, np.int64)  # all pixels per high-16-bit bucket
        self.defect_keys, self.defect_weights = [], []  # per image: int32 keys (the scores, losslessly), PRO weights
        self.positives = self.negatives = self.regions = self.images = self.second = 0
        self.low, self.high = math.inf, -math.inf
        self.histograms: list[np.ndarray] = []

    # ------------------------------------------------------------------ pass 1
    def add(self, mask, amap) -> None:
        self._merge(self._first(mask, amap))

    def add_many(self, masks, maps) -> None:
        """add() for several images, their work spread over threads (numpy releases the GIL)."""
        for part in _map(lambda pair: self._first(*pair), list(zip(masks, maps)), maps):
            self._merge(part)

    @staticmethod
    def _first(mask, amap) -> dict:
        """One image's share of pass 1 (no state touched: it may run in a thread)."""
        if tuple(mask.shape) != tuple(amap.shape):
            raise ValueError(f"anomaly map {tuple(amap.shape)} and mask {tuple(mask.shape)} differ in size")
        low, high = float(amap.min()), float(amap.max())
        if math.isnan(low) or math.isnan(high):
            raise ValueError(NAN_MESSAGE)
        keys = ordered_keys(amap, nonnegative=low > 0)
        if _is_torch(keys):
            coarse = _bincount(_buckets(keys), BUCKETS)
        else:
            coarse = np.bincount(_high_halves(keys), minlength=BUCKETS)[SWAP_HALVES]
        mask_np = np.asarray(_numpy(mask), dtype=bool)
        defect = np.flatnonzero(mask_np)  # few: indexing by position beats a boolean pass over every pixel
        if _is_torch(amap):
            defect = torch.from_numpy(defect).to(amap.device)
        inverse, regions = region_inverse_sizes(mask_np)
        return {"low": low, "high": high, "coarse": coarse, "keys": _numpy(keys.reshape(-1)[defect]),
                "weights": inverse, "regions": regions, "pixels": mask_np.size}

    def _merge(self, part: dict) -> None:
        self.low, self.high = min(self.low, part["low"]), max(self.high, part["high"])
        self.coarse += part["coarse"]
        self.defect_keys.append(part["keys"])
        self.defect_weights.append(part["weights"])
        self.regions += part["regions"]
        self.positives += part["weights"].size
        self.negatives += part["pixels"] - part["weights"].size
        self.images += 1

    def finish(self) -> None:
        """The defect pixels' distinct keys, the buckets that hold one, and for every key of those
        buckets its slot: 2 x (distinct defect keys below it) + (1 if it is one)."""
        keys = np.concatenate(self.defect_keys).astype(np.int64) if self.images else np.zeros(0, np.int64)
        self.distinct, inverse, self.defect_counts = np.unique(keys, return_inverse=True, return_counts=True)
        weights = np.concatenate(self.defect_weights) if self.images else np.zeros(0)
        self.distinct_weights = np.bincount(inverse.ravel(), weights=weights, minlength=self.distinct.size)
        self.shared = np.unique((self.distinct >> 16) + HALF)
        if self.shared.size and self.shared[-1] - self.shared[0] < 2 * self.shared.size + 16:
            # close together (the usual case): count the whole span, so that a pixel's position in it
            # is its key minus the span's first key, one subtraction instead of table look-ups
            self.shared = np.arange(self.shared[0], self.shared[-1] + 1)
        self.span_start = np.int32(((int(self.shared[0]) - HALF) << 16) if self.shared.size else 0)
        self.contiguous = bool(self.shared.size) and self.shared[-1] - self.shared[0] + 1 == self.shared.size
        self.rank = np.full(BUCKETS, -1, np.int64)
        self.rank[self.shared] = np.arange(self.shared.size)
        self.searched = self.shared.size > self.max_table_buckets
        if self.searched:  # scores spread over many exponents: a binary search instead of a table
            self.slot = np.zeros(0, np.int32)
        else:  # the shared buckets' keys side by side in key order; a defect key marks its position
            marked = (self.rank[(self.distinct >> 16) + HALF] << 16) | (self.distinct & 0xFFFF)
            self.slot = np.zeros(self.shared.size * BUCKETS, np.int32)
            self.slot[marked] = 1
            np.cumsum(self.slot, out=self.slot)  # in place: one table's memory at a time
            self.slot *= 2
            self.slot[marked] -= 1
        self.shared_halves = (self.rank[SWAP_HALVES] >= 0)  # by the keys' unsigned high half
        self.slots = np.zeros(2 * self.distinct.size + 1, np.int64)  # every pixel, by slot
        self._device = {}
        self.defect_weights = None

    # ------------------------------------------------------------------ pass 2
    def add_second_pass(self, amap, with_histogram: bool = True) -> None:
        self._add_second(self._second_chunk([(self.second, amap)], with_histogram))

    def second_pass(self, maps, with_histogram: bool = True) -> None:
        """add_second_pass() for every image in order; on the CPU the images are split into one
        contiguous chunk per thread (numpy releases the GIL), each counted on its own."""
        items = list(enumerate(maps, start=self.second))
        workers = _workers(maps)
        chunks = [items[len(items) * w // workers:len(items) * (w + 1) // workers] for w in range(workers)]
        for part in _map(lambda chunk: self._second_chunk(chunk, with_histogram), [c for c in chunks if c], maps):
            self._add_second(part)

    def _second_chunk(self, items: list, with_histogram: bool) -> tuple:
        """Pass 2 of some images: their pixels per slot (shared buckets only; the slots of a few
        images are counted at once, so that a bincount's cost is its pixels, not its slots) and
        their histograms, in order."""
        counts, pending, waiting, histograms = None, [], 0, []
        for index, amap in items:
            if self.shared.size:
                pending.append(self._slots_of(amap))
                waiting += pending[-1].numel() if _is_torch(pending[-1]) else pending[-1].size
                if waiting >= self.slots.size:
                    counts = _add(counts, _bincount(_concatenate(pending), self.slots.size))
                    pending, waiting = [], 0
            if with_histogram:
                histograms.append(self._histogram(amap, key_scores(self.defect_keys[index])))
        if pending:
            counts = _add(counts, _bincount(_concatenate(pending), self.slots.size))
        return counts, histograms, len(items)

    def _slots_of(self, amap):
        """The slot of each pixel of a shared bucket."""
        keys = ordered_keys(amap, nonnegative=self.low > 0).reshape(-1)
        rank_table, slot_table = self._tables_on(amap)
        if _is_torch(keys):
            rank = rank_table[_buckets(keys).long()]
            chosen = rank >= 0
            return slot_table[(rank[chosen] << 16) | (keys[chosen] & 0xFFFF)]
        if self.contiguous and not self.searched:  # keys past either end wrap around to large unsigned offsets
            offset = (keys - self.span_start).view(np.uint32)
            return slot_table[offset[offset < self.slot.size]]
        chosen = keys[self.shared_halves[_high_halves(keys)]]  # beyond one table look-up, only these pixels
        if self.searched:
            below = np.searchsorted(self.distinct, chosen)  # distinct defect keys under each pixel's key
            return 2 * below + (self.distinct[np.minimum(below, self.distinct.size - 1)] == chosen)
        return slot_table[(rank_table[_buckets(chosen)] << 16) | (chosen & 0xFFFF)]

    def _add_second(self, part: tuple) -> None:
        counts, histograms, images = part
        if counts is not None:
            self.slots += counts
        self.histograms.extend(histograms)
        self.second += images

    def _tables_on(self, amap):
        if not _is_torch(amap):
            return self.rank, self.slot
        if amap.device not in self._device:
            self._device[amap.device] = (torch.from_numpy(self.rank).to(amap.device),
                                         torch.from_numpy(self.slot).to(amap.device))
        return self._device[amap.device]

    def _levels(self, scores):
        """Equal-width bin of each score over the category's range, as intervals.pixel_histograms
        computes it (float64); the maximum falls in the last bin."""
        scale = self.bins / (self.high - self.low) if self.high > self.low else 0.0
        if _is_torch(scores):
            return ((scores.reshape(-1).double() - self.low) * scale).long().clamp_(max=self.bins - 1)
        levels = np.subtract(np.asarray(scores).reshape(-1), self.low, dtype=np.float64)
        levels *= scale
        return levels.astype(np.intp)  # the maximum lands on `bins`: folded into the last bin by _counts

    def _counts(self, levels) -> np.ndarray:
        counts = _bincount(levels, self.bins + 1)
        counts[self.bins - 1] += counts[self.bins]
        return counts[:self.bins]

    def _histogram(self, amap, defect_scores: np.ndarray) -> np.ndarray:
        """[2, bins]: this image's normal (0) and defect (1) pixels on the category's bins."""
        every, defect = self._counts(self._levels(amap)), self._counts(self._levels(defect_scores))
        return np.stack([every - defect, defect])

    # ------------------------------------------------------------------ results
    def curve(self) -> Curve | None:
        """The Curve a global sort gives (None with one class only)."""
        if self.second != self.images:
            raise RuntimeError("every image must go through both passes before the curve")
        if not self.positives or not self.negatives:
            return None
        # buckets without a defect key: every pixel normal, below the same number of defect keys
        alone = np.flatnonzero((self.coarse > 0) & (self.rank < 0))
        slots = self.slots.copy()
        np.add.at(slots, 2 * np.searchsorted(self.distinct, (alone - HALF) << 16), self.coarse[alone])
        slots[1::2] -= self.defect_counts  # normal pixels only: the defect pixels sit at their own keys
        cumulative = np.r_[0, np.cumsum(slots)]  # [2i + 1]: normal pixels under distinct key i; [2i + 2]: at or under it
        under, at_or_under = cumulative[1:-1:2], cumulative[2::2]
        distinct_from_top = slice(None, None, -1)
        new_tp = self.defect_counts[distinct_from_top].astype(np.float64)
        at_or_above = (self.negatives - under)[distinct_from_top]
        above = (self.negatives - at_or_under)[distinct_from_top]
        extra = np.cumsum(self.distinct_weights[distinct_from_top] / self.regions) if self.regions else np.zeros(new_tp.size)
        return Curve(tp=np.cumsum(new_tp), new_tp=new_tp, fp=at_or_above.astype(np.float64),
                     fp_above=above.astype(np.float64), extra=[extra], positives=self.positives, negatives=self.negatives)

    def metrics(self) -> dict:
        nan = {"pixel_auroc": math.nan, "pixel_ap": math.nan, "pixel_f1_max": math.nan, "pixel_aupro": math.nan}
        curve = self.curve() if self.images else None
        if curve is None:
            return nan
        aupro = aupro_from_curve(*curve.staircase(curve.extra[0], curve.extra[0][-1])) if self.regions else math.nan
        return {"pixel_auroc": curve.auroc(), "pixel_ap": curve.average_precision(), "pixel_f1_max": curve.f1_max(),
                "pixel_aupro": aupro}
