"""Plotly figures built from the analytics frames, with one colour per status everywhere.

The dashboard and the notebooks use these figures as they are, so a status has
the same colour in every chart, badge and feed.
"""

from __future__ import annotations

import html
from collections.abc import Iterable

import pandas as pd
import plotly.graph_objects as go

from .deliveries import handler_label
from .display import visible
from .models import EventStatus

STATUS_COLORS: dict[str, str] = {
    EventStatus.PENDING.value: "#f2a900",  # amber: waiting
    EventStatus.PROCESSING.value: "#1f77b4",  # blue: in hand
    EventStatus.COMPLETED.value: "#2ca02c",  # green: done
    EventStatus.FAILED.value: "#d62728",  # red: dead letter
    EventStatus.DISCARDED.value: "#7f7f7f",  # grey: set aside by a person
}
SERIES_COLORS = {"published": "#9467bd", "completed": STATUS_COLORS["COMPLETED"], "failed": STATUS_COLORS["FAILED"]}
STATUS_ORDER = list(STATUS_COLORS)


def status_color(status: str | None) -> str:
    return STATUS_COLORS.get(status or "", "#bcbd22")


#: The plotly template of the figures. ``template=None`` leaves the figure to its viewer's theme: the
#: dashboard's live pages pass it, Streamlit styles the charts itself, and validating a template
#: costs about 10 ms per figure, two thirds of building it (measured for the Overview's four).
DEFAULT_TEMPLATE = "plotly_white"


def _layout(
    fig: go.Figure, title: str, x: str | None = None, y: str | None = None, *, template: str | None = DEFAULT_TEMPLATE
) -> go.Figure:
    layout: dict[str, object] = {
        "title": {"text": title},
        "xaxis_title": x,
        "yaxis_title": y,
        "margin": {"l": 40, "r": 20, "t": 50, "b": 40},
        "legend_title_text": "",
        "xaxis_automargin": True,
        "xaxis_hoverformat": "%Y-%m-%d %H:%M:%S.%L",  # times to the millisecond
        "yaxis_automargin": True,
    }
    if template is not None:
        layout["template"] = template
    fig.update_layout(**layout)  # one call: each update validates again
    return fig


def _empty(title: str, message: str = "No events yet", *, template: str | None = DEFAULT_TEMPLATE) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, font={"size": 16, "color": "#7f7f7f"})
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return _layout(fig, title, template=template)


def status_figure(
    counts: pd.DataFrame, title: str = "Events by status", *, template: str | None = DEFAULT_TEMPLATE
) -> go.Figure:
    """A donut of ``status_counts``."""
    data = counts[counts["count"] > 0]
    if data.empty:
        return _empty(title, template=template)
    fig = go.Figure(
        go.Pie(
            labels=data["status"],
            values=data["count"],
            hole=0.55,
            sort=False,
            marker={"colors": [status_color(s) for s in data["status"]]},
            # Numbers inside the slices, names in the legend: labels outside a donut are cut
            # off at the chart's edge when a slice is thin.
            textinfo="value",
            textposition="inside",
            insidetextorientation="horizontal",
            automargin=True,
            hovertemplate="%{label}: %{value:,} (%{percent})<extra></extra>",
        )
    )
    fig.update_layout(showlegend=True)
    return _layout(fig, title, template=template)


def throughput_figure(
    frame: pd.DataFrame, title: str = "Events per minute", *, template: str | None = DEFAULT_TEMPLATE
) -> go.Figure:
    """Grouped bars of published, completed and failed per bucket (``throughput``)."""
    if frame.empty:
        return _empty(title, template=template)
    fig = go.Figure()
    for series in ("published", "completed", "failed"):
        fig.add_trace(go.Bar(x=frame["bucket"], y=frame[series], name=series, marker_color=SERIES_COLORS[series]))
    fig.update_layout(barmode="group", bargap=0.15)
    return _layout(fig, title, "time (UTC)", "events", template=template)


def retry_histogram_figure(
    frame: pd.DataFrame, title: str = "Retries per event", *, template: str | None = DEFAULT_TEMPLATE
) -> go.Figure:
    """Stacked bars of ``retry_histogram``: events per retry count, by status."""
    if frame.empty:
        return _empty(title, template=template)
    fig = go.Figure()
    for status in [s for s in STATUS_ORDER if s in set(frame["status"])]:
        part = frame[frame["status"] == status]
        fig.add_trace(go.Bar(x=part["retry_count"], y=part["count"], name=status, marker_color=status_color(status)))
    fig.update_layout(barmode="stack")
    fig.update_xaxes(dtick=1)
    return _layout(fig, title, "retry count", "events", template=template)


def _short_labels(texts: Iterable[str], width: int) -> list[str]:
    """Axis labels at most about ``width`` long and all different: groups often share a long start
    (the handler and exception), so keep the end too, and number any labels that still collide."""
    labels: list[str] = []
    for text in texts:
        label = text if len(text) <= width else text[: width - 16] + "…" + text[-15:]
        unique, n = label, 1
        while unique in labels:
            n += 1
            unique = f"{label} ({n})"
        labels.append(unique)
    return labels


def error_groups_figure(
    frame: pd.DataFrame, top: int = 10, title: str = "Top error groups", *, template: str | None = DEFAULT_TEMPLATE
) -> go.Figure:
    """Horizontal bars of the largest ``error_summary`` groups, split into FAILED and the rest."""
    if frame.empty:
        return _empty(title, "No errors", template=template)
    data = frame.head(top).iloc[::-1]
    labels = _short_labels(data["error_group"], 48)
    fig = go.Figure(
        [
            go.Bar(
                y=labels,
                x=data["failed"],
                name="FAILED",
                orientation="h",
                marker_color=STATUS_COLORS["FAILED"],
                hovertext=data["error_group"],
            ),
            go.Bar(
                y=labels,
                x=data["events"] - data["failed"],
                name="retried or recovered",
                orientation="h",
                marker_color=STATUS_COLORS["PENDING"],
                hovertext=data["error_group"],
            ),
        ]
    )
    fig.update_layout(barmode="stack")
    fig.update_yaxes(automargin=True)
    return _layout(fig, title, "events", None, template=template)


def latency_figure(stats: pd.DataFrame, title: str = "Latency, created to processed") -> go.Figure:
    """Grouped bars of the p50/p90/p99 seconds per event type (``latency_stats``)."""
    data = stats[stats["events"] > 0]
    if data.empty:
        return _empty(title, "No completed events")
    fig = go.Figure()
    for quantile, color in (("p50", "#2ca02c"), ("p90", "#f2a900"), ("p99", "#d62728")):
        fig.add_trace(
            go.Bar(x=data["event_type"].replace("*", "all types"), y=data[quantile], name=quantile, marker_color=color)
        )
    fig.update_layout(barmode="group")
    return _layout(fig, title, "event type", "seconds")


def handler_latency_figure(
    deliveries: pd.DataFrame,
    title: str = "Latency per handler, commit to acknowledgement",
    *,
    template: str | None = DEFAULT_TEMPLATE,
) -> go.Figure:
    """A box per handler of the seconds from each event's commit to that handler's acknowledgement
    (``analytics.deliveries_frame``'s ``latency_ms``), handlers in name order.

    Handler names come from the database: they are made visible and HTML-escaped here (plotly reads
    ``<b>`` and ``<a href>`` in trace names), so the frame is passed as the read gave it.
    """
    if deliveries.empty:
        return _empty(title, "No deliveries recorded", template=template)
    fig = go.Figure()
    for name in sorted(set(deliveries["handler"])):
        seconds = deliveries.loc[deliveries["handler"] == name, "latency_ms"] / 1000
        label = html.escape(visible(handler_label(name)), quote=False)
        fig.add_trace(go.Box(y=seconds, name=label, boxpoints="outliers"))
    fig.update_layout(showlegend=False)
    return _layout(fig, title, "handler", "seconds", template=template)


def timeline_figure(transitions: pd.DataFrame, title: str = "Status timeline") -> go.Figure:
    """One event's status changes over time (a ``transitions_frame`` for one event)."""
    if transitions.empty:
        return _empty(title, "No history")
    data = transitions.sort_values(["at", "id"], kind="stable")
    fig = go.Figure(
        go.Scatter(
            x=data["at"],
            y=data["to_status"],
            mode="lines+markers+text",
            line={"color": "#cccccc", "shape": "hv"},
            marker={"size": 14, "color": [status_color(s) for s in data["to_status"]]},
            text=[f"#{a}" if a else "" for a in data["attempt"]],
            textposition="top center",
            hovertext=[
                f"{a} by {who}" + (f"<br>{e}" if e else "")
                for a, who, e in zip(data["to_status"], data["actor"], data["error_message"], strict=True)
            ],
        )
    )
    fig.update_yaxes(categoryorder="array", categoryarray=STATUS_ORDER)
    return _layout(fig, title, "time (UTC)", "status")


def status_flow_figure(
    transitions: pd.DataFrame, bucket: str = "10s", title: str = "Status changes over time"
) -> go.Figure:
    """Stacked bars of status changes per time bucket, coloured by the status entered (Live page)."""
    if transitions.empty:
        return _empty(title, "No status changes in this window")
    data = transitions.assign(bucket=transitions["at"].dt.floor(bucket))
    counts = data.groupby(["bucket", "to_status"]).size().reset_index(name="count")
    fig = go.Figure()
    for status in [s for s in STATUS_ORDER if s in set(counts["to_status"])]:
        part = counts[counts["to_status"] == status]
        fig.add_trace(go.Bar(x=part["bucket"], y=part["count"], name=status, marker_color=status_color(status)))
    fig.update_layout(barmode="stack")
    return _layout(fig, title, "time (UTC)", "status changes")


def failure_breakdown_figure(frame: pd.DataFrame, title: str | None = None) -> go.Figure:
    """Stacked bars of a ``failure_breakdown``: FAILED, retried but not failed, and delivered first time."""
    by = frame.columns[0] if len(frame.columns) else "event_type"
    title = title or f"Failures by {by.replace('_', ' ')}"
    fig = go.Figure()
    if frame.empty:
        fig.add_annotation(text="No events yet", showarrow=False, font={"size": 16, "color": "#7f7f7f"})
        fig.update_xaxes(visible=False)
        fig.update_yaxes(visible=False)
    else:
        # An event can be retried and then fail: count it once, as FAILED.
        retried_only = (frame["retried"] - frame["failed"]).clip(lower=0)
        clean = (frame["events"] - frame["failed"] - retried_only).clip(lower=0)
        for name, values, color in (
            ("FAILED", frame["failed"], STATUS_COLORS["FAILED"]),
            ("retried, not failed", retried_only, STATUS_COLORS["PENDING"]),
            ("no retry", clean, STATUS_COLORS["COMPLETED"]),
        ):
            fig.add_trace(go.Bar(x=frame[by], y=values, name=name, marker_color=color))
        fig.update_layout(barmode="stack")
    fig.update_layout(
        title={"text": title},
        xaxis_title=by.replace("_", " "),
        yaxis_title="events",
        template="plotly_white",
        margin={"l": 40, "r": 20, "t": 50, "b": 40},
        legend_title_text="",
    )
    fig.update_xaxes(automargin=True, hoverformat="%Y-%m-%d %H:%M:%S.%L")  # times to the millisecond
    fig.update_yaxes(automargin=True)
    return fig
