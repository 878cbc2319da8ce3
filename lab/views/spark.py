"""Sparklines as text: one block character per column, a gap or a mark where values were not finite.

Textual's own Sparkline raises on ``inf`` (it scales by the data's range) and
cannot show a gap, so the console draws its sparklines from here: values are
placed by their x (step) into ``width`` columns, each column shows the mean
of its values as one of eight blocks, a column holding a non-finite value
shows a red ``×``, and columns between points repeat the previous level.
"""

from __future__ import annotations

from rich.text import Text

from lab.views.formats import is_finite

BLOCKS = "▁▂▃▄▅▆▇█"
MARK = "×"
MARK_STYLE = "bold red"


def spark_cells(xs: list[float], ys: list[float], marks: list[float], width: int) -> list[int | str | None]:
    """Per column: a level 0..7, ``MARK`` (a non-finite value) or None (nothing yet)."""
    width = max(1, width)
    pts = [(x, y) for x, y in zip(xs, ys) if is_finite(x) and is_finite(y)]
    marks = sorted(m for m in marks if is_finite(m))
    all_x = [p[0] for p in pts] + marks
    if not all_x:
        return [None] * width
    lo, hi = min(all_x), max(all_x)
    span = hi - lo

    def column(x: float) -> int:
        return 0 if span <= 0 else min(width - 1, int((x - lo) / span * (width - 1) + 0.5))

    sums = [0.0] * width
    counts = [0] * width
    for x, y in pts:
        c = column(x)
        sums[c] += y
        counts[c] += 1
    marked = {column(m) for m in marks}
    means = [sums[c] / counts[c] if counts[c] else None for c in range(width)]
    finite = [m for m in means if m is not None]
    ymin, ymax = (min(finite), max(finite)) if finite else (0.0, 0.0)
    out: list[int | str | None] = []
    level = None
    first = column(all_x[0]) if span > 0 else 0
    for c in range(width):
        if c in marked:
            out.append(MARK)
            continue
        if means[c] is not None:
            level = 3 if ymax == ymin else round((means[c] - ymin) / (ymax - ymin) * (len(BLOCKS) - 1))
        out.append(level if c >= first else None)
    if span <= 0 and not marked:  # a single x: one value, drawn across
        out = [level] * width
    return out


def spark_text(xs: list[float], ys: list[float], marks: list[float], width: int, style: str = "") -> Text:
    """The sparkline as a Text of ``width`` cells."""
    text = Text(no_wrap=True)
    for cell in spark_cells(xs, ys, marks, width):
        if cell == MARK:
            text.append(MARK, style=MARK_STYLE)
        elif cell is None:
            text.append(" ")
        else:
            text.append(BLOCKS[cell], style=style)
    return text


