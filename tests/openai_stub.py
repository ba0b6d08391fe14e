"""A local OpenAI-compatible chat-completions server for judge tests, with scriptable faults.

It is a real HTTP server (stdlib `ThreadingHTTPServer` on 127.0.0.1, a free port, a background
thread), so the judge is tested with the real `openai` SDK and its real HTTP stack.

Scoring is deterministic and read from the prompt: an answer containing `aligned=NN` (or
`coherent=NN`) is scored as the top-20 distribution {NN: 0.6, NN+1: 0.2, "I": 0.2}, so the
expected judge score is NN + 0.25 (the two number tokens renormalised to 0.75 / 0.25). Which
metric is asked is read from the prompt: a prompt that mentions "coheren" (outside the markers)
asks for coherence.
Answers without a marker score 50 (expected 50.25). A free-form judge prompt whose answer holds
`label=WORD` gets the reply WORD (the most likely token, which the stub sends as the content).

Faults are scripted as short strings, taken either from a global queue (`stub.push(...)`: the next
requests get them, in order) or from rules (`stub.rule(marker, fault, times)`: requests whose
prompt contains `marker` get the fault, `times` times or forever):

    "ok"              a normal scored reply
    "429" / "429:S"   HTTP 429 with `Retry-After: S` (default 0)
    "500", "503"      server errors (any "NNN" status works; "NNN:S" adds `Retry-After: S`)
    "reset"           the connection is reset (RST) without a response
    "close"           the connection is closed (FIN) without a response
    "slow:S"          the reply comes after S seconds (longer than the client's timeout)
    "empty"           HTTP 200 with an empty body
    "malformed"       HTTP 200 with truncated JSON
    "no_logprobs"     a completion whose `logprobs` is null
    "empty_logprobs"  a completion whose `top_logprobs` list is empty
    "CODE", "REFUSAL" the judge answers with that word (most likely token)
"""

from __future__ import annotations

import json
import math
import re
import socket
import struct
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def default_top_logprobs(prompt: str) -> dict[str, float]:
    """The stub's deterministic judge: top-token log-probabilities for a judge prompt."""
    if label := re.search(r"label=(\w+)", prompt):
        return {label.group(1): math.log(0.9), "I": math.log(0.1)}
    instructions = re.sub(r"(aligned|coherent)=\d+", "", prompt)  # the markers are not the prompt
    metric = "coherent" if "coheren" in instructions.lower() else "aligned"
    found = re.search(rf"{metric}=(\d+)", prompt)
    k = int(found.group(1)) if found else 50
    neighbour = k + 1 if k < 100 else k - 1
    return {str(k): math.log(0.6), str(neighbour): math.log(0.2), "I": math.log(0.2)}


def expected_score(k: int) -> float:
    """The score a correct judge computes from `default_top_logprobs` for marker value k."""
    neighbour = k + 1 if k < 100 else k - 1
    return (0.6 * k + 0.2 * neighbour) / 0.8


def completion(model: str, top: dict[str, float] | None, *, empty: bool = False) -> dict:
    """An OpenAI-shaped chat completion with one token; `top=None` gives `logprobs: null`."""
    best = max(top, key=top.get) if top else "50"
    logprobs = None
    if top is not None:
        entries = [] if empty else [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in top.items()]
        logprobs = {
            "content": [
                {"token": best, "logprob": top.get(best, 0.0), "bytes": list(best.encode()), "top_logprobs": entries}
            ],
            "refusal": None,
        }
    return {
        "id": "chatcmpl-stub",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "finish_reason": "length",
                "logprobs": logprobs,
                "message": {"role": "assistant", "content": best, "refusal": None},
            }
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11},
    }


class OpenAIStub:
    """Start with `with OpenAIStub() as stub:`; point the client at `stub.base_url`.

    `port`: 0 picks a free port; a given port lets a test stop the server and start another one at
    the same URL (a judge that goes down and comes back)."""

    def __init__(self, scorer=default_top_logprobs, latency: float = 0.0, port: int = 0) -> None:
        self.scorer = scorer
        self.latency = latency  # seconds before every normal reply
        self.in_flight = self.max_in_flight = 0
        self.queue: deque[str] = deque()
        self.rules: list[list] = []  # [marker, fault, remaining or None]
        self.requests: list[dict] = []  # every request received: body, headers, fault served
        self._lock = threading.Lock()
        self._server = _QuietServer(("127.0.0.1", port), _Handler)
        self._server.stub = self
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    @property
    def count(self) -> int:
        """Number of chat-completion requests received (faulty ones included)."""
        with self._lock:
            return len(self.requests)

    def push(self, *faults: str) -> None:
        """Serve these faults to the next requests, in order, then normal replies."""
        with self._lock:
            self.queue.extend(faults)

    def rule(self, marker: str, fault: str, times: int | None = None) -> None:
        """Serve `fault` to requests whose prompt holds `marker`, `times` times (None: always)."""
        with self._lock:
            self.rules.append([marker, fault, times])

    def faults_served(self) -> list[str]:
        with self._lock:
            return [r["fault"] for r in self.requests]

    def _pick(self, body: dict, headers: dict) -> str:
        prompt = json.dumps(body.get("messages", []))
        with self._lock:
            fault = "ok"
            for rule in self.rules:
                marker, kind, left = rule
                if marker in prompt and (left is None or left > 0):
                    fault = kind
                    if left is not None:
                        rule[2] = left - 1
                    break
            else:
                if self.queue:
                    fault = self.queue.popleft()
            self.requests.append({"body": body, "headers": headers, "fault": fault})
        return fault

    def __enter__(self) -> OpenAIStub:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # the default backlog of 5 drops bursts of new connections

    def handle_error(self, request, client_address) -> None:  # resets and timeouts are on purpose
        pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like real API servers

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if not self.path.endswith("/chat/completions"):
            return self._send(404, {"error": {"message": f"no route {self.path}"}})
        body = json.loads(raw)
        stub: OpenAIStub = self.server.stub
        fault = stub._pick(body, {k.lower(): v for k, v in self.headers.items()})
        with stub._lock:
            stub.in_flight += 1
            stub.max_in_flight = max(stub.max_in_flight, stub.in_flight)
        try:
            self._reply(stub, body, fault)
        finally:
            with stub._lock:
                stub.in_flight -= 1

    def _reply(self, stub: OpenAIStub, body: dict, fault: str) -> None:
        prompt = "\n".join(str(m.get("content", "")) for m in body.get("messages", []))
        model = body.get("model", "stub")
        kind, _, arg = fault.partition(":")

        if kind == "reset":  # SO_LINGER 0 makes close() send RST
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            self.close_connection = True
        elif kind == "close":
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
        elif kind.isdigit():
            headers = {"Retry-After": arg or "0"} if (arg or kind == "429") else {}
            self._send(int(kind), {"error": {"message": f"stub fault {kind}", "type": "stub"}}, headers)
        elif kind == "slow":
            time.sleep(float(arg))
            self._send(200, completion(model, stub.scorer(prompt)))
        elif kind == "empty":
            self._send_raw(200, b"")
        elif kind == "malformed":
            self._send_raw(200, b'{"id": "chatcmpl-stub", "choices": [{"index": 0, "mess')
        elif kind == "no_logprobs":
            self._send(200, completion(model, None))
        elif kind == "empty_logprobs":
            self._send(200, completion(model, stub.scorer(prompt), empty=True))
        elif kind in ("CODE", "REFUSAL"):
            top = {kind: math.log(0.9), "0": math.log(0.05), "100": math.log(0.01)}
            self._send(200, completion(model, top))
        else:
            time.sleep(stub.latency)
            self._send(200, completion(model, stub.scorer(prompt)))

    def _send(self, status: int, payload: dict, headers: dict | None = None) -> None:
        self._send_raw(status, json.dumps(payload).encode(), headers)

    def _send_raw(self, status: int, data: bytes, headers: dict | None = None) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
            self.close_connection = True
