"""`lab report DIR --slides`: 16:9 PNG + SVG per plot with 20 pt text, and the one-slide story figure."""

from __future__ import annotations

import json
import shutil
import struct
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from lab.cli import main
from lab.report.plots import SLIDE, STORY_TITLES, figures_for, story_figure

SAMPLE = Path(__file__).resolve().parent / "data" / "sample-run"
DPI = 150
WIDTH_PX, HEIGHT_PX = 2000, 1125  # 13.33 x 7.5 in at 150 dpi


def png_header(path: Path) -> tuple[int, int, float | None]:
    """(width, height, dots per inch from the pHYs chunk, None without one) of a PNG file."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    at = 8
    while at < len(data):
        length, kind = struct.unpack(">I4s", data[at : at + 8])
        if kind == b"pHYs":
            per_x, _per_y, unit = struct.unpack(">IIB", data[at + 8 : at + 17])
            return width, height, per_x * 0.0254 if unit == 1 else None
        at += 12 + length
    return width, height, None


def lab(*args: str) -> int:
    """`lab ARGS` in-process: its exit status (main returns on success, exits otherwise)."""
    try:
        main(list(args))
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def _texts(fig) -> list:
    return [t for t in fig.findobj(lambda a: hasattr(a, "get_fontsize") and hasattr(a, "get_text"))
            if t.get_text().strip() and t.get_visible()]


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    target = tmp_path_factory.mktemp("slides") / "run"
    shutil.copytree(SAMPLE, target)
    assert lab("report", str(target), "--slides") == 0
    return target


def test_every_plot_and_the_story_as_png_and_svg(slides, capsys):
    payload = json.loads((slides / "result.json").read_text(encoding="utf-8"))
    names = [*figures_for(payload), "story"]
    files = sorted(p.name for p in (slides / "slides").iterdir())
    assert files == sorted(f"{n}.{ext}" for n in names for ext in ("png", "svg"))
    for name in names:
        width, height, dpi = png_header(slides / "slides" / f"{name}.png")
        assert abs(width - WIDTH_PX) <= 1 and abs(height - HEIGHT_PX) <= 1, (name, width, height)
        assert dpi == pytest.approx(DPI, abs=0.1)
        svg = ET.parse(slides / "slides" / f"{name}.svg").getroot()
        assert svg.tag.endswith("svg")
        _x, _y, w, h = map(float, svg.get("viewBox").split())
        assert w / h == pytest.approx(16 / 9, rel=0.01), name


def test_story_figure_has_the_three_panels_in_large_text():
    payload = json.loads((SAMPLE / "result.json").read_text(encoding="utf-8"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fig = story_figure(payload, SLIDE)
    try:
        panels = [ax for ax in fig.axes if ax.get_visible()]
        assert [ax.get_title() for ax in panels] == list(STORY_TITLES)  # latency CDF, arrivals, loss
        assert all(ax.has_data() for ax in panels)
        cdf, arrivals, loss = panels
        assert {line.get_label() for line in cdf.get_lines()} >= {"TCP", "UDP"}
        assert len(loss.patches) >= 2  # a bar per protocol
        assert fig.get_size_inches()[0] / fig.get_size_inches()[1] == pytest.approx(16 / 9, rel=0.01)
        small = [(t.get_text(), t.get_fontsize()) for t in _texts(fig) if t.get_fontsize() < 20]
        assert small == []
        # the worst point of the sweep: loss=10%, named by its id
        assert fig._suptitle.get_text() == "loss=10%"
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)


def test_story_svg_names_its_panels(slides):
    svg = (slides / "slides" / "story.svg").read_text(encoding="utf-8")
    for title in STORY_TITLES:
        assert f"<!-- {title} -->" in svg  # matplotlib names each text it draws as paths


def test_slides_of_a_missing_run_is_one_line(tmp_path, capsys):
    assert lab("report", str(tmp_path / "nope"), "--slides") == 2
    err = capsys.readouterr().err
    assert err.startswith("lab: error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "nope").exists()
