"""report.html building blocks: escaping, tables, embedded images."""

from __future__ import annotations

import re
from typing import Any

import matplotlib.pyplot as plt

from .common import DPI, format_value, is_number

# report.html: one self-contained page (plots embedded as base64 PNG, no external references)
#
# ``write_html_report`` is called by ``write_report`` (every training run), by protocol runs,
# and by ``phaselm report RUN_DIR``, which rebuilds the page from the run directory's files:
# config.toml, metrics.jsonl, summary.json, protocol.toml, provenance.json and any results
# (RUN_DIR/results.json, RUN_DIR/*/results.json, RUN_DIR/evals/*.json).
#
# A result is a JSON object; every key is optional and the page shows what is there:
#   title | protocol | eval   its name (first one present)
#   command                   the command that produced it
#   tables                    [{"title", "header": [...], "rows": [[...]], "note"}] statistics tables
#   markdown                  Markdown tables (what `phaselm eval` writes), used when "tables" is absent
#   distributions             {metric: {condition: [values]}} per-condition distributions (box plots + table)
#   scatter                   {condition: [[R, U], ...]} points for the R–U scatter
#   files.png                 a plot of its own, embedded (NAME.png beside NAME.json is found too)
#   other scalar fields       (n, alpha, seeds, created, …) listed as details

PAGE_CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1060px;
       padding: 0 1.2em 3em; color: #1d2330; background: #fff; }
h1 { margin: 1em 0 0.2em; } h2 { border-bottom: 1px solid #d8dde6; padding-bottom: 0.2em; margin-top: 2em; }
nav { font-size: 0.92em; margin: 0.6em 0 1em; } nav a { margin-right: 0.9em; color: #2a5db0; }
table { border-collapse: collapse; margin: 0.6em 0 1em; font-size: 0.92em; }
th, td { border: 1px solid #d8dde6; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f2f4f8; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
pre { background: #f6f8fa; border: 1px solid #e1e4e8; padding: 0.7em; overflow-x: auto; font-size: 0.86em; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eef0f4; }
figcaption { font-size: 0.88em; color: #555; }
.note { color: #666; font-size: 0.9em; } .muted { color: #888; }
.tokens { white-space: pre-wrap; font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 0.9em;
          line-height: 1.9; border: 1px solid #e1e4e8; padding: 0.6em; }
.tok { border-bottom: 3px solid transparent; border-radius: 2px; }
.swatch { display: inline-block; width: 0.9em; height: 0.9em; border-radius: 2px; vertical-align: middle;
          margin-right: 0.3em; }
"""


def escape_html(value: Any) -> str:
    """Text content: &, < and > escaped (quotes stay readable, e.g. in a TOML config)."""
    import html

    return html.escape(str(value), quote=False)


def escape_attribute(value: Any) -> str:
    """An attribute value inside double quotes."""
    import html

    return html.escape(str(value), quote=True)


def figure_png(fig) -> bytes:
    """A matplotlib figure as PNG bytes (the figure is closed)."""
    import io

    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=DPI)
    plt.close(fig)
    return buffer.getvalue()


def figure_html(png: bytes, alt: str, caption: str | None = None) -> str:
    """A ``<figure>`` with the PNG embedded as base64, and an optional caption."""
    import base64

    data = base64.b64encode(png).decode("ascii")
    cap = f"<figcaption>{escape_html(caption)}</figcaption>" if caption else ""
    return f'<figure><img alt="{escape_attribute(alt)}" src="data:image/png;base64,{data}">{cap}</figure>'


def html_table(header: list[str], rows: list[list[Any]], caption: str | None = None) -> str:
    """An HTML table; numeric cells are formatted and right-aligned, text is escaped."""
    def cell(tag: str, value: Any) -> str:
        numeric_text = isinstance(value, str) and re.fullmatch(r"[-+]?[\d.]+(e[-+]?\d+)?( ?%)?", value) is not None
        number = is_number(value) or numeric_text
        if isinstance(value, (list, tuple)) and all(is_number(v) or v is None for v in value):
            text = "[" + ", ".join(format_value(v) for v in value) + "]"  # e.g. a confidence interval
        else:
            text = format_value(value) if not isinstance(value, str) else value
        cls = ' class="num"' if number and tag == "td" else ""
        return f"<{tag}{cls}>{escape_html(text)}</{tag}>"

    parts = ["<table>"]
    if caption:
        parts.append(f"<caption>{escape_html(caption)}</caption>")
    parts.append("<tr>" + "".join(cell("th", h) for h in header) + "</tr>")
    parts += ["<tr>" + "".join(cell("td", c) for c in row) + "</tr>" for row in rows]
    parts.append("</table>")
    return "".join(parts)


def _md_cells(line: str) -> list[str]:
    line = line.strip()
    if line.startswith("|"):
        line = line[1:]
    if line.endswith("|") and not line.endswith("\\|"):
        line = line[:-1]
    cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)]
    # Code spans read as plain text in a table cell.
    return [re.sub(r"^(`+) ?(.*?) ?\1$", r"\2", c) for c in cells]


def markdown_to_html(text: str) -> str:
    """The Markdown that `phaselm eval` writes (GFM tables, headings, paragraphs) as HTML."""
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.lstrip().startswith("|"):
            block = []
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                block.append(_md_cells(lines[i]))
                i += 1
            body = [r for r in block[1:] if not all(re.fullmatch(r":?-{1,}:?", c) for c in r if c)]
            out.append(html_table(block[0], body))
            continue
        stripped = line.strip()
        if stripped.startswith("#"):
            out.append(f"<h4>{escape_html(stripped.lstrip('#').strip())}</h4>")
        elif stripped:
            out.append(f"<p>{escape_html(stripped)}</p>")
        i += 1
    return "\n".join(out)
