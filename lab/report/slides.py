"""Projector-ready figures: every report plot as a 16:9 PNG and SVG with 20 pt text, plus one "story"
figure (latency CDF, arrivals, loss side by side) for a single slide. `lab report DIR --slides`.

Files go to DIR/slides/NAME.png and NAME.svg; the story is `story.png` / `story.svg`. Each is written
to a temporary name first and renamed, as the reports are (lab.files.write_atomic), so a Ctrl-C
never leaves half a file.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lab.errors import LabError
from lab.i18n import _

SLIDES_DIR = "slides"
DPI = 150  # 13.33 x 7.5 in at 150 dpi: 2000 x 1125 px, sharp on a 1080p projector
STORY = "story"


def write_slides(directory: Path, payload: Mapping[str, Any]) -> list[Path]:
    """Write DIR/slides/*.png and *.svg for one result payload; returns the paths written, PNG then
    SVG per figure, the story last."""
    from lab.report.figures import figure, figures_for
    from lab.report.plots import SLIDE, _pyplot, story_figure

    target = Path(directory) / SLIDES_DIR
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        message = _("{path}: cannot create the slides folder ({reason})")
        raise LabError(message.format(path=target, reason=exc.strerror or exc)) from None
    plt = _pyplot(SLIDE)
    written: list[Path] = []
    builders = [(name, figure(name)) for name in figures_for(payload)] + [(STORY, story_figure)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # see lab.report.figures.render_plots
        for name, build in builders:
            fig = build(payload, SLIDE)
            try:
                for ext in ("png", "svg"):
                    path = target / f"{name}.{ext}"
                    _save(fig, path, ext)
                    written.append(path)
            finally:
                plt.close(fig)
    return written


def _save(fig: Any, path: Path, ext: str) -> None:
    # The whole 16:9 canvas (no tight bounding box), so every slide has the same size.
    from lab.files import write_atomic

    buf = io.BytesIO()
    fig.savefig(buf, format=ext, dpi=DPI, metadata={"Date": None} if ext == "svg" else {})
    write_atomic(path, buf.getvalue())
