"""A persistent cache of judge calls, so that rerunning an evaluation costs no judge calls.

One sqlite file (stdlib), one row per judge call, keyed by the sha256 of (judge model, prompt
template, question, answer, metric, endpoint); the endpoint is the judge's base URL without
credentials, left out for the SDK's default endpoint (so caches of earlier versions stay valid).
Only successful calls are stored: a score (or no score, when the judge answered but its number
tokens carried too little mass) and its verdict, or, for a free-form judge call, the judge's reply
text. Failures, and replies without a single number token, are never stored: a rerun asks again.
A full disk ("database or disk is full") is a DiskFullError naming the cache file.

Durability: WAL journal and one transaction per write, so several processes may write the same
file at once and a process killed mid-write leaves the file consistent (sqlite rolls the torn
transaction back on the next open).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from evilspectra.evaluate.schema import Verdict
from evilspectra.rundir import DiskFullError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS judgements (
    key TEXT PRIMARY KEY,        -- sha256 hex of the identity below
    model TEXT NOT NULL,         -- judge model name
    metric TEXT NOT NULL,        -- e.g. aligned, coherent
    score REAL,                  -- 0..100, NULL when the judge gave no score
    verdict TEXT NOT NULL,       -- ok | CODE | REFUSAL
    top_logprobs TEXT NOT NULL,  -- JSON {token: natural-log probability}, to recompute scores
    created REAL NOT NULL,       -- unix time
    text TEXT                    -- a free-form judge call's reply; NULL for scored calls
)
"""


def cache_key(model: str, template: str, question: str, answer: str, metric: str, endpoint: str | None = None) -> str:
    """sha256 hex of the judge call's identity (JSON-encoded, so fields cannot run together).
    `endpoint`: the judge's public base URL; None (the SDK's default) keeps the earlier keys."""
    fields = [model, template, question, answer, metric] + ([endpoint] if endpoint is not None else [])
    identity = json.dumps(fields, ensure_ascii=False)
    return hashlib.sha256(identity.encode("utf-8")).hexdigest()


_LOW_SPACE = 1 << 20  # bytes: an I/O error with less than this left on the cache's filesystem is a full disk


def _space_left(path: Path) -> int:
    """Bytes free for unprivileged writers on the filesystem holding `path`."""
    stat = os.statvfs(path.parent)
    return stat.f_bavail * stat.f_frsize


@dataclass(frozen=True)
class CachedCall:
    """One stored judge call: its score (None if no score) and verdict, or a free-form reply `text`."""

    score: float | None
    verdict: Verdict  # never "error": only successful calls are cached
    top_logprobs: dict[str, float]
    text: str | None = None


class JudgeCache:
    """sqlite-backed map from cache_key(...) to CachedCall. Use one instance per process."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._disk_full():
            # autocommit mode: each `with self._db:` block below is one explicit transaction
            self._db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process kills
            self._db.execute(_SCHEMA)
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(judgements)")}
            if "text" not in columns:  # a cache file from before free-form judge calls: keep its rows
                self._db.execute("ALTER TABLE judgements ADD COLUMN text TEXT")

    @contextlib.contextmanager
    def _disk_full(self) -> Iterator[None]:
        """sqlite's "database or disk is full" -> DiskFullError naming the cache file (the torn
        transaction is rolled back by sqlite: every row stored before is intact)."""
        try:
            yield
        except sqlite3.OperationalError as exc:
            # sqlite says "database or disk is full" when a page write fails, but "disk I/O error"
            # when creating its WAL index (-shm) on a full disk: both mean no space when none is left
            if "full" not in str(exc) and not ("I/O error" in str(exc) and _space_left(self.path) < _LOW_SPACE):
                raise
            raise DiskFullError(
                f"{self.path}: disk full while writing the judge cache (sqlite: {exc}); the calls cached "
                "so far are intact; free space and rerun (cached calls are not paid again)"
            ) from None

    def get(self, key: str) -> CachedCall | None:
        row = self._db.execute(
            "SELECT score, verdict, top_logprobs, text FROM judgements WHERE key = ?", (key,)
        ).fetchone()
        if row is None:
            return None
        return CachedCall(score=row[0], verdict=row[1], top_logprobs=json.loads(row[2]), text=row[3])

    def put(self, key: str, model: str, metric: str, call: CachedCall) -> None:
        """Store one successful call; callers must never pass failures."""
        if call.verdict not in ("ok", "CODE", "REFUSAL"):
            raise ValueError(f"only successful judge calls are cached, not {call.verdict!r}")
        with self._disk_full(), self._db:  # BEGIN ... COMMIT, rolled back on error
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "INSERT OR REPLACE INTO judgements (key, model, metric, score, verdict, top_logprobs, created, text) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (key, model, metric, call.score, call.verdict, json.dumps(call.top_logprobs), time.time(), call.text),
            )

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM judgements").fetchone()[0]

    def close(self) -> None:
        self._db.close()
