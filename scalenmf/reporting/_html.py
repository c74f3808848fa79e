"""Building blocks of the self-contained HTML report: page, sections, tables, embedded images."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from matplotlib import rc_context
from matplotlib.figure import Figure

from scalenmf.plot._style import style_context

#: Raster resolution of the embedded figures: sharp on screen, small on disk.
REPORT_DPI = 96

CSS = """
:root { --ink: #1d2733; --muted: #5f6b7a; --line: #dde3ea; --accent: #1f4e79; --bg: #f6f8fa; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.5 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif;
       color: var(--ink); background: var(--bg); }
header { background: var(--accent); color: #fff; padding: 22px 36px 18px; }
header h1 { margin: 0 0 4px; font-size: 24px; font-weight: 600; }
header p { margin: 0; opacity: 0.85; font-size: 13px; }
nav { position: sticky; top: 0; z-index: 2; background: #fff; border-bottom: 1px solid var(--line);
      padding: 8px 36px; font-size: 13px; }
nav a { color: var(--accent); text-decoration: none; margin-right: 18px; white-space: nowrap; }
nav a:hover { text-decoration: underline; }
main { max-width: 1280px; margin: 0 auto; padding: 12px 36px 48px; }
section { background: #fff; border: 1px solid var(--line); border-radius: 8px;
          padding: 8px 24px 18px; margin: 18px 0; }
section h2 { font-size: 19px; margin: 12px 0 6px; color: var(--accent); }
section h3 { font-size: 15px; margin: 16px 0 6px; }
p.note { color: var(--muted); font-size: 13px; margin: 4px 0 10px; }
.notice { background: #fff7e0; border: 1px solid #f0d98c; border-radius: 6px;
          padding: 8px 14px; margin: 14px 0 0; font-size: 14px; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin: 12px 0 4px; }
.card { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 8px 16px;
        min-width: 130px; }
.card b { display: block; font-size: 19px; }
.card span { color: var(--muted); font-size: 12px; text-transform: uppercase;
             letter-spacing: 0.04em; }
figure { margin: 12px 0; }
figure img { max-width: 100%; height: auto; display: block; }
figcaption { color: var(--muted); font-size: 13px; margin-top: 4px; }
table { border-collapse: collapse; font-size: 13px; margin: 8px 0 12px; }
th, td { border-bottom: 1px solid var(--line); padding: 4px 12px 4px 0; text-align: left;
         vertical-align: top; }
th { color: var(--muted); font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.kept td { font-weight: 600; }
.good { color: #1e7b34; font-weight: 600; }
.weak { color: #a15c00; }
code, .mono { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace;
              font-size: 12px; }
details summary { cursor: pointer; color: var(--accent); font-size: 13px; }
footer { color: var(--muted); font-size: 12px; text-align: center; padding: 0 0 24px; }
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: Any, digits: int = 4) -> str:
    """Numbers for tables: thousands separators for ints, ``digits`` significant for floats."""
    if isinstance(value, bool) or value is None:
        return "–" if value is None else ("yes" if value else "no")
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value != value:
            return "–"
        return f"{value:.{digits}g}"
    return str(value)


def figure_to_img(fig: Figure, alt: str, *, dpi: float = REPORT_DPI) -> str:
    """An ``<img>`` with the figure embedded as a base64 PNG (the report needs no other file).

    The figure is laid out once and drawn once. ``savefig`` with a layout engine or a
    tight bounding box draws twice and lays out on each draw (each layout measures every
    label several times), which made drawing most of a report's time; the plots' own
    layouts already fit their content to the figure, so the tight crop adds nothing.
    """
    engine = fig.get_layout_engine()
    buf = io.BytesIO()
    with style_context(), rc_context({"savefig.bbox": "standard"}):
        if engine is not None:
            engine.execute(fig)
            fig.set_layout_engine(None)  # keep the positions just computed
        fig.savefig(buf, format="png", dpi=dpi)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{esc(alt)}">'


def figure_block(fig: Figure, caption: str, *, dpi: float = REPORT_DPI) -> str:
    img = figure_to_img(fig, caption, dpi=dpi)
    return f"<figure>{img}<figcaption>{esc(caption)}</figcaption></figure>"


def table(
    header: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    numeric: Sequence[int] = (),
    row_classes: Sequence[str] | None = None,
    raw: Sequence[int] = (),
) -> str:
    """An HTML table; columns in ``numeric`` are right-aligned, in ``raw`` not escaped."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        cells = []
        for j, cell in enumerate(row):
            text = str(cell) if j in raw else esc(fmt(cell))
            cls = ' class="num"' if j in numeric else ""
            cells.append(f"<td{cls}>{text}</td>")
        cls = f' class="{row_classes[i]}"' if row_classes and row_classes[i] else ""
        body.append(f"<tr{cls}>{''.join(cells)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


@dataclass
class Section:
    """One section of the report: an anchor id, a heading and its HTML body."""

    id: str
    title: str
    parts: list[str] = field(default_factory=list)

    def add(self, *html_parts: str) -> Section:
        self.parts.extend(html_parts)
        return self

    def note(self, text: str) -> Section:
        return self.add(f'<p class="note">{esc(text)}</p>')

    def render(self) -> str:
        return (
            f'<section id="{esc(self.id)}"><h2>{esc(self.title)}</h2>{"".join(self.parts)}'
            "</section>"
        )


def page(title: str, subtitle: str, intro: str, sections: Sequence[Section], footer: str) -> str:
    """The whole document: inline CSS, no scripts, no external resources."""
    nav = "".join(f'<a href="#{esc(s.id)}">{esc(s.title)}</a>' for s in sections)
    body = "".join(s.render() for s in sections)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<link rel="icon" href="data:,">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
        f"<header><h1>{esc(title)}</h1><p>{esc(subtitle)}</p></header>"
        f"<nav>{nav}</nav><main>{intro}{body}</main>"
        f"<footer>{esc(footer)}</footer></body></html>\n"
    )
