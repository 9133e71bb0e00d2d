"""Page furniture of the PDF report: number formatting for tables, A4 pages with a title
and footnotes, and tables that wrap their cells and continue over pages.  Matplotlib
``Figure`` objects only (no pyplot, no backend)."""

from __future__ import annotations

import math
import textwrap

import matplotlib
import pandas as pd
from matplotlib.figure import Figure

PAGE = (11.69, 8.27)          # A4 landscape, inches
DASH = "—"
FONT = 8.5                    # table font size (pt)
COLOURS = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]


def missing(v) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))


def num(v) -> str:
    """A rate for display: 2 decimals below 10, 1 below 100, whole numbers above."""
    if missing(v):
        return DASH
    v = float(v)
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}"


def as_printed(v) -> str:
    """A paper value as the paper prints it (``108``, ``0.7``)."""
    return DASH if missing(v) else f"{float(v):g}"


def pct(fraction) -> str:
    return DASH if missing(fraction) else f"{100 * float(fraction):.2f}"


def sd(row, key: str, fmt) -> str:
    """``fmt`` of ``row[key]``, followed by ``± fmt(sd)`` where the row (a sweep's) has a
    standard deviation over seeds in ``<key>_sd``."""
    text = fmt(row[key])
    sd = row.get(f"{key}_sd")
    return text if text == DASH or missing(sd) else f"{text} ± {fmt(sd)}"


def page(title: str, subtitle: str | None = None):
    fig = Figure(figsize=PAGE)
    fig.text(0.04, 0.955, title, fontsize=15, weight="bold", va="top")
    if subtitle:
        fig.text(0.04, 0.91, textwrap.fill(subtitle, 175), fontsize=9.5, va="top",
                 color="#333333")
    return fig


NOTE_FONT, NOTE_SPACING = 7.5, 1.35


def _note_text(lines: list[str], width: int) -> str:
    return "\n".join(textwrap.fill(s, width) for s in lines if s)


def notes(fig, lines: list[str], y: float = 0.035, width: int = 190) -> None:
    """Wrapped footnotes at the bottom of the page, growing upwards from ``y``."""
    text = _note_text(lines, width)
    if text:
        fig.text(0.04, y, text, fontsize=NOTE_FONT, va="bottom", color="#333333",
                 linespacing=NOTE_SPACING)


def notes_top(fig, lines: list[str], y: float = 0.035, width: int = 190) -> float:
    """The height (figure fraction) up to which :func:`notes` with the same arguments
    writes: where the axes above them may begin."""
    text = _note_text(lines, width)
    rows = text.count("\n") + 1 if text else 0
    return y + rows * NOTE_FONT * NOTE_SPACING / 72 / fig.get_figheight()


TABLE_RECT = (0.04, 0.17, 0.92, 0.71)   # left, bottom, width, height (figure fraction)
CHAR_EM = 0.55                          # mean glyph width (em) used to wrap cell text


def row_inches(lines: int, font: float = FONT) -> float:
    return font * (1.3 * lines + 0.9) / 72


def wrap_table(header: list[str], rows: list[list[str]], widths: list[float],
                width_in: float, font: float = FONT):
    """Wrap each cell to its column's width; return (header, rows, row heights in inches)."""
    total = sum(widths)
    chars = [max(4, int((w / total * width_in - 0.08) / (font * CHAR_EM / 72))) for w in widths]

    def wrap(row):
        return [textwrap.fill(str(c), n, break_on_hyphens=False) if len(str(c)) > n else str(c)
                for c, n in zip(row, chars, strict=True)]

    head = wrap(header)
    body = [wrap(r) for r in rows]
    heights = [row_inches(max(c.count("\n") + 1 for c in r), font) for r in [head, *body]]
    return head, body, heights


def split_pages(heights: list[float], room_in: float) -> list[tuple[int, int]]:
    """Row ranges [i, j) that fit ``room_in`` inches below the header (``heights[0]``)."""
    spans, i, n = [], 0, len(heights) - 1
    while i < n or not spans:
        used, j = heights[0], i
        while j < n and (j == i or used + heights[j + 1] <= room_in):
            used += heights[j + 1]
            j += 1
        spans.append((i, j))
        i = j
        if n == 0:
            break
    return spans


def table(fig, rect, header: list[str], rows: list[list[str]], heights: list[float],
           widths: list[float], font: float = FONT, shade: list[bool] | None = None) -> None:
    """A table in ``rect`` (figure fraction), top-aligned; ``heights`` in inches, header
    first (cells already wrapped by :func:`wrap_table`)."""
    ax = fig.add_axes(rect)
    ax.axis("off")
    room = rect[3] * PAGE[1]
    height = min(1.0, sum(heights) / room)
    total = sum(widths)
    tab = ax.table(cellText=rows or [[""] * len(header)], colLabels=header,
                   colWidths=[w / total for w in widths], cellLoc="left",
                   bbox=[0, 1 - height, 1, height])
    tab.auto_set_font_size(False)
    tab.set_fontsize(font)
    for (r, _c), cell in tab.get_celld().items():
        cell.set_height(heights[r] / room if r < len(heights) else heights[-1] / room)
        cell.set_edgecolor("#bbbbbb")
        cell.set_linewidth(0.5)
        cell.PAD = 0.03
        if r == 0:
            cell.set_facecolor("#e4e9f2")
            cell.set_text_props(weight="bold")
        elif shade and shade[r - 1]:
            cell.set_facecolor("#f4f4f4")


def paginate(rows: list, per_page: int) -> list[list]:
    return [rows[i:i + per_page] for i in range(0, len(rows), per_page)] or [[]]


def whole(v) -> str:
    return DASH if missing(v) else f"{float(v):,.0f}"
