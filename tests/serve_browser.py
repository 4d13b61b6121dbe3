"""Clicking through `qbench serve` in headless Chromium with Playwright (Debian's chromium, passed as
the executable: nothing is downloaded). Used by tests/test_serve.py and, for the committed
screenshots, by reports/scripts/serve_screenshots.py."""
from __future__ import annotations

import os
import shutil
import threading
from contextlib import contextmanager

ALL_LOADED = "[...document.images].every(i => i.complete && i.naturalWidth > 0)"


def chromium() -> str | None:
    """The Chromium executable (``$QBENCH_CHROMIUM``, else ``chromium`` on PATH), or None."""
    exe = os.environ.get("QBENCH_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    return exe if exe and os.access(exe, os.X_OK) else None


@contextmanager
def serving(app):
    """The Flask ``app`` on 127.0.0.1 at a free port (Werkzeug's threaded server); yields its URL."""
    from werkzeug.serving import make_server

    srv = make_server("127.0.0.1", 0, app, threaded=True)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_port}"
    finally:
        srv.shutdown()
        t.join(10)


def click_through(base: str, shots: str, exe: str, metric: str = "psnr", prompt: str = "a large red circle at the center on a white background",
                  tries: int = 2) -> dict:
    """Gallery (filter by a metric, open a prompt), arena (name, vote left), try-it (type a prompt,
    generate with the first ``tries`` configurations); a screenshot of each page into ``shots``.
    Returns what it saw; raises AssertionError where a page is not as expected."""
    from playwright.sync_api import sync_playwright

    os.makedirs(shots, exist_ok=True)
    seen: dict = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(120_000)
            page.goto(base + "/gallery")
            page.select_option("select[name=metric]", metric)
            page.click("#apply")
            page.wait_for_url("**metric=" + metric + "**")
            first = page.inner_text("#prompt")
            page.locator("a.prompt-link").nth(1).click()
            page.wait_for_function(ALL_LOADED)
            assert page.inner_text("#prompt") != first, "clicking a prompt did not change the prompt shown"
            seen["gallery_cells"] = page.locator("div.cell").count()
            seen["gallery_diffs"] = page.locator("img.diff").count()
            assert seen["gallery_cells"] >= 2 and seen["gallery_diffs"] >= 1
            page.screenshot(path=os.path.join(shots, "serve-gallery.png"), full_page=True)

            page.click("text=Arena")
            page.fill("#voter", "playwright")
            page.click("#start")
            page.wait_for_selector("#img-a")
            page.wait_for_function(ALL_LOADED)
            page.screenshot(path=os.path.join(shots, "serve-arena.png"), full_page=True)
            page.click("#vote-a")
            page.wait_for_selector("#stored")
            seen["arena_stored"] = page.inner_text("#stored")
            seen["arena_people_rows"] = page.locator("#people tr").count() - 1
            assert "vote stored: left" in seen["arena_stored"] and seen["arena_people_rows"] >= 2

            page.click("text=Try it")
            boxes = page.locator("input[name=run]")
            for i in range(boxes.count()):
                boxes.nth(i).set_checked(i < tries)
            page.fill("#try-prompt", prompt)
            page.click("#generate")
            page.wait_for_selector("#try-results img")
            page.wait_for_function(ALL_LOADED)
            seen["try_images"] = page.locator("#try-results img").count()
            assert seen["try_images"] == tries
            page.screenshot(path=os.path.join(shots, "serve-try.png"), full_page=True)
        finally:
            browser.close()
    return seen
