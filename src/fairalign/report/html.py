"""A self-contained HTML page: inline CSS, figures as base64 PNG, no JavaScript, nothing fetched.

`Page` collects sections (each listed in the contents at the top) and renders one string. Every
piece of text from a run (config values, samples, JSON files) goes through `esc`. A section whose
builder raises shows a one-line note instead, so an odd file never costs the whole report.
"""
from __future__ import annotations

import html
import json
import math
import os
import time
from collections.abc import Callable

from fairalign.report.data import finite
from fairalign.report.plots import to_base64

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:#1d2330;
 background:#f6f7f9;margin:0}
main{max-width:1080px;margin:0 auto;padding:18px 28px 60px;background:#fff;box-shadow:0 0 0 1px #e3e6ea}
h1{font-size:22px;margin:8px 0 2px}h2{font-size:18px;margin:30px 0 8px;padding-top:8px;border-top:2px solid #e3e6ea}
h3{font-size:15px;margin:18px 0 6px}
.sub{color:#5b6472;margin:0 0 10px}
nav{font-size:13px;margin:10px 0 4px;padding:8px 10px;background:#f0f3f7;border-radius:6px}
nav a{margin-right:14px;color:#1f5fb4;text-decoration:none;white-space:nowrap}
.facts{display:grid;grid-template-columns:repeat(auto-fill,minmax(190px,1fr));gap:8px;margin:12px 0}
.fact{background:#f0f3f7;border-radius:6px;padding:6px 10px}
.fact b{display:block;font-size:12px;color:#5b6472;font-weight:600}
.fact span{font-size:16px;font-variant-numeric:tabular-nums;overflow-wrap:anywhere}
table{border-collapse:collapse;margin:6px 0 12px;font-size:13px;font-variant-numeric:tabular-nums}
th,td{border:1px solid #d9dde3;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#eef1f5}tr:nth-child(even) td{background:#fafbfc}
td.num{text-align:right;white-space:nowrap}
tr.sig td{background:#fff4c2 !important;font-weight:600}
td.text{white-space:pre-wrap;overflow-wrap:anywhere;max-width:520px}
img{max-width:100%;height:auto;display:block;margin:6px 0}
.note{color:#6b5b00;background:#fffbe6;border-left:3px solid #e0c200;padding:3px 9px;margin:6px 0;font-size:13px}
.method{white-space:pre-wrap;background:#f6f7f9;padding:8px 12px;border-radius:6px}
details{margin:6px 0 12px}summary{cursor:pointer;color:#1f5fb4}
pre{background:#f6f7f9;padding:8px 12px;overflow:auto;font-size:12px;max-height:600px}
code{font-size:12px}
footer{margin-top:40px;color:#8a93a0;font-size:12px}
"""


def esc(v) -> str:
    return html.escape(str(v), quote=True)


def fmt(v, digits: int = 4) -> str:
    """A value for a table cell (not yet escaped): numbers to `digits` significant digits, None as —."""
    if v is None:
        return "—"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            return "—" if math.isnan(v) else ("inf" if v > 0 else "-inf")
        if 10 ** digits <= abs(v) < 1e15:
            return f"{v:.0f}"
        return f"{v:.{digits}g}"  # 0.1235, 0.0003, 1e-05, 12.35
    if isinstance(v, (list, tuple)):
        shown = ", ".join(fmt(x, digits) for x in v[:20])
        return f"[{shown}{', …' if len(v) > 20 else ''}]"
    if isinstance(v, dict):
        return truncate(json.dumps(v, default=str), 200)
    return str(v)


def fmt_interval(ci, digits: int = 4) -> str:
    """"[lo, hi]" of a (lo, hi) pair, or — when there is none."""
    return f"[{fmt(ci[0], digits)}, {fmt(ci[1], digits)}]" if ci else "—"


def truncate(text: str, n: int) -> str:
    text = str(text)
    return text if len(text) <= n else text[:n] + f"… [{len(text) - n} more characters]"


def flatten(d: dict, prefix: str = "") -> dict:
    """Nested dicts to dotted keys (lists and scalars are leaves)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def table(headers: list[str], rows: list[list], num_cols: set[int] | None = None,
          row_classes: list[str] | None = None, text_cols: set[int] | None = None) -> str:
    """An HTML table; cells are values (formatted with `fmt`) or ("raw html",) 1-tuples. Columns in
    `num_cols` are right-aligned (None: every cell holding a number), `text_cols` wrap long text."""
    text_cols = text_cols or set()
    out = ["<table><tr>", *(f"<th>{esc(h)}</th>" for h in headers), "</tr>"]
    for i, row in enumerate(rows):
        cls = row_classes[i] if row_classes and row_classes[i] else ""
        out.append(f'<tr class="{cls}">' if cls else "<tr>")
        for j, cell in enumerate(row):
            numeric = finite(cell) if num_cols is None else j in num_cols
            c = "num" if numeric else ("text" if j in text_cols else "")
            body = cell[0] if isinstance(cell, tuple) else esc(fmt(cell))
            out.append(f'<td class="{c}">{body}</td>' if c else f"<td>{body}</td>")
        out.append("</tr>")
    out.append("</table>")
    return "".join(out)


def json_table(obj, max_rows: int = 200) -> str:
    """A JSON object as a key/value table (nested keys dotted; `X_before`/`X_after` pairs side by side)."""
    if not isinstance(obj, dict):
        return f"<pre>{esc(truncate(json.dumps(obj, indent=1, default=str), 4000))}</pre>"
    flat = flatten(obj)
    pairs, rest = [], []
    for k, v in flat.items():
        if "_before" in k and k.replace("_before", "_after") in flat:
            a = flat[k.replace("_before", "_after")]
            change = a - v if finite(a) and finite(v) else None
            pairs.append([k.replace("_before", ""), v, a, change])
        elif not ("_after" in k and k.replace("_after", "_before") in flat):
            rest.append([k, v])
    out = ""
    if pairs:
        out += table(["", "before", "after", "change"], pairs, num_cols={1, 2, 3})
    if rest:
        note = f'<p class="note">{len(rest) - max_rows} more keys not shown</p>' if len(rest) > max_rows else ""
        out += table(["key", "value"], rest[:max_rows], text_cols={1}) + note
    return out


class Page:
    def __init__(self, title: str, subtitle: str = ""):
        self.title, self.subtitle = title, subtitle
        self.sections: list[tuple[str, str, list[str]]] = []  # (anchor, heading, html parts)
        self.head: list[str] = []

    def add(self, html_text: str) -> None:
        (self.sections[-1][2] if self.sections else self.head).append(html_text)

    def section(self, heading: str, build: Callable[[], None]) -> None:
        """A section (in the contents) filled by `build()`, which calls the add/figure/note methods."""
        anchor = "s" + str(len(self.sections) + 1)
        self.sections.append((anchor, heading, []))
        try:
            build()
        except Exception as e:  # one odd file or value must not cost the rest of the report
            if os.environ.get("FAIRALIGN_DEBUG"):
                raise
            self.note(f"This section could not be drawn: {type(e).__name__}: {truncate(str(e), 300)}")

    def note(self, text: str) -> None:
        self.add(f'<p class="note">{esc(text)}</p>')

    def para(self, text: str, cls: str = "") -> None:
        self.add(f'<p class="{cls}">{esc(text)}</p>' if cls else f"<p>{esc(text)}</p>")

    def figure(self, fig, alt: str, missing: str) -> bool:
        """Embed `fig` as PNG, or write the one-line note `missing` when it is None."""
        if fig is None:
            self.note(missing)
            return False
        self.add(f'<img alt="{esc(alt)}" src="data:image/png;base64,{to_base64(fig)}">')
        return True

    def facts(self, items: list[tuple[str, object]]) -> None:
        cells = "".join(f'<div class="fact"><b>{esc(k)}</b><span>{esc(fmt(v))}</span></div>' for k, v in items)
        self.add(f'<div class="facts">{cells}</div>')

    def render(self) -> str:
        nav = "".join(f'<a href="#{a}">{esc(h)}</a>' for a, h, _ in self.sections)
        body = "".join(f'<section id="{a}"><h2>{esc(h)}</h2>{"".join(parts)}</section>'
                       for a, h, parts in self.sections)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
                f"<title>{esc(self.title)}</title><style>{CSS}</style></head><body><main>"
                f"<h1>{esc(self.title)}</h1><p class=\"sub\">{esc(self.subtitle)}</p>"
                f"<nav>{nav}</nav>{''.join(self.head)}{body}"
                f"<footer>written by fairalign report on {esc(stamp)}; one file: figures and styles "
                f"are embedded, nothing is fetched.</footer></main></body></html>\n")
