"""``qbench serve``: a local web app (Flask) over a results store.

* **Gallery** (``/gallery``): one prompt and seed across every comparable configuration of a model
  (:func:`qbench.arena.groups`), side by side, each with its per-image metrics and its
  |difference| map to the baseline (``fp``); filters by model, settings group and configuration
  name; the prompt list ordered worst first for a chosen per-image metric (the worst score any
  shown quantized configuration got on it).
* **Arena** (``/arena``): a blind pair (two configurations, same prompt and seed, random order)
  stored with a random token when shown; the vote (left / right / tie) names the token, so a vote on
  a pair never shown, a second vote, or a malformed one is refused (HTTP 400/409, nothing stored).
  People's and automatic judges' Bradley-Terry ratings with bootstrap intervals under it.
* **Try it** (``/try``): a typed prompt generated live by chosen configurations
  (:mod:`qbench.serve_try`).

Images are served by id only (run id + prompt position, pair token, try-it id), never by a path
from the request (:mod:`qbench.serve_data`). Listens on 127.0.0.1 unless ``--host`` says otherwise.
Served by Werkzeug's threaded server (Flask's ``app.run``): a local tool for a few people, not a
public web server.
"""
from __future__ import annotations

import secrets
from typing import Any

from qbench.errors import QBenchError

try:
    from flask import (
        Flask,
        Response,
        abort,
        redirect,
        render_template,
        request,
        url_for,
    )
    from jinja2 import DictLoader
except ImportError:  # pragma: no cover - the optional extra is missing
    Flask = None  # type: ignore[assignment,misc]


def _need_flask() -> None:
    if Flask is None:
        raise QBenchError("qbench serve needs Flask: pip install 'qbench[serve]'")


def create_app(db: str, allow_try: bool = True) -> Flask:
    """The web app over the results database ``db`` (QBenchError: no such store, not ours, newer)."""
    _need_flask()
    from qbench.serve_data import NotFound, StoreView, diff_png, inside, read_png
    from qbench.serve_pages import TEMPLATES
    from qbench.serve_try import TryIt
    from qbench.store_votes import VoteError

    view = StoreView(db)
    writer, write_error = None, None
    try:
        from qbench.store import Store

        writer = Store(db)  # the votes tables: a store of schema 1 migrates now (one transaction)
    except QBenchError as e:
        write_error = str(e)
    tries = TryIt()
    app = Flask("qbench.serve")
    app.jinja_loader = DictLoader(TEMPLATES)

    def page(name: str, title: str, **kw: Any) -> str:
        return render_template(f"{name}.html", title=title, page=name, db=db, **kw)

    def error(status: int, message: str):
        return page("error", str(status), status=status, message=message), status

    @app.before_request
    def _same_origin_posts():
        """A POST (a vote, a try-it generation) from a page of another site is refused: its
        ``Origin`` (or, without one, ``Referer``) must be this server (a cross-site request forgery
        guard; browsers send ``Origin`` on cross-site POSTs)."""
        if request.method != "POST":
            return None
        from urllib.parse import urlsplit

        src = request.headers.get("Origin") or request.headers.get("Referer")
        if src and urlsplit(src).netloc != request.host:
            return error(403, f"a POST from another site ({urlsplit(src).netloc or src[:40]}) is refused")
        return None

    @app.errorhandler(NotFound)
    def _not_found(e):
        return error(404, str(e))

    @app.errorhandler(VoteError)
    def _bad_vote(e):
        return error(409 if "already voted" in str(e) else 400, str(e))

    @app.errorhandler(QBenchError)
    def _qbench(e):
        return error(400, str(e))

    def int_arg(name: str, default: int | None = None) -> int | None:
        v = request.values.get(name)
        if v in (None, ""):
            return default
        try:
            return int(v)
        except ValueError:
            raise NotFound(f"{name} must be a whole number") from None

    def png(data: bytes) -> Response:
        return Response(data, mimetype="image/png", headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"})

    @app.route("/")
    def index():
        return redirect(url_for("gallery"))

    @app.route("/gallery")
    def gallery():
        g = view.gallery(request.args.get("model"), int_arg("group", 0), request.args.get("metric") or None,
                         (request.args.get("q") or "")[:80], int_arg("prompt"))
        return page("gallery", "gallery", g=g)

    @app.route("/img/<run_id>/<int:index>")
    def image(run_id: str, index: int):
        return png(read_png(view.image_file(view.run(run_id), index)))

    @app.route("/diff/<run_id>/<base_id>/<int:index>")
    def diff(run_id: str, base_id: str, index: int):
        return png(diff_png(view.image_file(view.run(run_id), index), view.image_file(view.run(base_id), index)))

    def shown_pair(model: str, voter: str) -> dict[str, Any] | None:
        from qbench.store_votes import issue_pair

        rng = secrets.SystemRandom()
        gs = [g for g in view.groups(model) if len(g) > 1]
        if not gs:
            return None
        ra, rb = rng.sample(rng.choice(gs), 2)
        (pa, fa), (_, fb) = view.prompts_and_paths(ra), view.prompts_and_paths(rb)
        both = [i for i, p in enumerate(pa) if p.id in fa and p.id in fb]
        if not both:
            return None
        i = rng.choice(both)
        token = issue_pair(writer, ra, rb, pa[i].id, _seed(ra, pa[i]), voter)
        return {"token": token, "prompt": pa[i].text}

    @app.route("/arena")
    def arena():
        from qbench.arena import configuration_ratings, label, rating_names
        from qbench.store_votes import check_voter, voters

        model = view.model_or_default(request.args.get("model"))
        voter = request.args.get("voter") or ""
        pair, why = None, ""
        if voter:
            voter = check_voter(voter)
            if writer is None:
                why = f"votes cannot be stored: {write_error}"
            else:
                pair = shown_pair(model, voter)
                why = "" if pair else f"no two comparable {model} configurations with images to vote on"
        by_images = {r["_images"]: label(r) for g in view.groups(model) for r in g}

        def rows(name: str) -> list[dict[str, Any]]:
            table = configuration_ratings(view.store(), model, name)
            out = [dict(v, label=by_images.get(k, k[:12])) for k, v in table.items()]
            return sorted(out, key=lambda r: -(r["rating"] or 0))

        names = rating_names(view.store(), model)
        arena_voters = [v for v, _ in voters(view.store(), model) if not v.startswith("judge:")]
        return page("arena", "arena", model=model, voter=voter, pair=pair, why=why, stored=(request.args.get("stored") or "")[:200],
                    people=rows("arena"), arena_voters=arena_voters, judges=[(n[len("judge-"):], rows(n)) for n in names if n != "arena"])

    @app.route("/pair/<token>/<side>.png")
    def pair_image(token: str, side: str):
        from qbench.store_votes import get_pair

        if side not in ("a", "b"):
            abort(404)
        try:
            p = get_pair(view.store(), token)
        except VoteError as e:
            raise NotFound(str(e)) from None
        run = view.run(p["run_a" if side == "a" else "run_b"])
        prompts, _ = view.prompts_and_paths(run)
        index = next((i for i, x in enumerate(prompts) if x.id == p["prompt_id"]), -1)
        return png(read_png(view.image_file(run, index)))

    @app.route("/vote", methods=["POST"])
    def vote():
        from qbench.arena import label
        from qbench.store_votes import record_vote

        if writer is None:
            raise QBenchError(f"votes cannot be stored: {write_error}")
        v = record_vote(writer, request.form.get("token", ""), request.form.get("winner", ""), request.form.get("voter", ""))
        names = {"a": "left", "b": "right", "tie": "tie"}
        said = f"{names[v['winner']]} (left: {label(view.run(v['run_a']))}, right: {label(view.run(v['run_b']))})"
        return redirect(url_for("arena", model=v["model"], voter=v["voter"], stored=said), code=303)

    @app.route("/try", methods=["GET", "POST"])
    def try_it():
        from qbench.arena import label

        model = view.model_or_default(request.values.get("model"))
        configs = [{"id": r["id"], "label": label(r)} for g in view.groups(model)[:1] for r in g]
        chosen = request.form.getlist("run") if request.method == "POST" else [c["id"] for c in configs]
        prompt, results = (request.form.get("prompt") or "")[:400], []
        if request.method == "POST":
            if not allow_try:
                raise QBenchError("live generation is off (qbench serve --no-try)")
            known = {c["id"]: c["label"] for c in configs}
            if not chosen or any(c not in known for c in chosen):
                raise NotFound("pick one or more of the listed configurations")
            for rid in chosen:
                out = tries.generate(view.run(rid), prompt)
                results.append(dict(out, label=known[rid]))
        return page("try", "try it", model=model, configs=configs, chosen=chosen, prompt=prompt, results=results, enabled=allow_try)

    @app.route("/try/img/<try_id>")
    def try_image(try_id: str):
        try:
            path, folder = tries.image(try_id)
        except KeyError:
            raise NotFound("no such generated image (the server was restarted?)") from None
        return png(read_png(inside(path, folder)))

    return app


def _seed(run: dict[str, Any], prompt) -> int:
    from qbench.arena import seed_of

    return seed_of(run, prompt)


def main(args, db: str) -> int:
    """``qbench serve``: refuse a bad store or port in one line, then serve until interrupted."""
    _need_flask()
    if not 0 < args.port < 65536:
        raise QBenchError(f"--port {args.port}: a port is 1..65535")
    app = create_app(db, allow_try=not args.no_try)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"qbench serve: listening on {args.host}: reachable from other hosts", flush=True)
    print(f"qbench serve: http://{args.host}:{args.port}/ (store {db}; Ctrl-C stops)", flush=True)
    try:
        app.run(host=args.host, port=args.port, threaded=True, debug=False, use_reloader=False)
    except OSError as e:
        raise QBenchError(f"cannot listen on {args.host}:{args.port}: {e.strerror}") from None
    return 0
