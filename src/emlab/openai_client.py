"""What the OpenAI-compatible sampler and judges share: one async client per run, a bounded number
of requests in flight, each result (or permanent failure) handed over as soon as it exists, and
an API key that stays inside the client (never in an identity, a repr, a log line or an error).

Retries are the openai SDK's own (exponential backoff on 408/409/429/5xx, timeouts and dropped
connections, honouring ``retry-after-ms`` / ``Retry-After``); nothing here retries by hand.
Statuses that can never succeed (400, 401, 403, 404, 422) are never retried, even when a server
asks for it with ``x-should-retry``; URLs the client cannot speak are refused before any request.

Identities: ``endpoint_identity`` names an endpoint without credentials (user:password@ and query
strings are dropped) and, for a server on this machine (localhost, 127.x, ::1), without its host
and port: the same vLLM server restarted on another port is the same model, and reuses its
cache. Pass an explicit ``identity`` to tell two local servers of one model name apart.
"""

from __future__ import annotations

import asyncio
import contextvars
import ipaddress
import math
import os
import re
from typing import Awaitable, Callable, Sequence, TypeVar
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import openai

from emlab.errors import InputError

DEFAULT_BASE_URL = "https://api.openai.com/v1"
LOCAL_PLACEHOLDER_KEY = "EMPTY"  # local servers (vLLM, Ollama, tests) accept any key
NEVER_RETRY = (400, 401, 403, 404, 422)  # a retry cannot change the answer
MAX_CONCURRENCY = 1024

Item = TypeVar("Item")
Result = TypeVar("Result")

_current_item: contextvars.ContextVar[object] = contextvars.ContextVar("emlab_item")


class BackendError(RuntimeError):
    """A request to a model endpoint failed for good (after the SDK's retries), or its reply was
    unusable. The message names the endpoint and the item, never the API key."""


# --- URLs, identities, keys -----------------------------------------------------------------------

def is_local_host(host: str | None) -> bool:
    host = (host or "").lower().strip("[]")
    if host in ("localhost", "0.0.0.0") or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_base_url(url: str, what: str = "base URL") -> str:
    """``url`` if it is an absolute http(s) URL, else InputError (said at once, not after
    40 s of retries, and without echoing credentials)."""
    parts = urlsplit(url.strip())
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise InputError(f"{what} {redact_url(url)!r} must be an absolute http:// or https:// URL, "
                         f"e.g. http://localhost:8000/v1")
    try:
        parts.port
    except ValueError:
        raise InputError(f"{what} {redact_url(url)!r} has an invalid port") from None
    return url.strip()


def redact_url(url: str | None) -> str | None:
    """``url`` with any user:password@ and query-string values replaced by ``***``."""
    if url is None:
        return None
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    query = re.sub(r"=([^&]*)", "=***", parts.query) if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, "***" if parts.fragment else ""))


def url_secrets(url: str | None) -> list[str]:
    """The credential strings inside a URL (password, user, query values), for redaction."""
    if not url:
        return []
    parts = urlsplit(url)
    found = [parts.password or "", parts.username or ""]
    found += [v for v in re.findall(r"=([^&]*)", parts.query)]
    return [s for s in found if len(s) >= 4]


def endpoint_identity(base_url: str) -> str:
    """The endpoint part of a model identity: no credentials; no host or port when local."""
    parts = urlsplit(base_url)
    path = parts.path.rstrip("/")
    if is_local_host(parts.hostname):
        return f"local{path}"
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit((parts.scheme, host + port, path, "", ""))


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")


def looks_like_key(value: str) -> bool:
    """A string shaped like an API key: a known key prefix, or long and mixed like a token."""
    v = value.strip()
    if re.match(r"(sk|pk|rk|sess|org|hf|gsk|xai|key)[-_]", v, re.IGNORECASE):
        return True
    if len(v) >= 24 and re.search(r"[a-z]", v) and re.search(r"\d", v) and not v.isupper():
        return True
    return len(v) >= 40 and not v.isupper()


def check_env_name(name: str, what: str = "api_key_env") -> str:
    """``name`` if it is an environment-variable name; a key pasted by mistake is refused
    without being echoed."""
    if looks_like_key(name):
        raise InputError(f"{what} must be the NAME of an environment variable holding the key "
                         f"(e.g. OPENAI_API_KEY), not the key itself; the value given looks like "
                         f"a key and was not used or stored")
    if not _ENV_NAME.fullmatch(name):
        raise InputError(f"{what} must be an environment-variable name (letters, digits, _), "
                         f"e.g. OPENAI_API_KEY")
    return name


def resolve_api_key(base_url: str, api_key_env: str) -> str:
    """The key from ``api_key_env``; a placeholder for a local server; else a clear InputError."""
    check_env_name(api_key_env)
    key = os.environ.get(api_key_env)
    if key:
        return key
    if is_local_host(urlsplit(base_url).hostname):
        return LOCAL_PLACEHOLDER_KEY
    raise InputError(f"set the environment variable {api_key_env} to the API key for "
                     f"{redact_url(base_url)}")


# --- running items --------------------------------------------------------------------------------

OnError = Callable[[Item, str], "bool | None"]


class Endpoint:
    """An OpenAI-compatible endpoint and how hard to push it; runs one coroutine per item."""

    def __init__(self, base_url: str | None, api_key_env: str, concurrency: int, timeout: float,
                 max_retries: int):
        if not 1 <= concurrency <= MAX_CONCURRENCY:
            raise InputError(f"concurrency must be between 1 and {MAX_CONCURRENCY}")
        if not (math.isfinite(timeout) and timeout > 0):
            raise InputError("request timeout must be a positive number of seconds")
        # Explicit, so the SDK does not silently pick up OPENAI_BASE_URL and the identity stays true.
        self._url = check_base_url(base_url or DEFAULT_BASE_URL).rstrip("/")
        self.base_url = redact_url(self._url)   # what may be shown
        self.identity = endpoint_identity(self._url)
        self.concurrency = concurrency
        self.timeout = timeout
        self.max_retries = max_retries
        self._api_key = resolve_api_key(self._url, api_key_env)
        self.requests_sent = 0                  # HTTP requests, retries and abandoned ones included
        self.attempts: dict[str, int] = {}      # item key -> HTTP requests sent for it

    def __repr__(self) -> str:
        return (f"Endpoint({self.base_url!r}, concurrency={self.concurrency}, "
                f"timeout={self.timeout}, max_retries={self.max_retries})")

    def redact(self, text: str) -> str:
        """``text`` with this endpoint's key and URL credentials replaced by ``***``."""
        for secret in [self._api_key, *url_secrets(self._url)]:
            if secret and secret != LOCAL_PLACEHOLDER_KEY:
                text = text.replace(secret, "***")
        return text.replace(self._url, self.base_url or "")

    def run(self, label: str, items: Sequence[Item],
            call: Callable[[openai.AsyncOpenAI, Item], Awaitable[Result]],
            on_result: Callable[[Item, Result], None],
            on_error: OnError | None = None) -> None:
        """``call`` every item with at most ``concurrency`` in flight, ``on_result`` as each ends.

        With ``on_error``, an item that fails for good is reported as ``on_error(item, message)``
        and the others go on; when it returns True no new request starts (the ones in flight
        finish and are delivered). Without it, the first failure stops new requests and is
        raised as BackendError once the requests in flight are delivered. ``on_result`` and
        ``on_error`` run in this thread, between awaits. Needs a thread without a running loop.
        """
        if items:
            asyncio.run(self._run(label, items, call, on_result, on_error))

    def describe_failure(self, label: str, item: object, exc: BaseException) -> str:
        where = getattr(item, "label", None) or f"request {str(getattr(item, 'key', '?'))[:12]}"
        if isinstance(exc, openai.APIStatusError) and exc.status_code in NEVER_RETRY:
            tail = " (not retried: this status cannot succeed on a retry)"
        elif isinstance(exc, openai.OpenAIError) and not isinstance(exc, BackendError):
            tail = f" (after up to {self.max_retries} retries by the SDK)"
        else:
            tail = ""
        return self.redact(f"{label}: {where} failed: {_describe(exc)}{tail}")

    async def _run(self, label: str, items: Sequence[Item],
                   call: Callable[[openai.AsyncOpenAI, Item], Awaitable[Result]],
                   on_result: Callable[[Item, Result], None], on_error: OnError | None) -> None:
        pending = iter(items)  # shared by the workers: each item is taken by exactly one
        failures: list[tuple[Item, Exception]] = []
        stop = False

        async def worker() -> None:
            nonlocal stop
            for item in pending:
                token = _current_item.set(item)
                try:
                    result = await call(client, item)
                except Exception as exc:  # noqa: BLE001 - a failed item is a result
                    if on_error is None:
                        failures.append((item, exc))
                    elif on_error(item, self.describe_failure(label, item, exc)):
                        stop = True
                else:
                    on_result(item, result)
                finally:
                    _current_item.reset(token)
                if failures or stop:
                    return

        async def count_request(request) -> None:
            self.requests_sent += 1
            key = getattr(_current_item.get(None), "key", None)
            if key is not None:
                self.attempts[key] = self.attempts.get(key, 0) + 1

        async def never_retry_hopeless(response) -> None:
            if response.status_code in NEVER_RETRY:
                response.headers["x-should-retry"] = "false"

        # A fresh client per run: its connection pool belongs to this run's event loop.
        http = openai.DefaultAsyncHttpxClient(
            event_hooks={"request": [count_request], "response": [never_retry_hopeless]})
        # A query string in the base URL (Azure's api-version, a proxy's token) goes on every
        # request as the SDK's default_query: the SDK appends paths to base_url verbatim.
        parts = urlsplit(self._url)
        client = openai.AsyncOpenAI(base_url=urlunsplit(parts._replace(query="", fragment="")),
                                    api_key=self._api_key, timeout=self.timeout,
                                    max_retries=self.max_retries, http_client=http,
                                    default_query=dict(parse_qsl(parts.query)) or None)
        async with client:
            await asyncio.gather(*(worker() for _ in range(min(self.concurrency, len(items)))))
        if failures:
            item, exc = failures[0]
            more = f" ({len(failures) - 1} more in flight also failed)" if len(failures) > 1 else ""
            raise BackendError(self.describe_failure(label, item, exc) + more) from None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, openai.APITimeoutError):
        return "timed out"
    if isinstance(exc, openai.APIStatusError):
        return exc.message  # "Error code: 429 - <the server's message>"
    if isinstance(exc, openai.APIConnectionError):
        return f"connection failed ({exc.__cause__ or exc})"
    if isinstance(exc, BackendError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def first_choice(response: object, label: str):
    """The reply's first choice, or BackendError when the endpoint returned none."""
    choices = getattr(response, "choices", None)
    if not choices:
        raise BackendError(f"the endpoint's reply has no choices ({label})")
    return choices[0]


def usage_tokens(response: object) -> tuple[int, int]:
    """(prompt_tokens, completion_tokens) of a response; zeros where the server reports none."""
    usage = getattr(response, "usage", None)
    if usage is None:
        return 0, 0
    return usage.prompt_tokens or 0, usage.completion_tokens or 0
