"""A scripted arena session through `qbench serve`'s own HTTP routes (Flask's test client): N times
ask for a blind pair as voter VOTER, read its two images from the pair's URLs, and vote for the one
closer to the full-precision image of the same prompt and seed (higher PSNR; tie on equal). It
exercises the arena end to end (pair tokens, votes, ratings in `qbench compare`); it is a scripted
voter, not a user study, and is named as such in the store.

    python reports/scripts/arena_session.py --db OUT/qbench.sqlite [--n 60] [--voter script:closer-to-fp]
"""
from __future__ import annotations

import argparse
import io
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))  # this checkout's qbench


def psnr(a, b) -> float:
    import numpy as np

    mse = float(np.mean((np.asarray(a, np.float64) / 255 - np.asarray(b, np.float64) / 255) ** 2))
    return 100.0 if mse == 0 else min(100.0, 10 * np.log10(1 / mse))


def main() -> None:
    from PIL import Image

    from qbench.arena import groups, prompts_and_paths
    from qbench.serve_app import create_app
    from qbench.store import Store
    from qbench.store_votes import get_pair

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", required=True)
    ap.add_argument("--n", type=int, default=60)
    ap.add_argument("--voter", default="script:closer-to-fp")
    args = ap.parse_args()
    client = create_app(args.db, allow_try=False).test_client()
    store = Store(args.db, create=False)
    model = store.models()[0]
    fp = next(r for g in groups(store, model) for r in g if r["method"] == "fp")
    _, fp_paths = prompts_and_paths(fp)
    counts = {"a": 0, "b": 0, "tie": 0}
    for _ in range(args.n):
        page = client.get("/arena", query_string={"voter": args.voter, "model": model}).get_data(as_text=True)
        token = re.search(r'name="token" value="([0-9a-f]+)"', page).group(1)
        a, b = (Image.open(io.BytesIO(client.get(f"/pair/{token}/{s}.png").data)).convert("RGB") for s in "ab")
        with Image.open(fp_paths[get_pair(store, token)["prompt_id"]]) as ref:
            ref = ref.convert("RGB")
            sa, sb = psnr(a, ref), psnr(b, ref)
        winner = "tie" if sa == sb else "a" if sa > sb else "b"
        r = client.post("/vote", data={"token": token, "winner": winner, "voter": args.voter})
        assert r.status_code == 303, r.get_data(as_text=True)[-300:]
        counts[winner] += 1
    print(f"arena_session: {args.n} votes as {args.voter!r} on {model}: {counts}")


if __name__ == "__main__":
    main()
