"""A metric series kept at a bounded number of drawable points, however long the run.

The monitor appends every record of a run (100 a second while it trains,
200,000 for a finished long run) but draws at most ``max_points`` points per
curve. Records are grouped into buckets of ``width`` consecutive values; each
bucket keeps its minimum and maximum (with their x coordinates), its mean and
its last point, so a spike survives downsampling (bucket min/max), while the
means feed sparklines and smoothing. When the buckets reach ``max_points / 2``
neighbours merge and ``width`` doubles: constant memory, O(1) amortized work
per value, and :meth:`MinMaxSeries.extend` handles a big batch with C-level
``min``/``max``/``sum`` over slices, producing exactly the buckets that
appending one value at a time would.

Non-finite values (``inf``, ``NaN``: a diverging loss) never enter a bucket,
where one would poison every min, max and mean after it: they are kept apart
as *marks* (their x coordinates), which charts and sparklines draw as gaps
with a mark.
"""

from __future__ import annotations

import math
from typing import Sequence

X = tuple  # an x coordinate: (step, tokens); either axis can be drawn


class MinMaxSeries:
    """Values over consecutive records, downsampled by bucket min/max."""

    def __init__(self, max_points: int = 2000):
        self.max_buckets = max(2, max_points // 2)
        self.width = 1
        self.count = 0
        self._n: list[int] = []
        self._sum: list[float] = []
        self._min: list[float] = []
        self._min_x: list[X] = []
        self._max: list[float] = []
        self._max_x: list[X] = []
        self._last: list[float] = []
        self._last_x: list[X] = []
        self._marks: list[X] = []
        self._mark_stride = 1  # every n-th non-finite value is kept once there are many
        self._mark_seen = 0

    def __len__(self) -> int:
        return self.count

    @property
    def buckets(self) -> int:
        return len(self._n)

    @property
    def last(self) -> float | None:
        """The most recent value (None when empty)."""
        return self._last[-1] if self._last else None

    @property
    def last_x(self) -> X | None:
        return self._last_x[-1] if self._last_x else None

    def clear(self) -> None:
        """Forget every value (the metrics file was replaced)."""
        self.__init__(self.max_buckets * 2)

    def _mark(self, x: X) -> None:
        """Remember where a non-finite value was (at most ``max_buckets`` marks, evenly thinned)."""
        self.count += 1
        self._mark_seen += 1
        if (self._mark_seen - 1) % self._mark_stride:
            return
        self._marks.append(x)
        if len(self._marks) > self.max_buckets:
            self._marks = self._marks[::2]
            self._mark_stride *= 2

    @property
    def non_finite(self) -> int:
        """How many non-finite values were added."""
        return self._mark_seen

    def marks(self, axis: int = 0) -> list[float]:
        """x of (up to ``max_points / 2`` of) the non-finite values, in order."""
        return [x[axis] for x in self._marks]

    def append(self, x: X, y: float) -> None:
        """Add one value at coordinate ``x`` (a non-finite ``y`` becomes a mark)."""
        if not math.isfinite(y):
            self._mark(x)
            return
        n = self._n
        if n and n[-1] < self.width:
            n[-1] += 1
            self._sum[-1] += y
            if y < self._min[-1]:
                self._min[-1], self._min_x[-1] = y, x
            if y > self._max[-1]:
                self._max[-1], self._max_x[-1] = y, x
            self._last[-1], self._last_x[-1] = y, x
        else:
            if len(n) >= self.max_buckets:
                self._merge()
                self.append(x, y)
                return
            self._open(1, y, y, x, y, x, y, x)
        self.count += 1

    def extend(self, xs: Sequence[X], ys: Sequence[float]) -> None:
        """Add many values; the same buckets as appending them one by one, much faster."""
        if not math.isfinite(sum(ys)):  # some inf/nan (or a huge sum): marks apart, the rest in bulk
            keep = [i for i, y in enumerate(ys) if math.isfinite(y)]
            if len(keep) < len(ys):
                good = set(keep)
                for i in range(len(ys)):
                    if i not in good:
                        self._mark(xs[i])
                self.extend([xs[i] for i in keep], [ys[i] for i in keep])
                return
        total = self.count - self._mark_seen + len(ys)
        while -(-total // self.width) > self.max_buckets:
            self._merge()
        i, m = 0, len(ys)
        # Fill the open bucket value by value, then whole buckets with slice reductions.
        while i < m and self._n and self._n[-1] < self.width:
            self.append(xs[i], ys[i])
            i += 1
        w = self.width
        while i < m:
            j = min(i + w, m)
            chunk = ys[i:j] if isinstance(ys, list) else list(ys[i:j])
            lo, hi = min(chunk), max(chunk)
            self._open(j - i, sum(chunk), lo, xs[i + chunk.index(lo)],
                       hi, xs[i + chunk.index(hi)], chunk[-1], xs[j - 1])
            self.count += j - i
            i = j

    def _open(self, n, total, lo, lo_x, hi, hi_x, last, last_x) -> None:
        self._n.append(n)
        self._sum.append(total)
        self._min.append(lo)
        self._min_x.append(lo_x)
        self._max.append(hi)
        self._max_x.append(hi_x)
        self._last.append(last)
        self._last_x.append(last_x)

    def _merge(self) -> None:
        """Merge neighbouring buckets pairwise; the width doubles."""
        n, s = self._n, self._sum
        mn, mnx, mx, mxx, la, lax = self._min, self._min_x, self._max, self._max_x, self._last, self._last_x
        out = [[], [], [], [], [], [], [], []]
        for a in range(0, len(n), 2):
            b = a + 1
            if b == len(n):
                parts = (n[a], s[a], mn[a], mnx[a], mx[a], mxx[a], la[a], lax[a])
            else:
                lo = (mn[a], mnx[a]) if mn[a] <= mn[b] else (mn[b], mnx[b])
                hi = (mx[a], mxx[a]) if mx[a] >= mx[b] else (mx[b], mxx[b])
                parts = (n[a] + n[b], s[a] + s[b], lo[0], lo[1], hi[0], hi[1], la[b], lax[b])
            for lst, v in zip(out, parts):
                lst.append(v)
        (self._n, self._sum, self._min, self._min_x, self._max, self._max_x,
         self._last, self._last_x) = out
        self.width *= 2

    # ---- reading -------------------------------------------------------------

    def points(self, axis: int = 0) -> tuple[list[float], list[float]]:
        """At most ``max_points`` (x, y) points: each bucket's min and max, in x order."""
        xs: list[float] = []
        ys: list[float] = []
        for n, lo, lo_x, hi, hi_x in zip(self._n, self._min, self._min_x, self._max, self._max_x):
            if n == 1 or lo_x == hi_x:
                xs.append(lo_x[axis])
                ys.append(lo)
            elif lo_x[axis] <= hi_x[axis]:
                xs += (lo_x[axis], hi_x[axis])
                ys += (lo, hi)
            else:
                xs += (hi_x[axis], lo_x[axis])
                ys += (hi, lo)
        return xs, ys

    def means(self, axis: int = 0) -> tuple[list[float], list[float]]:
        """One (x, mean) point per bucket, x being the bucket's last coordinate."""
        return [x[axis] for x in self._last_x], [s / n for s, n in zip(self._sum, self._n)]

    def smoothed(self, span: int, axis: int = 0) -> tuple[list[float], list[float]]:
        """Bucket means smoothed by a debiased EMA over about ``span`` records."""
        xs, ys = self.means(axis)
        points = max(1.0, span / self.width)  # the span in buckets
        if points <= 1.0:
            return xs, ys
        alpha = 2.0 / (points + 1.0)
        out, acc, weight = [], 0.0, 0.0
        for y in ys:
            acc = (1 - alpha) * acc + alpha * y
            weight = (1 - alpha) * weight + alpha
            out.append(acc / weight)
        return xs, out

    def minimum(self) -> float | None:
        return min(self._min) if self._min else None

    def maximum(self) -> float | None:
        return max(self._max) if self._max else None


def downsample(xs: list[float], ys: list[float], max_points: int) -> tuple[list[float], list[float]]:
    """At most ``max_points`` of the (x, y) points: each of ``max_points / 2`` runs of consecutive
    points is kept as its minimum and its maximum (in x order), so spikes survive. A plot cannot
    show more than a few points per column; drawing fewer makes it several times cheaper."""
    n = len(ys)
    if n <= max_points:
        return xs, ys
    buckets = max(1, max_points // 2)
    out_x: list[float] = []
    out_y: list[float] = []
    for b in range(buckets):
        lo, hi = b * n // buckets, (b + 1) * n // buckets
        if lo >= hi:
            continue
        chunk = ys[lo:hi]
        i_min = lo + chunk.index(min(chunk))
        i_max = lo + chunk.index(max(chunk))
        for i in sorted({i_min, i_max}):
            out_x.append(xs[i])
            out_y.append(ys[i])
    return out_x, out_y
