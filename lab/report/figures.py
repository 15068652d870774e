"""Every figure of a report: the probes' (lab.report.plots) and, for bulk points and flow groups, the
flows' (lab.report.flow_plots, docs/architecture.md#flows-and-oracles). report.html and the slides
take their list from here."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from lab.report import flow_plots, plots


def figures_for(payload: Mapping[str, Any]) -> list[str]:
    """The figures this payload has something to show in. A result of bulk flows only leaves the
    probe figures out (they would be empty panels)."""
    flows = flow_plots.flow_figures_for(payload)
    probes_ran = any(p.get("results") for p in payload.get("points", []))
    return (plots.figures_for(payload) if probes_ran or not flows else []) + flows


def figure(name: str) -> Callable[..., Any]:
    """The builder of figure `name`: (payload, style) -> a matplotlib figure."""
    return plots.FIGURES.get(name) or flow_plots.FLOW_FIGURES[name]


def render_plots(payload: Mapping[str, Any]) -> dict[str, str]:
    """Every figure this payload has, as inline SVG keyed by section name.

    matplotlib's warnings (a glyph missing from the font, a legend with no labelled artist) say
    nothing the reader of a report can act on; they would only clutter the command's output.
    """
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {name: plots._svg(figure(name)(payload, plots.REPORT)) for name in figures_for(payload)}
