"""The HTML page of ``qbench report``: one self-contained file (inline CSS, every image embedded
as a ``data:image/png;base64`` URI, no script, no external resource), readable offline and in
any browser. Every string is HTML-escaped and stripped of control characters."""
from __future__ import annotations

import base64
from html import escape as _html_escape

from qbench.report_best import LEGEND
from qbench.safetext import clean


def escape(text) -> str:
    """HTML-escaped, control characters dropped (:func:`qbench.safetext.clean`)."""
    return _html_escape(clean(text))

CSS = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px auto;max-width:1800px;padding:0 16px;color:#1d1d1f}
h1{font-size:22px;margin-bottom:4px} h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:3px}
.muted{color:#666} .note{color:#8a5a00}
table{border-collapse:collapse;margin:8px 0;font-variant-numeric:tabular-nums}
th,td{border:1px solid #d9d9d9;padding:3px 5px;text-align:right;vertical-align:top;white-space:nowrap;font-size:13px}
th{background:#f4f5f7;font-weight:600;white-space:normal} td:first-child,th:first-child{text-align:left;white-space:normal;min-width:9em;max-width:200px}
td .sub{font-size:11px}
td.best{background:#e3f4e1;font-weight:700} .sub{display:block;font-size:11px;color:#245;font-weight:400;white-space:normal}
td.unres,td.unres-sub .sub{color:#8c8c8c} .scroll{overflow-x:auto}
dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px} dt{font-weight:600} dd{margin:0;word-break:break-word}
figure{margin:12px 0 24px} figure img{max-width:100%;height:auto;border:1px solid #eee} figcaption{color:#444;font-size:13px;max-width:1000px}
@media (max-width:1000px){  /* narrow windows: each configuration a card of labelled values, nothing behind a scroll */
 .scroll table,.scroll tbody,.scroll tr,.scroll td{display:block} .scroll thead{display:none}
 .scroll tr{border:1px solid #d9d9d9;margin:0 0 10px;padding:2px 6px;display:grid;grid-template-columns:repeat(auto-fill,minmax(230px,1fr));column-gap:18px}
 .scroll td:first-child{grid-column:1/-1}
 .scroll td{border:none;border-bottom:1px dotted #e4e4e4;display:flex;justify-content:space-between;gap:14px;white-space:normal;max-width:none}
 .scroll td:first-child{font-weight:600} .scroll td::before{content:attr(data-label);font-weight:600;text-align:left;color:#333}
 .scroll td:first-child::before{content:none} .scroll td .v{text-align:right}
}
"""


def _img(png: bytes, alt: str, meta: dict | None = None) -> str:
    """``meta`` (the plotting code's measurements) goes into data- attributes that ``make
    report-check`` reads in the browser: the smallest text in image pixels, label overlaps, cut texts."""
    m = meta or {}
    attrs = ""
    if m.get("min_text_pt"):
        attrs += f' data-min-text-px="{m["min_text_pt"] * 100 / 72:.2f}"'  # plots are drawn at 100 dpi
    if "label_overlaps" in m:
        attrs += f' data-label-overlaps="{int(m["label_overlaps"])}" data-labels="{int(m.get("labels", 0))}"'
    if "text_outside" in m:
        attrs += f' data-text-outside="{escape(" | ".join(m["text_outside"]))}"'
    return f'<img alt="{escape(alt)}"{attrs} src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def table_html(t) -> str:
    out = ['<div class="scroll"><table>', "<thead><tr>" + "".join(f"<th>{escape(h)}</th>" for h in t.head) + "</tr></thead><tbody>"]
    for row in t.body:
        cells = []
        for h, c in zip(t.head, row):  # data-label: the column's name on a narrow window's card
            cls = " ".join(x for x in ("best" if c.best else "", ("unres-sub" if c.sub else "unres") if c.unresolved else "") if x)
            sub = f'<span class="sub">{escape(c.sub)}</span>' if c.sub else ""
            cells.append(f'<td data-label="{escape(h)}"{f" class={chr(34)}{cls}{chr(34)}" if cls else ""}><span class="v">{escape(c.text)}{sub}</span></td>')
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table></div>")
    return "\n".join(out)


def to_html(rep) -> str:
    """The page of a :class:`qbench.report.Report`."""
    p = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\"><title>qbench report — {escape(rep.model)}</title>",
         f"<style>{CSS}</style></head><body>",
         f"<h1>qbench report — {escape(rep.model)}</h1>",
         f'<p class="muted">generated {escape(rep.generated)} from the results store; every number below says how it was made '
         "(provenance at the end).</p>"]
    for g in rep.groups:
        p.append(f"<h2>{escape(g['settings'])}</h2>")
        if g["note"]:
            p.append(f'<p class="note">{escape(g["note"])}</p>')
        p.append(table_html(g["table"]))
        p.append(f'<p class="muted">{escape(LEGEND)} Under each value: its paired difference to the baseline (mean ± standard error over '
                 "the same prompts and seeds); grey with ~: within two standard errors of zero, not resolved. * size computed for the "
                 "packed format.</p>")
        if g["paired"]:
            p.append(f"<h2>{escape(g['paired'].title)}</h2><p class=\"muted\">{escape(g['paired'].note)}</p>")
            p.append(table_html(g["paired"]))
        p += [f'<p class="note">{escape(n)}</p>' for n in g["row_notes"]]
    for t in rep.extra:
        p.append(f"<h2>{escape(t.title)}</h2><p class=\"muted\">{escape(t.note)}</p>")
        p.append(table_html(t))
    for f in rep.figures + ([rep.grid] if rep.grid else []):
        p.append(f"<h2>{escape(f.title)}</h2><figure>{_img(f.png, f.title, f.meta)}<figcaption>{escape(f.caption)}</figcaption></figure>")
    p.append("<h2>Provenance</h2><dl>" + "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in rep.provenance) + "</dl>")
    if rep.notes:
        p.append("<h2>Notes</h2><ul>" + "".join(f"<li>{escape(n)}</li>" for n in rep.notes) + "</ul>")
    p.append("</body></html>")
    return "\n".join(p) + "\n"
