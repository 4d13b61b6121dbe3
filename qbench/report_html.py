"""The HTML page of ``qbench report``: one self-contained file (inline CSS, every image embedded
as a ``data:image/png;base64`` URI, no script, no external resource), readable offline and in
any browser. Every user-supplied string is HTML-escaped."""
from __future__ import annotations

import base64
from html import escape

CSS = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px auto;max-width:1800px;padding:0 16px;color:#1d1d1f}
h1{font-size:22px;margin-bottom:4px} h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:3px}
.muted{color:#666} .note{color:#8a5a00}
table{border-collapse:collapse;margin:8px 0;font-variant-numeric:tabular-nums}
th,td{border:1px solid #d9d9d9;padding:3px 6px;text-align:right;vertical-align:top;white-space:nowrap;font-size:13px}
th{background:#f4f5f7;font-weight:600} td:first-child,th:first-child{text-align:left;white-space:normal;max-width:220px}
td.best{background:#e3f4e1;font-weight:700} .sub{display:block;font-size:11px;color:#245;font-weight:400;white-space:normal}
td.unres,td.unres-sub .sub{color:#8c8c8c} .scroll{overflow-x:auto}
dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px} dt{font-weight:600} dd{margin:0;word-break:break-word}
figure{margin:12px 0 24px} figure img{max-width:100%;border:1px solid #eee} figcaption{color:#444;font-size:13px;max-width:1000px}
"""


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def table_html(t) -> str:
    out = ['<div class="scroll"><table>', "<thead><tr>" + "".join(f"<th>{escape(h)}</th>" for h in t.head) + "</tr></thead><tbody>"]
    for row in t.body:
        cells = []
        for c in row:
            cls = " ".join(x for x in ("best" if c.best else "", ("unres-sub" if c.sub else "unres") if c.unresolved else "") if x)
            sub = f'<span class="sub">{escape(c.sub)}</span>' if c.sub else ""
            cells.append(f'<td{f" class={chr(34)}{cls}{chr(34)}" if cls else ""}>{escape(c.text)}{sub}</td>')
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table></div>")
    return "\n".join(out)


def to_html(rep) -> str:
    """The page of a :class:`qbench.report.Report`."""
    p = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>qbench report — {escape(rep.model)}</title>",
         f"<style>{CSS}</style></head><body>",
         f"<h1>qbench report — {escape(rep.model)}</h1>",
         f'<p class="muted">generated {escape(rep.generated)} from the results store; every number below says how it was made '
         "(provenance at the end).</p>"]
    for g in rep.groups:
        p.append(f"<h2>{escape(g['settings'])}</h2>")
        if g["note"]:
            p.append(f'<p class="note">{escape(g["note"])}</p>')
        p.append(table_html(g["table"]))
        p.append('<p class="muted">Green: the best value of its column (reference metrics leave out the full-precision row; latency only '
                 "among deployment latencies). Under each value: its paired difference to the baseline (mean ± standard error over the "
                 "same prompts and seeds); grey with ~: within two standard errors of zero, not resolved. * size computed for the packed "
                 "format.</p>")
        if g["paired"]:
            p.append(f"<h2>{escape(g['paired'].title)}</h2><p class=\"muted\">{escape(g['paired'].note)}</p>")
            p.append(table_html(g["paired"]))
        p += [f'<p class="note">{escape(n)}</p>' for n in g["row_notes"]]
    for t in rep.extra:
        p.append(f"<h2>{escape(t.title)}</h2><p class=\"muted\">{escape(t.note)}</p>")
        p.append(table_html(t))
    for f in rep.figures + ([rep.grid] if rep.grid else []):
        p.append(f"<h2>{escape(f.title)}</h2><figure>{_img(f.png, f.title)}<figcaption>{escape(f.caption)}</figcaption></figure>")
    p.append("<h2>Provenance</h2><dl>" + "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in rep.provenance) + "</dl>")
    if rep.notes:
        p.append("<h2>Notes</h2><ul>" + "".join(f"<li>{escape(n)}</li>" for n in rep.notes) + "</ul>")
    p.append("</body></html>")
    return "\n".join(p) + "\n"
