"""Exact pixel metrics of a category, accumulated image by image: no pixel array of the category
is ever concatenated or sorted, so memory does not grow with the category.

Every float32 score becomes an order-preserving int32 key (benchmark/run/pixel_keys.py). The
metrics need, at each distinct score that a defect pixel has (the thresholds that matter:
benchmark/run/metrics.py:Curve), the defect pixels at it and the normal pixels at or above it
and strictly above it. So:

  pass 1 (each image, as it is scored): the image's minimum and maximum, and its defect pixels'
         keys and PRO weights (1 / region size; defect pixels are few);
  then:  the defect keys' distinct values (the only sort, of defect pixels alone), the 'shared'
         buckets (the high-16-bit buckets that hold a defect key, or the whole span between the
         first and the last when they lie close) and a table of every shared key's slot,
         2 x (distinct defect keys below it) + (1 if it is one);
  pass 2 (each image again, in threads): the pixels of shared buckets counted by slot; the other
         pixels counted by bucket (a histogram of the keys' high 16 bits), or, when the shared
         buckets are one span, as below or above it (two counts: no histogram); and the image's
         bootstrap histogram on the category's equal-width bins (benchmark/run/intervals.py),
         which needs the category's range.

Normal pixels = all pixels - defect pixels, at either resolution. A normal pixel in a bucket
without a defect key lies on one side of every threshold, so its bucket (or its side of the span)
places it exactly; in a shared bucket its slot does. Ties therefore count as scikit-learn counts
them, and the curve is the one a global sort gives, value for value (tests/test_pixel_accumulator.py).
Memory: the defect pixels, 64 K table entries per shared bucket and, unless the shared buckets
form one span, a 64 K-bin histogram; above `max_table_buckets`
(scores near zero spread over many exponents) each image's shared pixels are sorted and the
distinct defect keys located among them instead: memory stays bounded, at about the speed of the
table (evaluation_scale.py's hard case).

The arithmetic runs on numpy arrays or torch tensors alike; on CUDA the maps stay on the device
and only the counts come back (benchmark/run/engine.py).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from benchmark.run.metrics import Curve, aupro_from_curve
from benchmark.run.pixel_keys import (BUCKETS, HALF, NAN_MESSAGE, SWAP_HALVES, add_counts, bincount, buckets, concatenate,
                                      high_halves, is_torch, key_scores, map_in_threads, ordered_keys, region_inverse_sizes,
                                      to_numpy, workers_for)


class PixelAccumulator:
    """add() each image's (mask, map); finish(); then add_second_pass() for every image in the
    same order; then metrics() and histograms."""

    def __init__(self, bins: int = 1000, max_table_buckets: int = 768):
        """max_table_buckets: above this many shared buckets (768: a 192 MiB slot table), pixels are
        counted by sorting each image's shared pixels instead (memory then grows with the defect keys alone)."""
        self.bins, self.max_table_buckets = bins, max_table_buckets
        self.defect_keys, self.defect_weights = [], []  # per image: int32 keys (the scores, losslessly), PRO weights
        self.positives = self.negatives = self.regions = self.images = self.second = 0
        self.low, self.high = math.inf, -math.inf
        self.histograms: list[np.ndarray] = []

    # ------------------------------------------------------------------ pass 1
    def add(self, mask, amap) -> None:
        self._merge(self._first(mask, amap))

    def add_many(self, masks, maps) -> None:
        """add() for several images, their work spread over threads (numpy releases the GIL)."""
        for part in map_in_threads(lambda pair: self._first(*pair), list(zip(masks, maps)), maps):
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
        mask_np = np.asarray(to_numpy(mask), dtype=bool)
        defect = np.flatnonzero(mask_np)  # few: indexing by position beats a boolean pass over every pixel
        if is_torch(amap):
            defect = torch.from_numpy(defect).to(amap.device)
        inverse, regions = region_inverse_sizes(mask_np)
        return {"low": low, "high": high, "keys": to_numpy(keys.reshape(-1)[defect]),
                "weights": inverse, "regions": regions, "pixels": mask_np.size}

    def _merge(self, part: dict) -> None:
        self.low, self.high = min(self.low, part["low"]), max(self.high, part["high"])
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
        if self.searched:  # scores spread over many exponents: no table (_searched_counts)
            self.slot = np.zeros(0, np.int32)
        else:  # the shared buckets' keys side by side in key order; a defect key marks its position
            marked = (self.rank[(self.distinct >> 16) + HALF] << 16) | (self.distinct & 0xFFFF)
            self.slot = np.zeros(self.shared.size * BUCKETS, np.int32)
            self.slot[marked] = 1
            np.cumsum(self.slot, out=self.slot)  # in place: one table's memory at a time
            self.slot *= 2
            self.slot[marked] -= 1
        self.shared_halves = (self.rank[SWAP_HALVES] >= 0)  # by the keys' unsigned high half
        self.slots = np.zeros(2 * self.distinct.size + 1, np.int64)  # the shared buckets' pixels, by slot
        self.coarse = np.zeros(BUCKETS, np.int64)  # the other pixels by bucket, where a histogram places them
        self.outside = np.zeros(2, np.int64)  # or by side: below and above a contiguous span
        self._device = {}
        self.defect_weights = None

    # ------------------------------------------------------------------ pass 2
    def add_second_pass(self, amap, with_histogram: bool = True) -> None:
        self._add_second(self._second_chunk([(self.second, amap)], with_histogram))

    def second_pass(self, maps, with_histogram: bool = True) -> None:
        """add_second_pass() for every image in order; on the CPU the images are split into one
        contiguous chunk per thread (numpy releases the GIL), each counted on its own."""
        items = list(enumerate(maps, start=self.second))
        workers = workers_for(maps)
        chunks = [items[len(items) * w // workers:len(items) * (w + 1) // workers] for w in range(workers)]
        for part in map_in_threads(lambda chunk: self._second_chunk(chunk, with_histogram), [c for c in chunks if c], maps):
            self._add_second(part)

    def _second_chunk(self, items: list, with_histogram: bool) -> tuple:
        """Pass 2 of some images: their pixels per slot (shared buckets only; the slots of a few
        images are counted at once, so that a bincount's cost is its pixels, not its slots), the
        other pixels by bucket or by side, and their histograms, in order."""
        counts, pending, waiting, histograms = None, [], 0, []
        coarse, outside = np.zeros(BUCKETS, np.int64), np.zeros(2, np.int64)
        for index, amap in items:
            if self.shared.size:
                slots, by_bucket, by_side = self._slots_of(amap)
                if self.searched and not is_torch(slots):  # already counted per slot
                    counts = add_counts(counts, slots)
                else:
                    pending.append(slots)
                    waiting += slots.numel() if is_torch(slots) else slots.size
                if by_bucket is not None:
                    coarse += by_bucket
                if by_side is not None:
                    outside += by_side
                if waiting >= self.slots.size:
                    counts = add_counts(counts, bincount(concatenate(pending), self.slots.size))
                    pending, waiting = [], 0
            if with_histogram:
                histograms.append(self._histogram(amap, key_scores(self.defect_keys[index])))
        if pending:
            counts = add_counts(counts, bincount(concatenate(pending), self.slots.size))
        return counts, coarse, outside, histograms, len(items)

    def _slots_of(self, amap) -> tuple:
        """The slot of each pixel of a shared bucket, and the other pixels either per bucket (a
        histogram of the keys' high halves) or, beside a contiguous span, below and above it."""
        keys = ordered_keys(amap, nonnegative=self.low > 0).reshape(-1)
        rank_table, slot_table, distinct = self._tables_on(amap)
        if is_torch(keys):
            bucket = buckets(keys).long()
            rank = rank_table[bucket]
            chosen = rank >= 0
            if self.searched:  # on the device: one search per pixel (torch has no cheaper way)
                picked = keys[chosen].long()
                below = torch.searchsorted(distinct, picked)
                equal = distinct[below.clamp(max=distinct.numel() - 1)] == picked
                return 2 * below + equal, bincount(bucket, BUCKETS), None
            return slot_table[(rank[chosen] << 16) | (keys[chosen] & 0xFFFF)], bincount(bucket, BUCKETS), None
        if self.contiguous and not self.searched:  # keys past either end wrap around to large unsigned offsets
            offset = (keys - self.span_start).view(np.uint32)
            inside = offset[offset < self.slot.size]
            below = np.count_nonzero(keys < self.span_start)
            return slot_table[inside], None, np.array([below, keys.size - inside.size - below])
        by_bucket = np.bincount(high_halves(keys), minlength=BUCKETS)[SWAP_HALVES]
        chosen = keys[self.shared_halves[high_halves(keys)]]  # beyond one table look-up, only these pixels
        if self.searched:
            return self._searched_counts(chosen), by_bucket, None
        return slot_table[(rank_table[buckets(chosen)] << 16) | (chosen & 0xFFFF)], by_bucket, None

    def _searched_counts(self, chosen: np.ndarray) -> np.ndarray:
        """Without a slot table (scores spread over many exponents): the image's pixels per slot
        from its shared pixels sorted (a vectorised sort) and the distinct defect keys' places
        among them: two binary searches per distinct key, not one per pixel into the keys (that
        one misses the cache at every step: several times slower)."""
        if self.distinct.size > chosen.size:  # few pixels: each one searched among the keys
            below = np.searchsorted(self.distinct, chosen)
            equal = self.distinct[np.minimum(below, self.distinct.size - 1)] == chosen
            return np.bincount(2 * below + equal, minlength=self.slots.size)
        chosen = np.sort(chosen)
        under = np.searchsorted(chosen, self.distinct, "left")  # pixels below each distinct key
        at_or_under = np.searchsorted(chosen, self.distinct, "right")
        counts = np.empty(self.slots.size, np.int64)
        counts[1::2] = at_or_under - under  # at the key
        counts[0:-1:2] = under - np.r_[0, at_or_under[:-1]]  # between it and the key below
        counts[-1] = chosen.size - at_or_under[-1]  # above every key
        return counts

    def _add_second(self, part: tuple) -> None:
        counts, coarse, outside, histograms, images = part
        if counts is not None:
            self.slots += counts
        self.coarse += coarse
        self.outside += outside
        self.histograms.extend(histograms)
        self.second += images

    def _tables_on(self, amap):
        if not is_torch(amap):
            return self.rank, self.slot, self.distinct
        if amap.device not in self._device:
            self._device[amap.device] = tuple(torch.from_numpy(table).to(amap.device)
                                              for table in (self.rank, self.slot, self.distinct))
        return self._device[amap.device]

    def _levels(self, scores):
        """Equal-width bin of each score over the category's range, as intervals.pixel_histograms
        computes it (float64); the maximum falls in the last bin."""
        scale = self.bins / (self.high - self.low) if self.high > self.low else 0.0
        if is_torch(scores):
            return ((scores.reshape(-1).double() - self.low) * scale).long().clamp_(max=self.bins - 1)
        levels = np.subtract(np.asarray(scores).reshape(-1), self.low, dtype=np.float64)
        levels *= scale
        return levels.astype(np.intp)  # the maximum lands on `bins`: folded into the last bin by _counts

    def _counts(self, levels) -> np.ndarray:
        counts = bincount(levels, self.bins + 1)
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
        slots[0] += self.outside[0]  # below the first defect key's bucket: below every threshold
        slots[-1] += self.outside[1]  # above the last one's: above every threshold
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
