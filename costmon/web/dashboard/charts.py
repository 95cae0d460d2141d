"""Dashboard figures: pure functions from plain lists and dicts to plotly figures.

Nothing here reads the database or the request. Money arrives as integer nano-dollars and stays
exact in every label and hover text; it becomes a float only as an axis value, at the very end.
"""

from __future__ import annotations

import html
import zlib
from collections.abc import Mapping, Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import plotly.graph_objects as go

from costmon.core.money import format_money
from usage.links import shown

# One large palette for every page, readable on white: Tableau 10 (its grey left to the cache
# chart's misses) and twelve more of clearly different hue or lightness. A chart takes a colour
# per series from it by rank (`colours_for`), so series shown together never share one.
PALETTE = (
    "#4E79A7",  # blue
    "#F28E2B",  # orange
    "#E15759",  # red
    "#76B7B2",  # teal
    "#59A14F",  # green
    "#EDC948",  # yellow
    "#B07AA1",  # purple
    "#FF9DA7",  # pink
    "#9C755F",  # brown
    "#17BECF",  # cyan
    "#BCBD22",  # olive
    "#393B79",  # indigo
    "#E377C2",  # magenta
    "#843C39",  # maroon
    "#98DF8A",  # light green
    "#FFBB78",  # light orange
    "#AEC7E8",  # light blue
    "#637939",  # dark olive
    "#C5B0D5",  # lavender
    "#8C6D31",  # ochre
    "#7B4173",  # plum
    "#7F7F7F",  # grey
)
# The big providers' own colours, which they keep whenever they are on a chart.
FIXED_COLOURS = {
    "openai": "#59A14F",
    "anthropic": "#F28E2B",
    "google": "#4E79A7",
    "mistral": "#E15759",
    "azure": "#393B79",
    "bedrock": "#EDC948",
}
HIT_COLOUR = "#59A14F"
MISS_COLOUR = "#BAB0AC"
LIMIT_COLOUR = "#E15759"
PREVIOUS_COLOUR = "#1F2933"
PROJECTED_COLOUR = "#F28E2B"
# The rings on hours outside their usual range: black, a colour no stacked series can have.
OUTSIDE_COLOUR = "#000000"
ACCENT = PALETTE[0]
# Sequential, light to dark and cool to warm (ColorBrewer YlOrRd): $0 is the lightest cell.
HEAT_SCALE = (
    (0.0, "#FFFFE5"),
    (0.125, "#FFF7BC"),
    (0.25, "#FEE391"),
    (0.375, "#FEC44F"),
    (0.5, "#FE9929"),
    (0.625, "#EC7014"),
    (0.75, "#CC4C02"),
    (0.875, "#993404"),
    (1.0, "#662506"),
)
WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
CONFIG = {"responsive": True, "displaylogo": False}
HEIGHT = 340
NO_NAME = "(none)"
# The key a series gets for everything beyond a chart's biggest ones (no name holds a NUL).
OTHERS = "\x00others"
OTHERS_LABEL = "(others)"
OTHERS_COLOUR = "#BAB0AC"  # grey, outside the palette


def colour_for(name: str) -> str:
    """The colour a provider, model or operation prefers: the same on every page and in every
    process (crc32, not Python's salted hash). A chart may give it another (`colours_for`)."""
    key = name.strip().lower()
    if key in FIXED_COLOURS:
        return FIXED_COLOURS[key]
    return PALETTE[zlib.crc32(key.encode()) % len(PALETTE)]


def colours_for(names: Sequence[str]) -> dict[str, str]:
    """Each name's colour in one chart, `names` ranked (biggest first): a name gets its own
    colour when no bigger one took it, else the next free one, so no two share a colour (until
    the palette runs out, beyond 22 series). Providers with a fixed colour always keep it."""
    taken: set[str] = {OTHERS_COLOUR}
    found: dict[str, str] = {OTHERS: OTHERS_COLOUR} if OTHERS in names else {}
    fixed = {
        n: FIXED_COLOURS[n.strip().lower()] for n in names if n.strip().lower() in FIXED_COLOURS
    }
    taken.update(fixed.values())
    found.update(fixed)
    for name in names:
        if name in found:
            continue
        start = PALETTE.index(colour_for(name))
        for step in range(len(PALETTE)):
            colour = PALETTE[(start + step) % len(PALETTE)]
            if colour not in taken:
                break
        else:
            colour = PALETTE[start]
        taken.add(colour)
        found[name] = colour
    return found


def _axis(nanos: int) -> float:
    # Display only: the figure's axis, never a sum.
    return float(Decimal(nanos) / 10**9)


def _label(name: str) -> str:
    # plotly reads tags (`<b>`, `<br>`) in labels: a name is shown as the text it is.
    if name == OTHERS:
        return OTHERS_LABEL
    return html.escape(shown(name), quote=False) if name else NO_NAME


_AXIS = {"gridcolor": "#eeeeee", "zerolinecolor": "#cccccc", "automargin": True}


def _figure(
    traces: Sequence[Any],
    title: str,
    *,
    height: int = HEIGHT,
    xaxis: Mapping[str, Any] | None = None,
    yaxis: Mapping[str, Any] | None = None,
    empty: str | None = None,
    **extra: Any,
) -> go.Figure:
    """The figure in one constructor call, with costmon's look.

    plotly's `update_layout` and `update_xaxes` cost about 10 ms a figure, a layout given whole
    about 0.5 ms; the code here is fixed, so plotly's validation is skipped too. `empty`: the
    message shown instead of axes when there is nothing to plot.
    """
    layout: dict[str, Any] = {
        "template": go.layout.Template(),  # plotly's default template would add ~8 kB a figure
        "title": {"text": title, "x": 0, "xanchor": "left", "font": {"size": 15}},
        "autosize": True,
        "height": height,
        "margin": {"l": 56, "r": 16, "t": 44, "b": 40},
        "font": {"family": "system-ui, -apple-system, Segoe UI, Roboto, sans-serif", "size": 12},
        "paper_bgcolor": "#ffffff",
        "plot_bgcolor": "#ffffff",
        "legend": {"orientation": "h", "yanchor": "top", "y": -0.15, "x": 0},
        "hoverlabel": {"namelength": -1},
        "xaxis": {**_AXIS, **(xaxis or {})},
        "yaxis": {**_AXIS, **(yaxis or {})},
        **extra,
    }
    if empty is not None:
        layout["annotations"] = [
            {
                "text": empty,
                "showarrow": False,
                "xref": "paper",
                "yref": "paper",
                "x": 0.5,
                "y": 0.5,
                "font": {"size": 14},
            }
        ]
        layout["xaxis"]["visible"] = False
        layout["yaxis"]["visible"] = False
    return go.Figure(data=list(traces), layout=layout, _validate=False)


def _naive(moment: datetime) -> datetime:
    # plotly.js ignores offsets; the buckets already are the tenant's wall-clock times.
    return moment.replace(tzinfo=None)


def spend_by_day(
    rows: Sequence[Mapping[str, Any]],
    group_key: str = "key",
    *,
    buckets: Sequence[datetime] | None = None,
    interval: str = "day",
    group_label: str = "provider",
    previous: tuple[Sequence[datetime], Sequence[int]] | None = None,
) -> go.Figure:
    """Stacked bars of spend per bucket, one trace per value of `group_key`.

    rows: {"bucket": datetime, group_key: str, "cost_nanos": int}. `buckets` lists every bucket
    of the range (empty ones included) in order; without it, the buckets found in rows.
    """
    if buckets is None:
        buckets = sorted({r["bucket"] for r in rows})
    per_key: dict[str, dict[datetime, int]] = {}
    for row in rows:
        cells = per_key.setdefault(str(row[group_key] or ""), {})
        cells[row["bucket"]] = cells.get(row["bucket"], 0) + int(row["cost_nanos"])
    # The biggest spender at the bottom of each stack, where it is easiest to read.
    # ... and everything else, summed, at the top.
    order = sorted(per_key, key=lambda k: (k == OTHERS, -sum(per_key[k].values()), k))
    x = [_naive(b) for b in buckets]
    colours = colours_for(order)
    traces = []
    for key in order:
        values = [per_key[key].get(b, 0) for b in buckets]
        traces.append(
            go.Bar(
                _validate=False,
                name=_label(key),
                x=x,
                y=[_axis(v) for v in values],
                customdata=[format_money(v) for v in values],
                marker_color=colours[key],
                hovertemplate="%{fullData.name}: %{customdata}<extra></extra>",
            )
        )
    if previous is not None:
        # The previous period's total, bucket by bucket, drawn over the same x positions.
        then, values = previous[0][: len(x)], list(previous[1][: len(x)])
        when = "%H:%M %b %d" if interval == "hour" else "%b %d"
        traces.append(
            go.Scatter(
                _validate=False,
                name="Previous period",
                x=x[: len(values)],
                y=[_axis(v) for v in values],
                customdata=[
                    [format_money(v), f"{b:{when}}"] for v, b in zip(values, then, strict=True)
                ],
                mode="lines",
                line={"color": PREVIOUS_COLOUR, "width": 2, "dash": "dot"},
                hovertemplate="Previous period (%{customdata[1]}): %{customdata[0]}<extra></extra>",
            )
        )
    per = "hour" if interval == "hour" else "day"
    return _figure(
        traces,
        f"Spend per {per} by {html.escape(group_label, quote=False)}",
        barmode="stack",
        hovermode="x unified",
        bargap=0.15,
        yaxis={"tickprefix": "$", "rangemode": "tozero"},
        xaxis={"tickformat": "%H:%M\n%b %d" if interval == "hour" else "%b %d"},
        empty=None if order or previous is not None else "No spend in this period",
    )


def _breakdown_bars(
    rows: Sequence[Mapping[str, Any]], title: str, *, coloured: bool, empty: str
) -> go.Figure:
    # Largest at the top: horizontal bars list from the bottom up.
    shown = list(reversed(rows))
    names = [_label(str(r["key"])) for r in shown]
    colours = colours_for([str(r["key"]) for r in rows])
    bars = go.Bar(
        _validate=False,
        orientation="h",
        x=[_axis(int(r["cost_nanos"])) for r in shown],
        y=names,
        customdata=[[format_money(int(r["cost_nanos"])), r.get("calls", 0)] for r in shown],
        marker_color=[colours[str(r["key"])] for r in shown] if coloured else ACCENT,
        hovertemplate="%{y}: %{customdata[0]} (%{customdata[1]} calls)<extra></extra>",
        name="Spend",
    )
    return _figure(
        [bars],
        title,
        height=max(HEIGHT, 60 + 28 * len(shown)),
        showlegend=False,
        xaxis={"tickprefix": "$", "rangemode": "tozero"},
        yaxis={"type": "category"},
        empty=None if rows else empty,
    )


def top_end_users(rows: Sequence[Mapping[str, Any]]) -> go.Figure:
    """rows: {"key", "cost_nanos", "calls"}, most expensive first."""
    return _breakdown_bars(rows, "Top end users", coloured=False, empty="No end users yet")


def spend_by_operation(rows: Sequence[Mapping[str, Any]]) -> go.Figure:
    """rows: {"key", "cost_nanos", "calls"}, most expensive first."""
    return _breakdown_bars(rows, "Spend by operation", coloured=True, empty="No operations yet")


def spend_by_model(rows: Sequence[Mapping[str, Any]]) -> go.Figure:
    """rows: {"key", "cost_nanos", "calls"}, most expensive first."""
    return _breakdown_bars(rows, "Spend by model", coloured=True, empty="No models yet")


def cache_hits(hits: int, misses: int) -> go.Figure:
    pie = go.Pie(
        _validate=False,
        labels=["Cache hits", "Misses"],
        values=[hits, misses],
        hole=0.55,
        marker={"colors": [HIT_COLOUR, MISS_COLOUR]},
        sort=False,
        textinfo="percent",
        hovertemplate="%{label}: %{value} calls<extra></extra>",
    )
    return _figure(
        [pie], "Cache hits vs misses", empty=None if hits + misses else "No calls in this period"
    )


def heatmap(hour_weekday_matrix: Sequence[Sequence[int]]) -> go.Figure:
    """Spend by weekday (rows, Monday first) and hour of day (columns 0-23), in nano-dollars."""
    matrix = [list(row) for row in hour_weekday_matrix]
    cells = go.Heatmap(
        _validate=False,
        z=[[_axis(v) for v in row] for row in matrix],
        x=[f"{h:02d}" for h in range(24)],
        y=list(WEEKDAYS),
        customdata=[[format_money(v) for v in row] for row in matrix],
        colorscale=[list(stop) for stop in HEAT_SCALE],
        zmin=0,
        hovertemplate="%{y} %{x}:00: %{customdata}<extra></extra>",
        colorbar={"tickprefix": "$", "thickness": 10},
        xgap=1,
        ygap=1,
    )
    return _figure(
        [cells],
        "Spend by hour of day and weekday",
        yaxis={"autorange": "reversed", "type": "category"},
        xaxis={"type": "category", "title": {"text": "hour"}},
        empty=None if any(any(row) for row in matrix) else "No spend in this period",
    )


def budget_burndown(
    *,
    name: str,
    limit_nanos: int,
    days: Sequence[date],
    daily_nanos: Sequence[int],
    period_end: date | None = None,
    projected_nanos: int | None = None,
) -> go.Figure:
    """What is left of a budget at the end of each day so far, and where the current pace leads.

    days/daily_nanos: the window's days up to today and what each spent. The projection runs
    from today's remainder to `limit - projected` on the period's last day; below zero is over.
    """
    remaining = []
    left = limit_nanos
    for spent in daily_nanos:
        left -= int(spent)
        remaining.append(left)
    traces = [
        go.Scatter(
            _validate=False,
            name="Remaining",
            x=list(days),
            y=[_axis(v) for v in remaining],
            customdata=[format_money(v) for v in remaining],
            mode="lines+markers",
            line={"color": ACCENT, "width": 3},
            hovertemplate="%{x|%b %d}: %{customdata} left<extra></extra>",
        )
    ]
    if projected_nanos is not None and period_end is not None and days:
        end_left = limit_nanos - projected_nanos
        traces.append(
            go.Scatter(
                _validate=False,
                name="Projected",
                x=[days[-1], period_end],
                y=[_axis(remaining[-1]), _axis(end_left)],
                customdata=[format_money(remaining[-1]), format_money(end_left)],
                mode="lines",
                # Never the remaining line's colour: two series of a chart never share one.
                line={"color": LIMIT_COLOUR if end_left < 0 else PROJECTED_COLOUR, "dash": "dash"},
                hovertemplate="%{x|%b %d}: %{customdata} left (projected)<extra></extra>",
            )
        )
    zero = {"color": LIMIT_COLOUR, "width": 1, "dash": "dot"}  # below it, the budget is over
    return _figure(
        traces,
        f"{name}: {format_money(limit_nanos)} budget",
        shapes=[
            {"type": "line", "xref": "paper", "x0": 0, "x1": 1, "y0": 0, "y1": 0, "line": zero}
        ],
        yaxis={"tickprefix": "$"},
        xaxis={"tickformat": "%b %d"},
    )


BAND_FILL = "rgba(127, 127, 127, 0.18)"


def add_anomaly_band(fig: go.Figure, rows: Sequence[Mapping[str, Any]]) -> go.Figure:
    """The usual range of each hour (learned from the same hour of the last weeks) as a grey
    band behind the bars, and a ring on each hour outside it.

    rows: {"bucket": local datetime, "value": int, "lower": int | None, "upper": int | None,
    "flag": "high" | "low" | ""}; lower/upper None where there is too little history.
    """
    if not any(r["upper"] is not None for r in rows):
        return fig
    x = [_naive(r["bucket"]) for r in rows]

    def axis(values: Sequence[int | None]) -> list[float | None]:
        return [_axis(v) if v is not None else None for v in values]

    usual = [
        f"{format_money(r['lower'])} to {format_money(r['upper'])}"
        if r["upper"] is not None
        else ""
        for r in rows
    ]
    outside = [r for r in rows if r["flag"]]
    traces = [
        go.Scatter(
            _validate=False,
            name="Usual range (low)",
            x=x,
            y=axis([r["lower"] for r in rows]),
            mode="lines",
            line={"width": 0},
            hoverinfo="skip",
            showlegend=False,
        ),
        go.Scatter(
            _validate=False,
            name="Usual range",
            x=x,
            y=axis([r["upper"] for r in rows]),
            mode="lines",
            line={"width": 0},
            fill="tonexty",
            fillcolor=BAND_FILL,
            customdata=usual,
            hovertemplate="usual: %{customdata}<extra></extra>",
        ),
        go.Scatter(
            _validate=False,
            name="Outside the usual range",
            x=[_naive(r["bucket"]) for r in outside],
            y=[_axis(r["value"]) for r in outside],
            mode="markers",
            marker={
                "symbol": "circle-open",
                "size": 12,
                "color": OUTSIDE_COLOUR,
                "line": {"width": 2, "color": OUTSIDE_COLOUR},
            },
            customdata=[
                f"{format_money(r['value'])}, {'above' if r['flag'] == 'high' else 'below'} usual"
                for r in outside
            ],
            hovertemplate="%{customdata}<extra></extra>",
        ),
    ]
    fig.add_traces(traces)
    return fig


def to_div(fig: go.Figure, div_id: str) -> str:
    """The figure as an HTML fragment; plotly.js itself comes from our static files."""
    return str(
        fig.to_html(
            full_html=False,
            include_plotlyjs=False,
            div_id=div_id,
            config=CONFIG,
            default_height=f"{fig.layout.height or HEIGHT}px",
        )
    )


def warm_up() -> None:
    """Build and render one figure of each kind: plotly imports and sets up each trace type on
    first use (about a third of a second), which a web worker should pay at start, not on a
    user's first page."""
    for fig in (
        spend_by_day([]),
        spend_by_model([]),
        cache_hits(1, 1),
        heatmap([[0] * 24] * 7),
        budget_burndown(name="", limit_nanos=0, days=[], daily_nanos=[]),
    ):
        to_div(fig, "warm-up")
