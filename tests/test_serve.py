"""qbench serve (Flask test client), the votes store and its migration, qbench judge, ratings in
compare and report: on three real toy-flux runs (fp, naive W8A8, naive W4A8, 6 held-out prompts)."""
import json
import os
import re
import sqlite3
import threading

import pytest

from qbench.cli import main
from qbench.errors import QBenchError

pytest.importorskip("flask", reason="qbench serve needs the serve extra (pip install 'qbench[serve]')")

N = 6


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory):
    from qbench.config import RunConfig
    from qbench.harness import run

    out = str(tmp_path_factory.mktemp("serve"))
    for method, bits in (("fp", None), ("naive", "W8A8"), ("naive", "W4A8")):
        run(RunConfig(model="toy-flux", method=method, bits=bits, prompts=f"toy:{N}", batch_size=N, metrics=["toy-acc", "psnr"],
                      out_dir=out, latency_warmup=0, latency_repeats=1, device="cpu"), show_progress=False)
    return out


@pytest.fixture()
def db(out_dir, tmp_path):
    """A fresh copy of the store for each test (the runs' image folders are shared)."""
    path = str(tmp_path / "qbench.sqlite")
    src, dst = sqlite3.connect(os.path.join(out_dir, "qbench.sqlite")), sqlite3.connect(path)
    src.backup(dst)
    src.close()
    dst.close()
    return path


@pytest.fixture()
def client(db):
    from qbench.serve_app import create_app

    return create_app(db).test_client()


def _token(page: str) -> str:
    return re.search(r'name="token" value="([0-9a-f]+)"', page).group(1)


def test_gallery_side_by_side_worst_first_and_filters(client, out_dir):
    from qbench.store import Store

    page = client.get("/gallery?metric=psnr").get_data(as_text=True)
    assert page.count('<div class="cell ') == 3 and page.count('class="diff"') == 2  # fp is the baseline: no map of its own
    # worst first: the first listed prompt is the one with the lowest psnr among the quantized runs
    store = Store(os.path.join(out_dir, "qbench.sqlite"), create=False)
    per = [store.per_image(r["id"])["psnr"] for r in store.runs(model="toy-flux") if r["method"] != "fp"]
    worst = min(per[0], key=lambda pid: min(p[pid] for p in per))
    first = re.search(r'prompt=(\d+)">', page).group(1)
    assert f"toy-test/{first}" == worst and f"prompt {worst}," in page
    only = client.get("/gallery?q=W4A8").get_data(as_text=True)
    assert only.count('<div class="cell ') == 1 and "naive W4A8" in only
    for url in re.findall(r'src="(/(?:img|diff)/[^"]+)"', page):
        r = client.get(url)
        assert r.status_code == 200 and r.data[:8] == b"\x89PNG\r\n\x1a\n", url
    assert client.get("/gallery?metric=nope").status_code == 404
    assert client.get("/gallery?group=7").status_code == 404
    assert client.get("/gallery?prompt=x").status_code == 404
    assert client.get("/gallery?model=<b>").get_data(as_text=True).count("<b>") == 0  # escaped


def test_images_only_by_id(client, db):
    from qbench.store import Store

    rid = Store(db, create=False).runs()[0]["id"]
    assert client.get(f"/img/{rid}/0").status_code == 200
    for bad in (f"/img/{rid}/{N}", f"/img/{rid[:8]}/0", "/img/..%2F..%2Fetc%2Fpasswd/0", f"/img/{rid}/-1", "/img/%2Fetc%2Fpasswd/0",
                "/pair/deadbeef/a.png", "/try/img/nope", f"/diff/{rid}/nope/0"):
        assert client.get(bad).status_code == 404, bad


def test_arena_blind_pair_vote_and_refusals(client, db):
    from qbench.store import Store
    from qbench.store_votes import votes

    assert 'id="voter"' in client.get("/arena").get_data(as_text=True)  # asks for a name first
    page = client.get("/arena?voter=ann").get_data(as_text=True)
    token = _token(page)
    assert "W4A8" not in page.split('id="prompt"')[1].split("<h3>Ratings")[0]  # blind: no configuration named
    assert client.get(f"/pair/{token}/a.png").data[:4] == b"\x89PNG"
    r = client.post("/vote", data={"token": token, "winner": "a", "voter": "ann"})
    assert r.status_code == 303 and "stored=" in r.headers["Location"]
    assert client.get(r.headers["Location"]).status_code == 200
    store = Store(db, create=False)
    (v,) = votes(store)
    assert v["voter"] == "ann" and v["winner"] == "a" and v["token"] == token and v["judge"] == 0 and v["created"].endswith("Z")
    # a second vote on the same pair, a pair never shown, a malformed winner, another voter's pair
    assert client.post("/vote", data={"token": token, "winner": "b", "voter": "ann"}).status_code == 409
    assert client.post("/vote", data={"token": "0" * 32, "winner": "a", "voter": "ann"}).status_code == 400
    t2 = _token(client.get("/arena?voter=ann").get_data(as_text=True))
    assert client.post("/vote", data={"token": t2, "winner": "left", "voter": "ann"}).status_code == 400
    assert client.post("/vote", data={"token": t2, "winner": "a", "voter": "bob"}).status_code == 400
    assert client.post("/vote", data={"token": t2, "winner": "a", "voter": ""}).status_code == 400
    # a form on another site posting here (cross-site request forgery) is refused; this site's is not
    evil = client.post("/vote", data={"token": t2, "winner": "a", "voter": "ann"}, headers={"Origin": "http://evil.example"})
    assert evil.status_code == 403 and "another site" in evil.get_data(as_text=True)
    assert client.post("/try", data={"prompt": "x"}, headers={"Referer": "http://evil.example/page"}).status_code == 403
    assert client.get("/arena?voter=judge:toy-checker").status_code == 400  # a judge's name is not a person's
    assert len(votes(store)) == 1  # nothing else was stored
    page = client.get("/arena?voter=%3Cscript%3Ex").get_data(as_text=True)
    assert "<script>x" not in page and "&lt;script&gt;x" in page


def test_concurrent_voters_lose_nothing(db):
    from qbench.arena import groups
    from qbench.store import Store
    from qbench.store_votes import issue_pair, record_vote, votes

    store = Store(db)
    g = groups(store, "toy-flux")[0]
    tokens = [issue_pair(store, g[i % 3], g[(i + 1) % 3], f"toy-test/{i % N}", 42 + i % N, f"v{i}") for i in range(24)]
    errors = []

    def cast(i):
        try:
            record_vote(Store(db), tokens[i], ("a", "b", "tie")[i % 3], f"v{i}")
        except QBenchError as e:  # pragma: no cover - the assertion below shows it
            errors.append(e)

    threads = [threading.Thread(target=cast, args=(i,)) for i in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(votes(store)) == 24 and len({v["token"] for v in votes(store)}) == 24


def test_schema_migrates_older_store_and_refuses_newer(db):
    from qbench.store import SCHEMA_VERSION, Store
    from qbench.store_votes import votes

    conn = sqlite3.connect(db)
    conn.executescript("DROP TABLE votes; DROP TABLE pairs; PRAGMA user_version=1;")
    conn.close()
    assert votes(Store(db, create=False)) == []  # a reader of a schema-1 store: no votes, nothing written
    assert sqlite3.connect(db).execute("PRAGMA user_version").fetchone()[0] == 1
    Store(db)  # a writer migrates
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
    assert {"votes", "pairs"} <= {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    from qbench.serve_app import create_app

    with pytest.raises(QBenchError, match="newer qbench"):
        create_app(db)


def test_judge_toy_checker_ratings_in_compare_and_report(db, capsys, tmp_path):
    from qbench.store import Store
    from qbench.store_votes import votes

    assert main(["judge", "--db", db, "--model", "toy-flux", "--judge", "toy-checker"]) == 0
    out = capsys.readouterr().out
    assert "judge toy-checker: 18 votes" in out  # 3 pairs of configurations x 6 prompts
    vs = votes(Store(db, create=False), judges=True)
    assert len(vs) == 18 and {v["voter"] for v in vs} == {"judge:toy-checker"}
    assert main(["judge", "--db", db, "--model", "toy-flux", "--judge", "toy-checker"]) == 0  # a re-run replaces, never doubles
    assert len(votes(Store(db, create=False), judges=True)) == 18
    capsys.readouterr()
    assert main(["compare", "--db", db, "--model", "toy-flux", "--json", "-"]) == 0
    rows = json.loads(capsys.readouterr().out)["toy-flux"]
    for r in rows:
        m = r["metrics"]["judge-toy-checker"]
        assert m["n"] == 12 and m["details"]["ci95"][0] <= m["value"] <= m["details"]["ci95"][1]
    assert main(["compare", "--db", db, "--model", "toy-flux"]) == 0
    assert re.search(r"judge-toy-checker ↑.*\d+ \[\d+, \d+\] n=12", capsys.readouterr().out)
    assert main(["report", "--db", db, "--out-dir", str(tmp_path), "--model", "toy-flux", "--format", "md"]) == 0
    assert "judge-toy-checker" in (tmp_path / "report-toy-flux.md").read_text()
    # a judge whose scores the runs did not store, an unknown judge: one line, exit 2
    assert main(["judge", "--db", db, "--model", "toy-flux", "--judge", "clip"]) == 2
    assert "stored no per-prompt clip" in capsys.readouterr().err
    assert main(["judge", "--db", db, "--judge", "nonsense"]) == 2
    # the judge on a stored metric (psnr: fp scores 100 against itself and wins every pair)
    assert main(["judge", "--db", db, "--model", "toy-flux", "--judge", "psnr"]) == 0


def test_try_it_generates_and_caches(client, db):
    page = client.get("/try").get_data(as_text=True)
    ids = re.findall(r'name="run" value="([^"]+)"', page)
    assert len(ids) == 3
    data = {"prompt": "a large red circle at the center on a white background <b>", "run": ids[:2]}
    out = client.post("/try", data=data).get_data(as_text=True)
    assert out.count("generated after loading the configuration") == 2 and "<b>" not in out.split('id="try-prompt"')[1].split("</form>")[0][:400]
    imgs = re.findall(r'src="(/try/img/[0-9a-f]+)"', out)
    assert len(imgs) == 2 and all(client.get(u).data[:4] == b"\x89PNG" for u in imgs)
    again = client.post("/try", data=data).get_data(as_text=True)
    assert again.count("read from the image cache") == 2
    assert client.post("/try", data={"prompt": "", "run": ids[:1]}).status_code == 400
    assert client.post("/try", data={"prompt": "x", "run": ["nope"]}).status_code == 404


def test_browser_clicks_through_gallery_arena_and_try(db, tmp_path):
    """Headless Chromium (Debian's package, driven by Playwright): every page clicked through."""
    import sys

    pytest.importorskip("playwright", reason="Playwright is not installed (pip install 'qbench[test]')")
    sys.path.insert(0, os.path.dirname(__file__))
    from serve_browser import chromium, click_through, serving

    from qbench.serve_app import create_app
    from qbench.store import Store
    from qbench.store_votes import votes

    exe = chromium()
    if exe is None:
        pytest.skip("Chromium is not installed (apt-get install -y chromium; .ci/run installs it)")
    with serving(create_app(db)) as url:
        seen = click_through(url, str(tmp_path / "shots"), exe)
    assert seen["gallery_cells"] == 3 and seen["try_images"] == 2
    assert [v["voter"] for v in votes(Store(db, create=False))] == ["playwright"]
    for name in ("serve-gallery.png", "serve-arena.png", "serve-try.png"):
        assert (tmp_path / "shots" / name).stat().st_size > 5000


def test_serve_command_defaults_and_refusals(tmp_path, capsys):
    from qbench.cli import build_parser

    args = build_parser().parse_args(["serve"])
    assert args.host == "127.0.0.1"  # this machine only unless --host says otherwise
    assert main(["serve", "--db", str(tmp_path / "none.sqlite")]) == 2
    assert "no results database" in capsys.readouterr().err
    (tmp_path / "text.sqlite").write_text("not a database")
    assert main(["serve", "--db", str(tmp_path / "text.sqlite")]) == 2
    assert "not an SQLite file" in capsys.readouterr().err
    assert main(["serve", "--db", str(tmp_path / "text.sqlite"), "--port", "70000"]) == 2
    assert main(["judge", "--db", str(tmp_path / "none.sqlite"), "--judge", "toy-checker"]) == 2


def test_votes_survive_a_killed_voter_and_wait_for_a_busy_writer(db):
    """A process killed (SIGKILL) right after its vote keeps the vote; a vote cast while another
    connection holds the write lock waits for it (SQLite busy timeout) and is stored."""
    import subprocess
    import sys
    import time

    from qbench.arena import groups
    from qbench.store import Store
    from qbench.store_votes import issue_pair, record_vote, votes

    store = Store(db)
    g = groups(store, "toy-flux")[0]
    t1, t2 = (issue_pair(store, g[0], g[1], "toy-test/0", 42, "kim") for _ in range(2))
    code = ("import os, signal, sys; from qbench.store import Store; from qbench.store_votes import record_vote; "
            "record_vote(Store(sys.argv[1]), sys.argv[2], 'tie', 'kim'); os.kill(os.getpid(), signal.SIGKILL)")
    r = subprocess.run([sys.executable, "-c", code, db, t1], cwd=os.path.dirname(os.path.dirname(__file__)), check=False)
    assert r.returncode == -9
    assert [v["token"] for v in votes(Store(db, create=False))] == [t1]
    lock = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    lock.execute("BEGIN IMMEDIATE")
    releaser = threading.Timer(1.5, lambda: lock.execute("COMMIT"))
    releaser.start()
    t = time.perf_counter()
    record_vote(Store(db), t2, "b", "kim")
    assert time.perf_counter() - t >= 1.0  # it waited for the other writer
    releaser.join()
    lock.close()
    assert [v["winner"] for v in votes(Store(db, create=False))] == ["tie", "b"]


def test_ratings_do_not_change_a_configuration_key(db):
    """A rating added as a metric must not make a voted run a configuration of its own in compare."""
    from qbench.arena import as_metric
    from qbench.comparison import config_key
    from qbench.store import Store

    run = Store(db, create=False).runs()[0]
    before = config_key(run)
    r = {"rating": 1010.0, "lo": 1000.0, "hi": 1020.0, "votes": 3, "wins": 2, "losses": 1, "ties": 0}
    run["metrics"]["arena"], run["metrics"]["judge-toy-checker"] = as_metric(r, "arena"), as_metric(r, "judge-toy-checker")
    assert config_key(run) == before
