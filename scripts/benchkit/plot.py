"""``--plot PATH``: the ratios of one run as an SVG chart (needs matplotlib).

A panel per table that has ratios, in the order of the run: each row's median over
the table's floor as a bar (the size table's rows are ratios already: the pool of
1,000 over the pool of 8), its min and max over the floor's median as a whisker, a
dotted line at 1 (the floor), and each target that applies to a row as a mark on
that row at the limit, green where it passes and red where it fails, spelt out at
the right. Tables of other units (memory, import) are left out.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .results import NOISY, Row, Table
from .subjects import BEFORE_NAME
from .targets import Target

if TYPE_CHECKING:
    from matplotlib.artist import Artist
    from matplotlib.axes import Axes

#: Bar colours by row kind ("gocp before" has its own).
COLOURS = {
    "floor": "#4d4d4d",
    "gocp": "#1f6fb4",
    "before": "#9ecae1",
    "peer": "#f28e2b",
    "info": "#c9c9c9",
}
RESULT_COLOURS = {"PASS": "#2a9d3a", "FAIL": "#d62728"}
NA_COLOUR = "#8c8c8c"

WIDTH = 12.6  # inches
LABELS = 4.3  # inches left of each panel for the row names and their ratios
RATIO = 36  # points between a row's name and the panel, where its ratio goes
NOTES = 3.4  # inches right of each panel for the targets
ROW = 0.21  # inches per row
PANEL = 0.78  # inches per panel for its title, axis and the gap to the next
TITLE = 0.28  # inches of that above the panel
HEADER = 1.15  # inches for the figure's title, legend and key
FONT = 7.5


def unavailable() -> str | None:
    """Why ``--plot`` cannot draw here (matplotlib missing), or None."""
    if importlib.util.find_spec("matplotlib") is None:
        return "needs matplotlib, which is not installed (pip install -e '.[bench]')"
    return None


@dataclass
class Bar:
    """One row as drawn: its values in the panel's units (ratios), or why it has none."""

    row: Row
    median: float | None
    low: float | None
    high: float | None
    marks: list[tuple[float, str]]  # (position, result) of the targets on this row
    notes: list[tuple[str, str]]  # (text, result) of the targets on this row


@dataclass
class Panel:
    table: Table
    bars: list[Bar]
    axis: str  # the x axis's label


def _scale(table: Table) -> tuple[float, str] | None:
    """What a row's values are divided by in ``table``, and the axis label; None: not drawn."""
    better = "higher" if table.higher_is_better else "lower"
    if table.unit == "ratio":  # its rows are ratios already (the size table)
        return 1.0, f"each row's own ratio (1: no difference); {better} is better"
    floor = table.floor()
    if not table.ratios or floor is None or not floor.median:
        return None
    name = floor.name.removeprefix("floor: ")
    return floor.median, (
        f"ratio to the floor ({name}: {floor.median:.3g} {table.unit}); {better} is better"
    )


def _against(target: Target) -> str:
    """What the target compares with, short: a row "fair floor: how it works" is "fair floor"."""
    if target.to is None:
        return ""
    short = target.to.split(":")[0]
    return {"floor": " floor", "peer": " best peer"}.get(target.to, f" {short}")


def _describe(target: Target) -> str:
    """The target as spelt out beside its row, e.g. "#4 ≤1.05x floor: FAIL"."""
    if target.boolean:
        return f"{target.source} first come, first served: {target.result}"
    sign = "\u2264" if target.at_most else "\u2265"
    what = "" if target.at_most else "throughput "  # the at-least targets are throughputs
    limit = f"{target.limit:g}{target.unit.strip()}"
    return f"{target.source} {what}{sign}{limit}{_against(target)}: {target.result}"


def _position(target: Target, table: Table, scale: float) -> float | None:
    """Where ``target``'s limit falls on its row, in the panel's units (None: nowhere)."""
    if target.boolean:
        return None
    if target.to in (None, "floor"):
        return target.limit
    other = table.best_peer() if target.to == "peer" else table.row(target.to or "")
    if other is None or not other.median:
        return None
    ratio = other.median / scale
    return ratio * target.limit if target.at_most else ratio / target.limit


def panels(tables: dict[str, Table], found: list[Target]) -> list[Panel]:
    """The panels to draw: each table with ratios, its rows and the targets on them."""
    out = []
    for table in tables.values():
        scaled = _scale(table)
        if scaled is None:
            continue
        scale, axis = scaled
        bars = []
        for row in table.rows:
            if not row.samples:
                bars.append(Bar(row, None, None, None, [], []))
                continue
            mine = [t for t in found if t.key == table.key and t.name == row.name]
            at = [(_position(t, table, scale), t.result) for t in mine]
            bars.append(
                Bar(
                    row,
                    (row.median or 0.0) / scale,
                    min(row.samples) / scale,
                    max(row.samples) / scale,
                    [(x, result) for x, result in at if x is not None],
                    [(_describe(t), t.result) for t in mine],
                )
            )
        if any(bar.median is not None for bar in bars):
            out.append(Panel(table, bars, axis))
    return out


def _colour(row: Row) -> str:
    return COLOURS["before"] if row.name == BEFORE_NAME else COLOURS.get(row.kind, COLOURS["info"])


def _note_colour(result: str) -> str:
    """A target's text colour by its result: "PASS", "FAIL" (either maybe "(noisy)"), "n/a"."""
    return {"PASS": "#1b6e29", "FAIL": RESULT_COLOURS["FAIL"]}.get(result[:4], NA_COLOUR)


def _draw_panel(ax: Axes, panel: Panel, width: float) -> None:
    """One table: bars, whiskers, the floor line, target marks, labels."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
    from matplotlib.transforms import offset_copy

    bars = panel.bars
    values = [v for bar in bars for v in (bar.low, bar.high) if v is not None]
    values += [at for bar in bars for at, _result in bar.marks]
    values.append(1.0)
    low, high = min(values), max(values)
    log = low > 0 and high / low > 6.0
    if log:
        ax.set_xscale("log")
        left, right = low / 1.25, high * 1.4
    else:
        left, right = 0.0, high * 1.08
    ax.set_xlim(left, right)
    rows = ax.get_yaxis_transform()  # x: axes fraction, y: row
    fig = ax.figure
    assert isinstance(fig, Figure)
    ratio_at = offset_copy(rows, fig=fig, x=-4, units="points")
    drawn = [(y, bar) for y, bar in enumerate(bars) if bar.median is not None]
    ys = [y for y, _bar in drawn]
    medians = [bar.median or 0.0 for _y, bar in drawn]
    ax.barh(
        ys,
        [m - left for m in medians],
        left=left,
        height=0.64,
        color=[_colour(bar.row) for _y, bar in drawn],
        zorder=2,
    )
    ax.errorbar(
        medians,
        ys,
        xerr=[
            [m - (bar.low or m) for m, (_y, bar) in zip(medians, drawn, strict=True)],
            [(bar.high or m) - m for m, (_y, bar) in zip(medians, drawn, strict=True)],
        ],
        fmt="none",
        ecolor="#222222",
        elinewidth=0.8,
        capsize=2,
        capthick=0.8,
        zorder=3,
    )
    marks = [(at, y, result) for y, bar in drawn for at, result in bar.marks]
    if marks:
        ax.vlines(
            [at for at, _y, _r in marks],
            [y - 0.46 for _at, y, _r in marks],
            [y + 0.46 for _at, y, _r in marks],
            colors=[RESULT_COLOURS.get(r[:4], NA_COLOUR) for _at, _y, r in marks],
            lw=2.0,
            zorder=4,
        )
    for y, bar in enumerate(bars):
        if bar.median is None:
            ax.text(
                0.005,
                y,
                bar.row.status or "no data",
                transform=rows,
                va="center",
                ha="left",
                fontsize=FONT - 0.5,
                color=NA_COLOUR,
                style="italic",
            )
            continue
        ax.text(
            0.0,
            y,
            f"{bar.median:.2f}x",
            transform=ratio_at,
            va="center",
            ha="right",
            fontsize=FONT,
            fontweight="bold" if bar.row.kind == "gocp" else "normal",
            color="#666666" if bar.row.kind == "info" else "black",
        )
        for line, (note, result) in enumerate(bar.notes):  # one line each, from the row's top down
            ax.text(
                1.015,
                y - 0.45,
                note,
                transform=offset_copy(rows, fig=fig, y=-line * (FONT + 0.5), units="points"),
                va="top",
                ha="left",
                fontsize=FONT - 0.5,
                color=_note_colour(result),
                clip_on=False,
            )
    ax.axvline(1.0, color="#222222", lw=0.9, ls=":", zorder=1)
    names = [bar.row.name + (" ~" if bar.row.noisy else "") for bar in bars]
    ax.set_yticks(range(len(bars)), names, fontsize=FONT)
    for tick, bar in zip(ax.get_yticklabels(), bars, strict=True):
        if bar.row.kind == "gocp":
            tick.set_fontweight("bold")
        if bar.median is None or bar.row.kind == "info":
            tick.set_color("#666666")
    ax.set_ylim(len(bars) - 0.5, -0.5)
    ax.tick_params(axis="x", labelsize=FONT)
    ax.tick_params(axis="y", length=0, pad=RATIO)
    if log:
        ax.xaxis.set_major_locator(LogLocator(base=2.0))
        ax.xaxis.set_minor_locator(LogLocator(base=2.0, subs=(1.5,)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.grid(axis="x", which="both" if log else "major", color="#e6e6e6", lw=0.6, zorder=0)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.set_xlabel(
        panel.axis + ("; log scale" if log else ""), fontsize=FONT, color="#333333", labelpad=2
    )
    # the title starts at the figure's left edge, over the row names
    ax.set_title(
        panel.table.title,
        loc="left",
        x=-(LABELS - 0.15) / width,
        fontsize=FONT + 1.5,
        fontweight="bold",
        pad=4,
    )


def _subtitle(meta: dict[str, Any]) -> str:
    text = (
        f"gocp {meta['gocp']}, {meta['implementation']} {meta['python']}, {meta['cpus']} CPUs, "
        f"echo server: {meta['server']}, {meta['repeats']} samples per subject"
    )
    if meta.get("quick"):
        text += " (--quick: a smoke run, not figures to quote)"
    load = meta.get("load_average")
    if load:
        text += f"; load average at start {load[0]:.2f}"
    return text


def draw(tables: dict[str, Table], found: list[Target], meta: dict[str, Any], path: str) -> None:
    """Write the chart of ``tables`` (and ``found``, their targets) to ``path`` as SVG.

    Raises ValueError when no table has ratios to draw, ImportError without matplotlib.
    """
    import matplotlib
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    drawn = panels(tables, found)
    if not drawn:
        raise ValueError("no table of this run has ratios to draw (memory and import have none)")
    total = HEADER + sum(ROW * len(panel.bars) + PANEL for panel in drawn)
    with matplotlib.rc_context(
        {
            "svg.hashsalt": "gocp-bench",  # the same ids in every file: smaller diffs
            "svg.fonttype": "none",  # text as text (a tenth of the size of glyph paths)
            "font.family": "sans-serif",
            "font.sans-serif": ["DejaVu Sans", "Verdana", "Arial"],  # laid out for the first
            "font.size": FONT,
        }
    ):
        fig = Figure(figsize=(WIDTH, total))
        width = WIDTH - LABELS - NOTES
        top = HEADER + TITLE  # inches from the top to the top of the next panel's axes
        for panel in drawn:
            height = ROW * len(panel.bars)
            rect = (LABELS / WIDTH, 1 - (top + height) / total, width / WIDTH, height / total)
            _draw_panel(fig.add_axes(rect), panel, width)
            top += height + PANEL
        fig.suptitle(
            "gocp benchmark: each table's rows over its floor (medians; whiskers: min to max)",
            x=0.15 / WIDTH,
            y=1 - 0.12 / total,
            ha="left",
            va="top",
            fontsize=FONT + 4,
            fontweight="bold",
        )
        fig.text(
            0.15 / WIDTH,
            1 - 0.42 / total,
            _subtitle(meta),
            ha="left",
            va="top",
            fontsize=FONT + 0.5,
            color="#333333",
        )
        shown = {
            "before" if bar.row.name == BEFORE_NAME else bar.row.kind
            for panel in drawn
            for bar in panel.bars
            if bar.median is not None
        }
        handles: list[Artist] = [
            Patch(color=COLOURS[kind], label=label)
            for kind, label in (
                ("floor", "floor"),
                ("gocp", "gocp"),
                ("before", BEFORE_NAME),
                ("peer", "peer"),
                ("info", "for information"),
            )
            if kind in shown
        ]
        handles += [
            Line2D([], [], color="#222222", ls=":", label="the floor (1x)"),
            Line2D([], [], color="#222222", lw=0.8, marker="|", label="min to max"),
            Line2D([], [], color=RESULT_COLOURS["PASS"], lw=2, label="target met"),
            Line2D([], [], color=RESULT_COLOURS["FAIL"], lw=2, label="target missed"),
        ]
        fig.legend(
            handles=handles,
            loc="upper left",
            bbox_to_anchor=(0.15 / WIDTH, 1 - 0.62 / total),
            ncols=len(handles),
            fontsize=FONT,
            frameon=False,
            handlelength=1.6,
            columnspacing=1.4,
        )
        fig.text(
            0.15 / WIDTH,
            1 - 0.9 / total,
            f"~ after a name: noisy, its samples spread more than {NOISY:g}x (max over min); "
            "the targets met or missed are listed at the right of their row",
            ha="left",
            va="top",
            fontsize=FONT,
            color="#333333",
        )
        fig.savefig(path, format="svg", facecolor="white", metadata={"Date": None})
