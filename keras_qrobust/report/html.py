"""The report as one self-contained HTML page: the lead, the plots as PNG data URIs, the tables."""

from __future__ import annotations

import base64
import html
from typing import Optional

from .markdown import body_markdown, lead_markdown

__all__ = ["to_html", "markdown_to_html"]


def to_html(report, figures: Optional[dict] = None) -> str:
    """One self-contained page: tables, provenance, warnings and the plots as data URIs
    (``figures``: the output of ``report.figures()``, when already drawn)."""
    sections = []
    for title, data in (report.figures() if figures is None else figures).items():
        uri = "data:image/png;base64," + base64.b64encode(data).decode()
        sections.append(f'<figure><img alt="{html.escape(title)}" src="{uri}"><figcaption>{html.escape(title)}'
                        "</figcaption></figure>")
    lead = markdown_to_html(lead_markdown(report))
    body = markdown_to_html(body_markdown(report))
    wrapped = f"<div id='decision'>{lead}</div>" if any(s.get("lead") for s in report.sections) else lead
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>keras_qrobust robustness report</title>"
            "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:3px 8px}figure{display:inline-block;margin:8px}"
            "#decision{background:#f4f8fb;border:1px solid #9bc;padding:4px 14px}</style>"
            f"</head><body>{wrapped}<h2>Plots</h2>{''.join(sections)}{body}</body></html>\n")


def _inline(text: str) -> str:
    """Escaped text with Markdown's ``**bold**`` and ```code``` spans as HTML."""
    import re

    escaped = html.escape(text)
    escaped = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", escaped)
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)


def markdown_to_html(markdown: str) -> str:
    """The report's own Markdown (headings, tables, bullets, paragraphs; bold and code spans) as HTML."""
    out, table = [], []

    def flush():
        if table:
            rows = [r for r in table if not set(r.replace("|", "").strip()) <= {"-"}]
            cells = [[_inline(c.strip()) for c in r.strip().strip("|").split("|")] for r in rows]
            head = "".join(f"<th>{c}</th>" for c in cells[0])
            body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in cells[1:])
            out.append(f"<table><tr>{head}</tr>{body}</table>")
            table.clear()

    for line in markdown.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        flush()
        if line.startswith("## "):
            out.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line.startswith("# "):
            out.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.startswith("- "):
            out.append(f"<p>• {_inline(line[2:])}</p>")
        elif line.strip():
            out.append(f"<p>{_inline(line)}</p>")
    flush()
    return "\n".join(out)
