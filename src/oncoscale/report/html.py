"""Assemble a self-contained HTML report (images embedded as data URIs, no external assets).

A `Report` is a list of sections; each section holds paragraphs, tables (pandas DataFrames)
and figures (matplotlib Figures or PNG bytes). `Report.write(path)` renders it atomically.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from oncoscale._io import atomic_write_text

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;
color:#222;line-height:1.45;padding:0 1em}
h1{border-bottom:2px solid #8b1e3f;padding-bottom:.2em}h2{color:#8b1e3f;margin-top:2em}
table{border-collapse:collapse;margin:1em 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}th{background:#f3e8ec}
td:first-child,th:first-child{text-align:left}
figure{margin:1em 0}figcaption{font-size:.9em;color:#555}
img{max-width:100%;border:1px solid #eee}.kv td{text-align:left}
.note{background:#fff8e1;border-left:4px solid #f0b400;padding:.5em 1em}
footer{margin-top:3em;font-size:.8em;color:#777}
"""


def figure_to_data_uri(fig: Any, *, dpi: int = 110) -> str:
    """Render a matplotlib Figure (or PNG bytes) to a ``data:image/png;base64,...`` URI."""
    if isinstance(fig, bytes | bytearray):
        png = bytes(fig)
    else:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
        png = buf.getvalue()
        try:
            import matplotlib.pyplot as plt

            plt.close(fig)
        except Exception:  # pragma: no cover - closing is best effort
            pass
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


@dataclass
class _Section:
    title: str
    parts: list[str] = field(default_factory=list)


class Report:
    """An HTML report built section by section.

    Example::

        r = Report("ANS on TCGA-BRCA")
        r.section("Summary").text("...").table(df, caption="Top nodes")
        r.write("report.html")
    """

    def __init__(self, title: str, *, subtitle: str | None = None) -> None:
        self.title = title
        self.subtitle = subtitle
        self._sections: list[_Section] = []

    # -- building -----------------------------------------------------------------------
    def section(self, title: str) -> Report:
        """Start a new section; following calls add to it."""
        self._sections.append(_Section(title))
        return self

    def _current(self) -> _Section:
        if not self._sections:
            self.section("")
        return self._sections[-1]

    def text(self, paragraph: str, *, note: bool = False) -> Report:
        """Add a paragraph of plain text (escaped)."""
        cls = ' class="note"' if note else ""
        self._current().parts.append(f"<p{cls}>{html.escape(paragraph)}</p>")
        return self

    def html(self, fragment: str) -> Report:
        """Add a trusted HTML fragment as is (callers escape their own data)."""
        self._current().parts.append(fragment)
        return self

    def link(self, href: str, label: str) -> Report:
        """Add a paragraph holding one link."""
        self._current().parts.append(
            f'<p><a href="{html.escape(href, quote=True)}">{html.escape(label)}</a></p>'
        )
        return self

    def key_values(self, items: dict[str, Any]) -> Report:
        """Add a two-column table of settings or facts."""
        rows = "".join(
            f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
            for k, v in items.items()
        )
        self._current().parts.append(f'<table class="kv">{rows}</table>')
        return self

    def table(self, df: pd.DataFrame, *, caption: str | None = None, float_format: str = "{:.4g}",
              index: bool = True, max_rows: int = 50) -> Report:
        """Add a DataFrame as an HTML table (at most ``max_rows`` rows)."""
        shown = df.head(max_rows)
        table_html = shown.to_html(
            index=index, border=0, escape=True,
            float_format=lambda v: float_format.format(v),
        )
        cap = f"<p><b>{html.escape(caption)}</b></p>" if caption else ""
        more = (f"<p><i>{len(df) - max_rows} more rows in the CSV.</i></p>"
                if len(df) > max_rows else "")
        self._current().parts.append(cap + table_html + more)
        return self

    def figure(self, fig: Any, *, caption: str | None = None, alt: str = "figure") -> Report:
        """Add a matplotlib Figure (or PNG bytes), embedded as a data URI."""
        uri = figure_to_data_uri(fig)
        cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
        self._current().parts.append(
            f'<figure><img alt="{html.escape(alt, quote=True)}" src="{uri}">{cap}</figure>'
        )
        return self

    # -- output -------------------------------------------------------------------------
    def render(self) -> str:
        """Return the whole report as one HTML string."""
        now = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        body = [f"<h1>{html.escape(self.title)}</h1>"]
        if self.subtitle:
            body.append(f"<p>{html.escape(self.subtitle)}</p>")
        for s in self._sections:
            if s.title:
                body.append(f"<h2>{html.escape(s.title)}</h2>")
            body.extend(s.parts)
        from oncoscale import __version__

        body.append(f"<footer>Generated by oncoscale {__version__} on {now}.</footer>")
        return (
            "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>{html.escape(self.title)}</title><style>{_CSS}</style></head><body>"
            + "\n".join(body) + "</body></html>"
        )

    def write(self, path: str | Path) -> Path:
        """Write the report atomically to ``path`` and return it."""
        return atomic_write_text(path, self.render())
