"""Open a `qbench report` HTML page in a real browser (headless Chromium) and check it: every image
loads (complete, natural width > 0) and the comparison table is there; save a screenshot.

    python reports/scripts/browser_check.py REPORT.html [--screenshot OUT.png] [--width 1400 --height 2400]
    python reports/scripts/browser_check.py --make-runs DIR [...]   # first: fp / naive W8A8 / W4A8 on toy-flux toy:8 and `qbench report`

`make report-check` runs the second form. Chromium is the Debian package (`apt-get install -y
chromium`, /usr/bin/chromium); without it this script fails (exit 2) and says so: it is never
skipped silently. The page is loaded twice from copies in a temporary folder: once with a small
script appended that writes what it found into the DOM (read back with --dump-dom), once as it
is, for the screenshot (reduced to a 256-colour PNG to stay small).
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
  document.body.setAttribute('data-check', JSON.stringify({images: imgs.length, broken: bad,
    tables: document.querySelectorAll('table').length, rows: document.querySelectorAll('table tbody tr').length,
    title: document.title, comparison: !!document.querySelector('table th') && document.querySelector('table th').textContent}));
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


def check(report: str, screenshot: str | None, width: int, height: int) -> dict:
    exe = chromium()
    with tempfile.TemporaryDirectory(prefix="qbench-browser-") as tmp:
        with open(report, encoding="utf-8") as f:
            page = f.read()
        n_img_tags = len(re.findall(r"<img\b", page))
        probe = os.path.join(tmp, "probe.html")
        with open(probe, "w", encoding="utf-8") as f:
            f.write(page.replace("</body>", PROBE + "</body>"))
        dom = run_browser(exe, "file://" + probe, ["--dump-dom"], tmp)
        m = re.search(r'data-check="([^"]*)"', dom)
        if not m:
            raise SystemExit("browser_check: the page's load event never ran (no data-check in the dumped DOM)")
        found = json.loads(html.unescape(m.group(1)))
        found["img_tags_in_file"] = n_img_tags
        problems = []
        if found["broken"]:
            problems.append(f"images that did not load: {found['broken']}")
        if found["images"] != n_img_tags or n_img_tags == 0:
            problems.append(f"{found['images']} images in the browser, {n_img_tags} <img> tags in the file")
        if found["tables"] < 1 or found["rows"] < 1 or found["comparison"] != "configuration":
            problems.append(f"no comparison table (tables {found['tables']}, rows {found['rows']}, first header {found['comparison']!r})")
        if screenshot:
            shot = os.path.join(tmp, "shot.png")
            run_browser(exe, "file://" + os.path.abspath(report), [f"--screenshot={shot}", f"--window-size={width},{height}"], tmp)
            from PIL import Image

            with Image.open(shot) as im:
                found["screenshot_px"] = im.size
                im.convert("RGB").quantize(colors=256).save(screenshot, optimize=True)
            found["screenshot"] = screenshot
            found["screenshot_bytes"] = os.path.getsize(screenshot)
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
    ap.add_argument("--width", type=int, default=1400)
    ap.add_argument("--height", type=int, default=2400)
    a = ap.parse_args()
    chromium()  # before any work: fail loudly if it is absent
    report = make_runs(a.make_runs) if a.make_runs else a.report
    if not report:
        ap.error("give REPORT.html or --make-runs DIR")
    found = check(report, a.screenshot, a.width, a.height)
    print(json.dumps(found, indent=1))
    if found["problems"]:
        sys.stderr.write("browser_check: FAILED: " + "; ".join(found["problems"]) + "\n")
        raise SystemExit(1)
    print(f"browser_check: ok: {found['images']} images loaded, {found['tables']} tables ({found['rows']} rows) in {report}")


if __name__ == "__main__":
    main()
