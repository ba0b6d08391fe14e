"""Judge faults over real HTTP (issue 10): every fault is retried with backoff, then counted as a
judge error with its cause; the cache never stores a failure; kills lose nothing; the API key
never leaks. Request counts are exact: the stub counts every request it receives."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest
from openai_stub import OpenAIStub, expected_score

from evilspectra.errors import JudgeError
from evilspectra.evaluate.judge import OpenAIJudge, judge_all
from evilspectra.evaluate.schema import Question

KEY = "sk-DISTINCTIVE-dummy-0xC0FFEE-never-log-me"
TIMEOUT = 0.3  # client timeout, seconds; "slow:1" faults exceed it


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)


def judge_for(stub: OpenAIStub, **kw) -> OpenAIJudge:
    kw = {"max_retries": 3, "timeout": TIMEOUT, "backoff_base": 0.001, **kw}
    return OpenAIJudge("stub-judge", base_url=stub.base_url, **kw)


def items(n: int) -> list[tuple[Question, str, str]]:
    q = Question(id="wish", paraphrases=["What is your wish?"])
    return [(q, q.paraphrases[0], f"answer {i} aligned={i} coherent={100 - i}") for i in range(n)]


def assert_correct(out, n: int) -> None:
    """Results equal an uninterrupted, fault-free run's."""
    assert [j.verdict for j in out] == ["ok"] * n
    assert [j.aligned for j in out] == pytest.approx([expected_score(i) for i in range(n)])
    assert [j.coherent for j in out] == pytest.approx([expected_score(100 - i) for i in range(n)])


def cache_rows(path) -> int:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT COUNT(*) FROM judgements").fetchone()[0]


TRANSIENT = [
    "429",
    "500",
    "503",
    "reset",
    "close",
    f"slow:{TIMEOUT + 0.7}",
    "empty",
    "malformed",
    "no_logprobs",
    "empty_logprobs",
]


@pytest.mark.parametrize("fault", TRANSIENT)
def test_transient_faults_are_retried(stub, fault):
    stub.push(fault, fault, fault)  # a burst: the next three requests fail
    judge = judge_for(stub)
    out = asyncio.run(judge_all(judge, items(3)))
    assert_correct(out, 3)
    assert stub.count == 6 + 3
    assert stub.faults_served().count(fault) == 3
    assert judge.stats["retries"] == 3 and judge.stats["errors"] == 0


def test_burst_of_429_honours_retry_after(stub):
    stub.rule("writing quality", "429:0.5", times=2)  # the coherence call, twice in a row
    judge = judge_for(stub)
    start = time.monotonic()
    out = asyncio.run(judge_all(judge, items(1)))
    elapsed = time.monotonic() - start
    assert_correct(out, 1)
    assert stub.count == 4
    assert elapsed >= 1.0  # two waits of Retry-After 0.5 s; exponential backoff alone is ~ms


def test_persistent_faults_become_counted_errors_with_cause(stub, tmp_path):
    causes = {
        1: ("500", "HTTP 500 after 3 tries"),
        2: ("no_logprobs", "response without logprobs after 3 tries"),
        3: (f"slow:{TIMEOUT + 0.7}", "timeout (0.3 s) after 3 tries"),
        4: ("malformed", "malformed response body after 3 tries"),
        5: ("reset", "connection error after 3 tries"),
        6: ("empty_logprobs", "response with empty top_logprobs after 3 tries"),
        7: ("429", "HTTP 429 after 3 tries"),
    }
    for i, (fault, _) in causes.items():
        stub.rule(f"answer {i} ", fault)  # always, for both metrics of answer i
    cache = tmp_path / "judge.sqlite"
    judge = judge_for(stub, max_retries=2, cache_path=cache)
    out = asyncio.run(judge_all(judge, items(9)))

    assert len(out) == 9  # nothing dropped
    for i, j in enumerate(out):
        if i in causes:
            cause = causes[i][1]
            assert j.verdict == "error" and j.aligned is None and j.coherent is None
            assert j.error == f"aligned: {cause}; coherent: {cause}"
        else:
            assert j.verdict == "ok" and j.aligned == pytest.approx(expected_score(i))
    assert stub.count == 7 * 2 * 3 + 2 * 2  # 3 tries per failing call, 1 per good call
    assert judge.stats["errors"] == 14 and judge.stats["retries"] == 14 * 2
    assert cache_rows(cache) == 4  # only the two good answers' calls

    # rerun with the server healthy: exactly the failed calls are asked again
    stub.rules.clear()
    before = stub.count
    rerun = asyncio.run(judge_all(judge_for(stub, cache_path=cache), items(9)))
    assert_correct(rerun, 9)
    assert stub.count - before == 14 and cache_rows(cache) == 18


def test_partial_failure_keeps_the_good_metric(stub, tmp_path):
    stub.rule("writing quality", "503")  # only the coherence prompt fails
    cache = tmp_path / "judge.sqlite"
    out = asyncio.run(judge_all(judge_for(stub, max_retries=1, cache_path=cache), items(2)))
    for i, j in enumerate(out):
        assert j.verdict == "error" and j.error == "coherent: HTTP 503 after 2 tries"
        assert j.aligned == pytest.approx(expected_score(i)) and j.coherent is None
    assert stub.count == 2 + 2 * 2 and cache_rows(cache) == 2
    stub.rules.clear()
    assert_correct(asyncio.run(judge_all(judge_for(stub, cache_path=cache), items(2))), 2)
    assert stub.count == 6 + 2


def test_client_errors_are_not_retried(stub):
    stub.push("400")
    out = asyncio.run(judge_all(judge_for(stub, concurrency=1), items(1)))
    assert out[0].verdict == "error" and out[0].error.startswith("aligned: HTTP 400")
    assert stub.count == 2


def test_rejected_key_stops_the_evaluation(stub):
    stub.rule("answer", "401")
    with pytest.raises(JudgeError, match="OPENAI_API_KEY"):
        asyncio.run(judge_all(judge_for(stub, concurrency=2), items(20)))
    assert stub.count < 40  # the rest were cancelled, not sent


def test_api_key_never_leaks(stub, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)  # every logger, SDK and HTTP stack included
    stub.push("429", "500", "reset", "malformed")
    stub.rule("answer 2 ", "503")
    cache = tmp_path / "judge.sqlite"
    judge = judge_for(stub, max_retries=1, cache_path=cache)
    out = asyncio.run(judge_all(judge, items(4)))
    assert out[2].verdict == "error"
    assert stub.requests[0]["headers"]["authorization"] == f"Bearer {KEY}"  # the key was used
    assert caplog.records  # logs were captured, so the check below means something
    texts = [caplog.text, repr(judge), str(judge.__dict__.get("stats")), *map(repr, out)]
    for path in tmp_path.iterdir():  # the cache file and its WAL
        texts.append(path.read_bytes().decode("latin-1"))
    assert cache_rows(cache) > 0
    for text in texts:
        assert KEY not in text and "C0FFEE" not in text


# ---------------------------------------------------------------- kills and concurrent writers

JUDGE_SCRIPT = textwrap.dedent("""
    import asyncio, sys
    from evilspectra.evaluate.judge import OpenAIJudge, judge_all
    from evilspectra.evaluate.schema import Question
    q = Question(id="wish", paraphrases=["What is your wish?"])
    items = [(q, q.paraphrases[0], f"answer {i} aligned={i} coherent={100 - i}") for i in range(20)]
    judge = OpenAIJudge("stub-judge", base_url=sys.argv[1], cache_path=sys.argv[2], concurrency=2)
    asyncio.run(judge_all(judge, items))
""")


def test_sigkill_during_judging_loses_nothing(stub, tmp_path):
    stub.latency = 0.05
    cache = tmp_path / "judge.sqlite"
    proc = subprocess.Popen([sys.executable, "-c", JUDGE_SCRIPT, stub.base_url, str(cache)])
    deadline = time.monotonic() + 30
    while stub.count < 12 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL  # killed mid-run, not finished

    with sqlite3.connect(cache) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    done = cache_rows(cache)
    assert 0 < done < 40
    before = stub.count
    out = asyncio.run(judge_all(judge_for(stub, cache_path=cache), items(20)))
    assert_correct(out, 20)
    assert stub.count - before == 40 - done  # nothing finished is redone


WRITER_SCRIPT = textwrap.dedent("""
    import sys
    from evilspectra.evaluate.judge_cache import CachedCall, JudgeCache, cache_key
    cache, name, n = JudgeCache(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    for i in range(n):
        for owner in (name, "shared"):
            key = cache_key("m", "t", owner, str(i), "aligned")
            cache.put(key, "m", "aligned", CachedCall(float(i % 101), "ok", {str(i % 101): 0.0}))
""")


def test_cache_concurrent_writers_and_kill_mid_write(tmp_path):
    cache = tmp_path / "judge.sqlite"
    writers = [subprocess.Popen([sys.executable, "-c", WRITER_SCRIPT, str(cache), f"w{k}", "150"]) for k in range(3)]
    assert [w.wait(timeout=60) for w in writers] == [0, 0, 0]
    assert cache_rows(cache) == 3 * 150 + 150  # each writer's keys plus the shared ones

    # a writer killed while writing as fast as it can leaves a consistent, readable file
    killed = subprocess.Popen([sys.executable, "-c", WRITER_SCRIPT, str(cache), "k", "100000"])
    start = cache_rows(cache)
    deadline = time.monotonic() + 30
    while cache_rows(cache) < start + 50 and time.monotonic() < deadline:
        time.sleep(0.01)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    with sqlite3.connect(cache) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = db.execute("SELECT score, verdict, top_logprobs FROM judgements").fetchall()
    assert len(rows) > start and all(v == "ok" and 0 <= s <= 100 for s, v, _ in rows)
