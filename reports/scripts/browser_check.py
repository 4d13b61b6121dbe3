"""Open a `qbench report` HTML page in a real browser (headless Chromium) and check it: every image
loads (complete, natural width > 0) and the comparison table is there; then, at each window width
(default 1280 and 800 px): the page never scrolls sideways, no table is wider than its box (no
column behind a scroll), every expected figure is there, and what the plotting code measured on
each figure holds (no two point labels overlap, no text cut by the figure's edge, the smallest
plot text at least 8 px as shown); save a full-page screenshot per width (OUT-1280.png, ...).

    python reports/scripts/browser_check.py REPORT.html [--screenshot OUT.png] [--widths 1280,800]
    python reports/scripts/browser_check.py --make-runs DIR [...]   # first: fp / naive W8A8 / W4A8 on toy-flux toy:8 and `qbench report`

`make report-check` runs the second form. Chromium is the Debian package (`apt-get install -y
chromium`, /usr/bin/chromium); without it this script fails (exit 2) and says so: it is never
skipped silently. Per width the page is loaded twice from copies in a temporary folder: once with a
small script appended that writes what it found into the DOM (read back with --dump-dom), once as
it is, for the screenshot (reduced to a 256-colour PNG to stay small).
"""
from __future__ import annotations

import argparse
import html
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

PROBE = """<script>
window.addEventListener('load', () => {
  const imgs = [...document.images];
  const bad = imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt);
  const de = document.documentElement;
  const cut = [...document.querySelectorAll('.scroll')].filter(d => d.scrollWidth > d.clientWidth + 1).map(d => d.scrollWidth + '>' + d.clientWidth);
  const figs = [...document.querySelectorAll('figure img')].map(i => ({alt: i.alt, overlaps: i.dataset.labelOverlaps, labels: i.dataset.labels,
    outside: i.dataset.textOutside || '', text_px: i.dataset.minTextPx ? +(i.dataset.minTextPx * i.clientWidth / i.naturalWidth).toFixed(2) : null}));
  document.body.setAttribute('data-check', JSON.stringify({images: imgs.length, broken: bad,
    tables: document.querySelectorAll('table').length, rows: document.querySelectorAll('table tbody tr').length,
    title: document.title, comparison: !!document.querySelector('table th') && document.querySelector('table th').textContent,
    viewport: window.innerWidth, height: de.scrollHeight, page_overflow: de.scrollWidth > de.clientWidth + 1 ? de.scrollWidth + '>' + de.clientWidth : '',
    tables_cut: cut, figures: figs}));
});
</script>"""
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--hide-scrollbars", "--virtual-time-budget=10000"]


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    sys.stderr.write("browser_check: error: Chromium not found; install the Debian package: apt-get install -y chromium\n")
    raise SystemExit(2)


def run_browser(exe: str, url: str, extra: list[str], tmp: str) -> str:
    profile = tempfile.mkdtemp(prefix="profile-", dir=tmp)
    res = subprocess.run([exe, *FLAGS, f"--user-data-dir={profile}", *extra, url], capture_output=True, text=True, timeout=180, check=False)
    if res.returncode != 0:
        raise SystemExit(f"browser_check: chromium exited {res.returncode}: {res.stderr.strip()[-500:]}")
    return res.stdout


#: the figures a report of fp + naive runs always has (``--make-runs``); others are checked when present
EXPECTED = ("Quality vs model size", "Quality vs latency", "Fidelity to full precision per bit width", "Images")
MIN_TEXT_PX = 8.0  # the smallest plot text, as shown on the page


def layout_problems(found: dict, expect: tuple[str, ...]) -> list[str]:
    """What the probe found wrong with the layout at one window width."""
    w, out = found["viewport"], []
    if found["page_overflow"]:
        out.append(f"at {w} px the page scrolls sideways ({found['page_overflow']})")
    if found["tables_cut"]:
        out.append(f"at {w} px a table is wider than its box, columns behind a scroll ({found['tables_cut']})")
    titles = [f["alt"] for f in found["figures"]]
    missing = [t for t in expect if t not in titles]
    if missing:
        out.append(f"figures missing: {missing}")
    for f in found["figures"]:
        if f.get("overlaps") not in (None, "0"):
            out.append(f"figure {f['alt']!r}: point labels overlap")
        if f.get("outside"):
            out.append(f"figure {f['alt']!r}: text cut by the figure's edge: {f['outside']}")
        if f.get("text_px") is not None and f["text_px"] < MIN_TEXT_PX:
            out.append(f"figure {f['alt']!r}: smallest text {f['text_px']} px at {w} px (< {MIN_TEXT_PX})")
    return out


def check(report: str, screenshot: str | None, width: int, height: int, widths: tuple[int, ...] = (1280, 800),
          expect: tuple[str, ...] = ()) -> dict:
    exe = chromium()
    with tempfile.TemporaryDirectory(prefix="qbench-browser-") as tmp:
        with open(report, encoding="utf-8") as f:
            page = f.read()
        n_img_tags = len(re.findall(r"<img\b", page))
        probe = os.path.join(tmp, "probe.html")
        with open(probe, "w", encoding="utf-8") as f:
            f.write(page.replace("</body>", PROBE + "</body>"))
        problems, at = [], {}
        for w in widths:
            dom = run_browser(exe, "file://" + probe, ["--dump-dom", f"--window-size={w},{height}"], tmp)
            m = re.search(r'data-check="([^"]*)"', dom)
            if not m:
                raise SystemExit("browser_check: the page's load event never ran (no data-check in the dumped DOM)")
            at[w] = json.loads(html.unescape(m.group(1)))
            problems += layout_problems(at[w], expect)
        found = at[widths[0]]
        found["by_width"] = {w: {k: at[w][k] for k in ("viewport", "page_overflow", "tables_cut", "figures")} for w in widths}
        found["img_tags_in_file"] = n_img_tags
        if found["broken"]:
            problems.append(f"images that did not load: {found['broken']}")
        if found["images"] != n_img_tags or n_img_tags == 0:
            problems.append(f"{found['images']} images in the browser, {n_img_tags} <img> tags in the file")
        if found["tables"] < 1 or found["rows"] < 1 or found["comparison"] != "configuration":
            problems.append(f"no comparison table (tables {found['tables']}, rows {found['rows']}, first header {found['comparison']!r})")
        if screenshot:  # one per width: OUT.png -> OUT-1280.png, OUT-800.png
            from PIL import Image

            found["screenshots"] = []
            for w in widths:
                shot, dest = os.path.join(tmp, f"shot-{w}.png"), re.sub(r"(\.png)?$", f"-{w}.png", screenshot, count=1)
                full = min(max(height, int(at[w].get("height") or 0)), 16000)  # the whole page, top to bottom
                run_browser(exe, "file://" + os.path.abspath(report), [f"--screenshot={shot}", f"--window-size={w},{full}"], tmp)
                with Image.open(shot) as im:
                    im.convert("RGB").quantize(colors=256).save(dest, optimize=True)
                    found["screenshots"].append({"path": dest, "px": im.size, "bytes": os.path.getsize(dest)})
        found["problems"] = problems
        return found


def make_runs(out_dir: str) -> str:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    q = [sys.executable, "-m", "qbench.cli"]
    common = ["--model", "toy-flux", "--prompts", "toy:8", "--out-dir", out_dir, "--no-progress", "--latency-warmup", "0", "--latency-repeats", "1"]
    for extra in (["--method", "fp"], ["--method", "naive", "--bits", "W8A8"], ["--method", "naive", "--bits", "W4A8"]):
        subprocess.run(q + ["run", *common, *extra], env=env, check=True, stdout=subprocess.DEVNULL)
    subprocess.run(q + ["report", "--out-dir", out_dir, "--model", "toy-flux", "--format", "html"], env=env, check=True, stdout=subprocess.DEVNULL)
    return os.path.join(out_dir, "report-toy-flux.html")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report", nargs="?", help="a report-<model>.html")
    ap.add_argument("--make-runs", metavar="DIR", help="make three toy-flux runs and their report in DIR first, then check that report")
    ap.add_argument("--screenshot", help="save a (256-colour) PNG screenshot here")
    ap.add_argument("--width", type=int, default=1400, help="(unused; kept for old command lines: see --widths)")
    ap.add_argument("--widths", default="1280,800", help="window widths to check and screenshot (default 1280,800)")
    ap.add_argument("--height", type=int, default=2400)
    a = ap.parse_args()
    chromium()  # before any work: fail loudly if it is absent
    report = make_runs(a.make_runs) if a.make_runs else a.report
    if not report:
        ap.error("give REPORT.html or --make-runs DIR")
    widths = tuple(int(w) for w in a.widths.split(","))
    found = check(report, a.screenshot, a.width, a.height, widths, EXPECTED if a.make_runs else ())
    print(json.dumps(found, indent=1))
    if found["problems"]:
        sys.stderr.write("browser_check: FAILED: " + "; ".join(found["problems"]) + "\n")
        raise SystemExit(1)
    print(f"browser_check: ok: {found['images']} images loaded, {found['tables']} tables ({found['rows']} rows) in {report}")


if __name__ == "__main__":
    main()
