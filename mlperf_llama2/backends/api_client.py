"""A small blocking HTTP client for OpenAI-compatible servers (standard library only).

`ServerPool` holds the servers of `--api-server`; `acquire()` picks the one with the fewest
outstanding tokens (prompt + max new tokens of its in-flight requests; ties: fewest requests),
never more than `concurrency` requests per server. `with_retries` runs one request function with
exponential backoff on retryable failures (5xx, 408, 429, timeouts, connection errors); another 4xx
or a bad body fails at once. Every loop here is bounded by the retry count, every wait by a timeout.
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
import threading
import time
import urllib.parse
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, TypeVar

from mlperf_llama2.errors import UserError

log = logging.getLogger(__name__)

T = TypeVar("T")
MAX_BACKOFF_S = 30.0
MODELS_CHECK_TIMEOUT_S = 10.0


class RequestError(Exception):
    """A request failed; `retryable` says whether trying again may help."""

    def __init__(self, message: str, *, retryable: bool):
        super().__init__(message)
        self.retryable = retryable


@dataclass
class Server:
    """One server base URL and its current load."""

    base_url: str
    scheme: str
    host: str
    port: int
    prefix: str  # path before /v1, usually ""
    in_flight: int = 0
    outstanding_tokens: int = 0

    @classmethod
    def from_url(cls, url: str) -> "Server":
        try:
            parts = urllib.parse.urlsplit(url)
            port = parts.port  # ValueError for a port that is not a number in 0..65535
        except ValueError as exc:
            raise UserError(f"--api-server {url!r}: {exc}; expected a base URL like http://127.0.0.1:8000") from None
        if parts.scheme not in ("http", "https") or not parts.hostname or port == 0:
            raise UserError(f"--api-server {url!r}: expected a base URL like http://127.0.0.1:8000")
        prefix = parts.path.rstrip("/")
        if prefix.endswith("/v1"):
            prefix = prefix[: -len("/v1")]
        port = port or (443 if parts.scheme == "https" else 80)
        return cls(base_url=url, scheme=parts.scheme, host=parts.hostname, port=port, prefix=prefix)

    def connect(self, timeout_s: float) -> http.client.HTTPConnection:
        cls = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
        return cls(self.host, self.port, timeout=timeout_s)


def _classify(exc: BaseException, what: str) -> RequestError:
    if isinstance(exc, RequestError):
        return exc
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return RequestError(f"{what}: timed out", retryable=True)
    if isinstance(exc, (ConnectionError, http.client.HTTPException, OSError)):
        return RequestError(f"{what}: {type(exc).__name__}: {exc}", retryable=True)
    return RequestError(f"{what}: {type(exc).__name__}: {exc}", retryable=False)


RETRYABLE_4XX = (408, 429)  # request timeout, too many requests: the server asks to come back later


def _check_status(response: http.client.HTTPResponse, what: str) -> None:
    if 200 <= response.status < 300:
        return
    detail = response.read(2000).decode("utf-8", "replace").strip().replace("\n", " ")
    raise RequestError(f"{what}: HTTP {response.status}: {detail}",
                       retryable=response.status >= 500 or response.status in RETRYABLE_4XX)


def post_json(server: Server, path: str, body: dict[str, Any], timeout_s: float) -> bytes:
    """POST `body`, return the whole 2xx response body. Raises RequestError."""
    what = f"POST {server.base_url}{path}"
    conn = server.connect(timeout_s)
    try:
        conn.request("POST", server.prefix + path, body=json.dumps(body).encode(),
                     headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        _check_status(response, what)
        return response.read()
    except Exception as exc:  # noqa: BLE001 - classified into retryable or not
        raise _classify(exc, what) from None
    finally:
        conn.close()


@contextmanager
def post_stream(server: Server, path: str, body: dict[str, Any], timeout_s: float) -> Iterator[Iterator[bytes]]:
    """POST `body` and yield an iterator over the response lines (SSE). `timeout_s` bounds each read and the
    wait for each `data:` line: keep-alive comments alone do not keep a silent stream open."""
    what = f"POST {server.base_url}{path} (stream)"
    conn = server.connect(timeout_s)
    try:
        try:
            conn.request("POST", server.prefix + path, body=json.dumps(body).encode(),
                         headers={"Content-Type": "application/json", "Accept": "text/event-stream"})
            response = conn.getresponse()
            _check_status(response, what)
        except Exception as exc:  # noqa: BLE001
            raise _classify(exc, what) from None

        def lines() -> Iterator[bytes]:
            last_data = time.monotonic()
            while True:
                try:
                    line = response.readline()
                except Exception as exc:  # noqa: BLE001
                    raise _classify(exc, what) from None
                if not line:
                    return
                if line.startswith(b"data:"):
                    last_data = time.monotonic()
                elif time.monotonic() - last_data > timeout_s:
                    raise RequestError(f"{what}: timed out (no data for {timeout_s:g} s, only keep-alives)",
                                       retryable=True)
                yield line

        yield lines()
    finally:
        conn.close()


def get_json(server: Server, path: str, timeout_s: float) -> Any:
    what = f"GET {server.base_url}{path}"
    conn = server.connect(timeout_s)
    try:
        conn.request("GET", server.prefix + path)
        response = conn.getresponse()
        _check_status(response, what)
        return json.loads(response.read())
    except ValueError as exc:
        raise RequestError(f"{what}: not JSON: {exc}", retryable=False) from None
    except Exception as exc:  # noqa: BLE001
        raise _classify(exc, what) from None
    finally:
        conn.close()


def check_model(server: Server, model_name: str) -> None:
    """GET /v1/models and require `model_name` among its ids; a UserError otherwise."""
    try:
        listing = get_json(server, "/v1/models", MODELS_CHECK_TIMEOUT_S)
    except RequestError as exc:
        raise UserError(
            f"--api-server {server.base_url}: cannot list models ({exc}); start the server or fix the URL"
        ) from None
    data = listing.get("data") if isinstance(listing, dict) else None
    ids = [m.get("id") for m in data if isinstance(m, dict)] if isinstance(data, list) else []
    if model_name not in ids:
        raise UserError(
            f"--api-model-name {model_name!r} is not served by {server.base_url} (it serves: "
            f"{', '.join(map(str, ids)) or 'nothing'}); pass one of those names"
        )


def with_retries(fn: Callable[[int], T], *, retries: int, backoff_s: float, what: str,
                 stop_event: Optional[threading.Event] = None) -> T:
    """Call fn(attempt) up to 1 + retries times, sleeping backoff_s * 2**attempt between retryable failures."""
    for attempt in range(retries + 1):
        try:
            return fn(attempt)
        except RequestError as exc:
            if not exc.retryable or attempt == retries:
                raise RequestError(f"{what} failed after {attempt + 1} attempt(s): {exc}", retryable=False) from None
            delay = min(backoff_s * 2**attempt, MAX_BACKOFF_S)
            log.warning("%s: %s; retry %d/%d in %.1f s", what, exc, attempt + 1, retries, delay)
            if stop_event is not None and stop_event.wait(delay):
                raise RequestError(f"{what}: abandoned at stop", retryable=False) from None
            if stop_event is None:
                time.sleep(delay)
    raise AssertionError("unreachable")


class ServerPool:
    """Least-loaded server choice with at most `concurrency` in-flight requests per server."""

    def __init__(self, urls: tuple[str, ...], concurrency: int):
        if not urls:
            raise UserError("--vllm/--backend api needs --api-server URL")
        self.servers = [Server.from_url(u) for u in urls]
        self._concurrency = concurrency
        self._cond = threading.Condition()

    @contextmanager
    def acquire(self, tokens: int, timeout_s: float) -> Iterator[Server]:
        """Hold a slot on the least-loaded server for the duration of one request."""
        with self._cond:
            ok = self._cond.wait_for(lambda: any(s.in_flight < self._concurrency for s in self.servers), timeout_s)
            if not ok:
                raise RequestError("no server slot became free", retryable=True)
            free = [s for s in self.servers if s.in_flight < self._concurrency]
            server = min(free, key=lambda s: (s.outstanding_tokens, s.in_flight))
            server.in_flight += 1
            server.outstanding_tokens += tokens
        try:
            yield server
        finally:
            with self._cond:
                server.in_flight -= 1
                server.outstanding_tokens -= tokens
                self._cond.notify()
