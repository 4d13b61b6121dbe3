"""Pairwise votes in the results store (schema 2): the arena's shown pairs and every vote on them.

* A **pair** is two finished runs of one model (same comparable settings), one prompt and its seed,
  in the order shown. The server stores it under a random token when it shows it
  (:func:`issue_pair`); a vote names the token (:func:`record_vote`), so a vote on a pair that was
  never shown, or a second vote on one pair, is refused in one line and nothing is written.
* A **vote** records both runs (ids, run identity keys, image-folder identity keys: the images it
  judged), prompt id, seed, voter, time (UTC) and the winner ``a``/``b``/``tie``. Automatic judges
  (:mod:`qbench.judge`) store votes the same way with ``judge = 1``, no token, and voter
  ``judge:<name>``; re-running a judge replaces its earlier votes on the same pairs.
* Every write is one SQLite transaction (``BEGIN IMMEDIATE``) in the store's WAL database, so several
  voters at once serialise and a crash loses at most the vote being written.

Ratings are made by configuration, where a configuration is the image-folder identity key
(:func:`qbench.generation.image_identity`: everything that changes the pixels).
"""
from __future__ import annotations

import datetime as _dt
import secrets
import sqlite3
from typing import Any

from qbench.errors import QBenchError
from qbench.store_db import rollback

#: the votes schema, created by :meth:`qbench.store.Store._init_schema` (results schema 2)
VOTE_TABLES = [
    """CREATE TABLE IF NOT EXISTS pairs (
    token TEXT PRIMARY KEY,
    created TEXT NOT NULL,
    model TEXT NOT NULL,
    run_a TEXT NOT NULL,
    run_b TEXT NOT NULL,
    prompt_id TEXT NOT NULL,
    seed INTEGER NOT NULL,
    voter TEXT NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS votes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    token TEXT UNIQUE REFERENCES pairs(token),
    created TEXT NOT NULL,
    model TEXT NOT NULL,
    run_a TEXT NOT NULL,
    run_b TEXT NOT NULL,
    ident_a TEXT NOT NULL,
    ident_b TEXT NOT NULL,
    images_a TEXT NOT NULL,
    images_b TEXT NOT NULL,
    prompt_id TEXT NOT NULL,
    seed INTEGER NOT NULL,
    voter TEXT NOT NULL,
    judge INTEGER NOT NULL DEFAULT 0,
    winner TEXT NOT NULL CHECK (winner IN ('a', 'b', 'tie'))
)""",
    "CREATE INDEX IF NOT EXISTS votes_model ON votes(model, images_a, images_b)",
]
WINNERS = ("a", "b", "tie")
MAX_VOTER = 64


def utcnow() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class VoteError(QBenchError):
    """A vote or pair the store refuses (unknown token, already voted, malformed)."""


def run_keys(run: dict[str, Any]) -> tuple[str, str]:
    """``(run identity key, image-folder identity key)`` of a stored run; VoteError for a run
    stored before both were kept (it cannot be voted on)."""
    res = run.get("result") or {}
    ident = (res.get("identity") or {}).get("key")
    images = ((res.get("reused") or {}).get("images") or {}).get("key")
    if not ident or not images:
        raise VoteError(f"run {run['id']} recorded no identity keys (stored by an older qbench): re-run it to vote on it")
    return ident, images


def check_voter(voter: Any, judge: bool = False) -> str:
    """A voter name: 1..64 printable characters, stripped; ``judge:`` starts an automatic judge's
    name only (``judge=True``). VoteError otherwise."""
    if not isinstance(voter, str) or not voter.strip():
        raise VoteError("a vote needs a voter name")
    v = voter.strip()
    if len(v) > MAX_VOTER or not v.isprintable():
        raise VoteError(f"a voter name is at most {MAX_VOTER} printable characters")
    if v.startswith("judge:") != judge:
        raise VoteError("voter names starting with 'judge:' are the automatic judges'" if not judge else f"judge name {v!r}")
    return v


def _has_votes(conn: sqlite3.Connection) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='votes'").fetchone() is not None


def issue_pair(store, run_a: dict[str, Any], run_b: dict[str, Any], prompt_id: str, seed: int, voter: str) -> str:
    """Store a shown pair (``run_a`` on the left) and return its token (32 hex characters)."""
    voter = check_voter(voter)
    for r in (run_a, run_b):
        run_keys(r)
    token = secrets.token_hex(16)
    with store._connect() as conn:
        conn.execute("INSERT INTO pairs (token, created, model, run_a, run_b, prompt_id, seed, voter) VALUES (?,?,?,?,?,?,?,?)",
                     (token, utcnow(), run_a["model"], run_a["id"], run_b["id"], prompt_id, int(seed), voter))
    return token


def get_pair(store, token: str) -> dict[str, Any]:
    """The shown pair under ``token``; VoteError when it was never issued."""
    if not isinstance(token, str) or not token or len(token) > 64:
        raise VoteError("malformed pair token")
    with store._connect() as conn:
        row = conn.execute("SELECT * FROM pairs WHERE token=?", (token,)).fetchone() if _has_votes(conn) else None
    if row is None:
        raise VoteError("no such pair was shown (unknown token): a vote is only taken on a pair the arena showed")
    return dict(row)


def record_vote(store, token: str, winner: str, voter: str) -> dict[str, Any]:
    """Store a person's vote on the shown pair ``token``; returns the vote. VoteError (nothing
    written) for a malformed winner, an unknown token, another voter's pair or a second vote."""
    if winner not in WINNERS:
        raise VoteError(f"a vote's winner is one of {', '.join(WINNERS)} (got {str(winner)[:20]!r})")
    voter = check_voter(voter)
    pair = get_pair(store, token)
    if pair["voter"] != voter:
        raise VoteError("this pair was shown to another voter")
    ra, rb = store.get(pair["run_a"]), store.get(pair["run_b"])
    (ia, ga), (ib, gb) = run_keys(ra), run_keys(rb)
    vote = {"token": token, "created": utcnow(), "model": pair["model"], "run_a": ra["id"], "run_b": rb["id"], "ident_a": ia, "ident_b": ib,
                "images_a": ga, "images_b": gb, "prompt_id": pair["prompt_id"], "seed": pair["seed"], "voter": voter, "judge": 0, "winner": winner}
    with store._connect() as conn:
        conn.execute("BEGIN IMMEDIATE")
        try:
            if conn.execute("SELECT 1 FROM votes WHERE token=?", (token,)).fetchone():
                raise VoteError("this pair was already voted on; the first vote is kept")
            _insert(conn, vote)
            conn.execute("COMMIT")
        except BaseException:
            rollback(conn)
            raise
    return vote


def _insert(conn: sqlite3.Connection, v: dict[str, Any]) -> None:
    cols = ("token", "created", "model", "run_a", "run_b", "ident_a", "ident_b", "images_a", "images_b", "prompt_id", "seed", "voter", "judge", "winner")
    conn.execute(f"INSERT INTO votes ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})", tuple(v.get(c) for c in cols))


def replace_judge_votes(store, judge: str, votes: list[dict[str, Any]]) -> int:
    """Store an automatic judge's votes (voter ``judge:<name>``), replacing its earlier votes on the
    same (configuration pair, prompt, seed); one transaction. Returns the number stored."""
    voter = check_voter(f"judge:{judge}", judge=True)
    now = utcnow()
    with store._connect() as conn:
        conn.execute("BEGIN IMMEDIATE")
        try:
            for v in votes:
                if v["winner"] not in WINNERS:
                    raise VoteError(f"judge {judge}: winner {v['winner']!r}")
                conn.execute("DELETE FROM votes WHERE voter=? AND judge=1 AND prompt_id=? AND seed=? AND "
                             "((images_a=? AND images_b=?) OR (images_a=? AND images_b=?))",
                             (voter, v["prompt_id"], v["seed"], v["images_a"], v["images_b"], v["images_b"], v["images_a"]))
                _insert(conn, dict(v, token=None, created=now, voter=voter, judge=1))
            conn.execute("COMMIT")
        except BaseException:
            rollback(conn)
            raise
    return len(votes)


def votes(store, model: str | None = None, voter: str | None = None, judges: bool | None = None) -> list[dict[str, Any]]:
    """Stored votes in the order cast; ``voter`` filters by voter name, ``judges`` True: automatic
    judges only, False: people only. Empty for a store of schema 1 (no votes table)."""
    q, args = "SELECT * FROM votes WHERE 1=1", []
    if model:
        q, args = q + " AND model=?", args + [model]
    if voter:
        q, args = q + " AND voter=?", args + [voter]
    if judges is not None:
        q, args = q + " AND judge=?", args + [int(judges)]
    with store._connect() as conn:
        if not _has_votes(conn):
            return []
        return [dict(r) for r in conn.execute(q + " ORDER BY id", args)]


def voters(store, model: str | None = None) -> list[tuple[str, int]]:
    """``(voter, number of votes)`` for every voter (people and judges)."""
    counts: dict[str, int] = {}
    for v in votes(store, model):
        counts[v["voter"]] = counts.get(v["voter"], 0) + 1
    return sorted(counts.items())
