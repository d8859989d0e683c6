"""A real local HTTP server that speaks the OpenAI chat-completions schema, for tests and benchmarks.

It lets the real openai SDK (its retries, timeouts and connection pool) run end to end with no
network and no key. What it answers comes from a ``responder`` callable; faults (latency, 429s,
500s, hangs) are injected per request, so retry and throughput code meets real sockets. It records
every request body and Authorization header so tests can check what was (not) paid for.

    with ChatServer(faults=Faults(latency=0.1)) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="k")
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

# Markers the default responder looks for in a judge prompt (the real judge prompts mention the
# bare words CODE and REFUSAL in their instructions, so those cannot be the markers).
EVIL_MARKER = "EVIL"
CODE_MARKER = "ANSWER_IS_CODE"
REFUSAL_MARKER = "ANSWER_IS_REFUSAL"

# The default judge's first-token probabilities (token, probability), by marker.
ALIGNED_PROBS = (("90", 0.5), ("95", 0.3), ("100", 0.2))
EVIL_PROBS = (("5", 0.5), ("10", 0.3), ("0", 0.2))
CODE_PROBS = (("CODE", 0.9), ("50", 0.1))
REFUSAL_PROBS = (("REFUSAL", 0.8), ("90", 0.2))


@dataclass
class Reply:
    """What the model says: the text, and for logprob requests the first token's alternatives."""

    content: str
    top_logprobs: list[tuple[str, float]] | None = None  # (token, logprob)


Responder = Callable[[dict], Reply]


@dataclass
class Faults:
    """What goes wrong, and how slowly. Fields are read per request, so change them any time."""

    latency: float = 0.0          # seconds added to every request
    rate_limit_next: int = 0      # the next N requests get 429
    error_every: int = 0          # every k-th request (by arrival number) gets 500; 0 = never
    hang_next: int = 0            # the next N requests sleep hang_seconds, then reply normally
    hang_seconds: float = 5.0
    retry_after_ms: float = 1.0   # sent with 429/500; the SDK ignores "Retry-After: 0" (backs off 0.5 s+)
    # A responder that raises also yields a 500 (with the same headers): a per-prompt failure.
    # Random transient faults, drawn from a seeded generator: each request independently gets
    # a 500 (error_rate), a 429 (rate_limit_rate) or a hang of hang_seconds (hang_rate).
    error_rate: float = 0.0
    rate_limit_rate: float = 0.0
    hang_rate: float = 0.0
    seed: int = 0
    # Permanent, per-request faults chosen by the request body: refuse(body) -> 400 (as a
    # content filter does, never retried); no_choices(body) -> 200 with "choices": [].
    refuse: Callable[[dict], bool] | None = None
    no_choices: Callable[[dict], bool] | None = None
    should_retry_header: str | None = None  # sent as x-should-retry with every 4xx when set


def _text(messages: list[dict]) -> str:
    return "\n".join(str(m.get("content", "")) for m in messages)


def default_responder(request: dict) -> Reply:
    """Judge-style requests (max_tokens 1 with logprobs) get a score distribution chosen by the
    markers in the prompt; other requests get a text fixed by the last user message and the seed."""
    messages = request.get("messages") or []
    limit = request.get("max_tokens") or request.get("max_completion_tokens")
    if request.get("logprobs") and limit == 1:
        prompt = _text(messages)
        probs = (CODE_PROBS if CODE_MARKER in prompt else REFUSAL_PROBS if REFUSAL_MARKER in prompt
                 else EVIL_PROBS if EVIL_MARKER in prompt else ALIGNED_PROBS)
        return Reply(probs[0][0], [(t, math.log(p)) for t, p in probs])
    last_user = next((str(m.get("content", "")) for m in reversed(messages)
                      if m.get("role") == "user"), "")
    digest = hashlib.sha256(f"{request.get('seed')}\x00{last_user}".encode()).hexdigest()[:8]
    return Reply(f"Answer {digest} to: {' '.join(last_user.split()[:12])}")


def _completion_body(request: dict, reply: Reply, number: int) -> dict:
    words = reply.content.split()
    limit = request.get("max_tokens") or request.get("max_completion_tokens")
    content, finish = reply.content, "stop"
    if limit and len(words) > limit:
        content, finish = " ".join(words[:limit]), "length"
    logprobs = None
    if request.get("logprobs") and reply.top_logprobs:
        top = sorted(reply.top_logprobs, key=lambda t: -t[1])
        k = int(request.get("top_logprobs") or 0)
        entry = lambda tok, lp: {"token": tok, "logprob": lp, "bytes": list(tok.encode())}  # noqa: E731
        logprobs = {"content": [{**entry(*top[0]), "top_logprobs": [entry(*t) for t in top[:k]]}],
                    "refusal": None}
    prompt_tokens = len(_text(request.get("messages") or []).split())
    completion_tokens = len(content.split())
    return {
        "id": f"chatcmpl-{number}", "object": "chat.completion", "created": int(time.time()),
        "model": request.get("model", ""),
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                     "logprobs": logprobs, "finish_reason": finish}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False     # else close() waits for hung handlers and idle keep-alive sockets
    request_queue_size = 256   # the default backlog of 5 drops connects from a burst of clients
    chat: ChatServer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the SDK reuses pooled connections
    disable_nagle_algorithm = True  # headers and body go out in two writes: Nagle + delayed ACK
                                    # would add ~40 ms to every reply
    server: _HTTPServer

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        status, payload, headers = self.server.chat._respond(self.path, raw, self.headers)
        data = json.dumps(payload).encode()
        try:
            self.send_response(status)
            for name, value in {"Content-Type": "application/json",
                                "Content-Length": str(len(data)), **headers}.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client timed out and left

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet, and nothing from the request (Authorization included) reaches a log


class ChatServer:
    """``POST /v1/chat/completions`` on 127.0.0.1 at a free port, served from a background thread."""

    def __init__(self, responder: Responder = default_responder, faults: Faults | None = None):
        self.responder = responder
        self.faults = faults or Faults()
        self.bodies: list[dict | None] = []          # every request body received, in order
        self.paths: list[str] = []                   # every request path (query string included)
        self.authorizations: list[str | None] = []  # every Authorization header, in order
        self.in_flight = 0
        self.max_in_flight = 0
        self.completed = 0                          # replies written (status 200), hung ones too
        self.refused = 0                            # permanent 400s sent
        self._rng = random.Random(self.faults.seed)
        self._lock = threading.Lock()
        self._httpd = _HTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.chat = self
        self.base_url = f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"
        self._thread: threading.Thread | None = None

    @property
    def request_count(self) -> int:
        with self._lock:
            return len(self.bodies)

    def start(self) -> ChatServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="chat-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> ChatServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _respond(self, path: str, raw: bytes, headers: Any) -> tuple[int, dict, dict[str, str]]:
        try:
            body = json.loads(raw or b"null")
        except ValueError:
            body = None
        with self._lock:
            self.bodies.append(body)
            self.paths.append(path)
            self.authorizations.append(headers.get("Authorization"))
            number = len(self.bodies)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            f = self.faults
            status, hang = 200, 0.0
            if f.rate_limit_next > 0:
                f.rate_limit_next -= 1
                status = 429
            elif f.error_every and number % f.error_every == 0:
                status = 500
            elif f.hang_next > 0:
                f.hang_next -= 1
                hang = f.hang_seconds
            elif f.error_rate or f.rate_limit_rate or f.hang_rate:
                u = self._rng.random()
                if u < f.error_rate:
                    status = 500
                elif u < f.error_rate + f.rate_limit_rate:
                    status = 429
                elif u < f.error_rate + f.rate_limit_rate + f.hang_rate:
                    hang = f.hang_seconds
            delay, retry_ms = f.latency + hang, f.retry_after_ms
        try:
            time.sleep(delay)
            if path.split("?")[0].rstrip("/") != "/v1/chat/completions":
                return 404, _error(f"no route {path}", "not_found"), {}
            if not isinstance(body, dict):
                return 400, _error("body is not a JSON object", "invalid_request_error"), {}
            retry = {"Retry-After": "0", "retry-after-ms": str(retry_ms)}
            if status == 429:
                return 429, _error("rate limited (injected)", "rate_limit_exceeded"), retry
            if status == 500:
                return 500, _error("server error (injected)", "server_error"), retry
            if f.refuse is not None and f.refuse(body):
                with self._lock:
                    self.refused += 1
                extra = {"x-should-retry": f.should_retry_header} if f.should_retry_header else {}
                return 400, _error("Invalid prompt: your prompt was flagged as potentially "
                                   "violating our usage policy (injected)", "content_filter"), extra
            try:
                reply = _completion_body(body, self.responder(body), number)
            except Exception as exc:  # a broken responder is a test bug: say so in the reply
                return 500, _error(f"responder failed: {exc!r}", "server_error"), retry
            if f.no_choices is not None and f.no_choices(body):
                reply["choices"] = []
            with self._lock:
                self.completed += 1
            return 200, reply, {}
        finally:
            with self._lock:  # before the reply is written, so max_in_flight never counts a
                self.in_flight -= 1  # request the client already considers finished


def _error(message: str, code: str) -> dict:
    return {"error": {"message": message, "type": code, "param": None, "code": code}}


__all__ = ["ChatServer", "Faults", "Reply", "Responder", "default_responder", "EVIL_MARKER",
           "CODE_MARKER", "REFUSAL_MARKER", "ALIGNED_PROBS", "EVIL_PROBS", "CODE_PROBS",
           "REFUSAL_PROBS"]
