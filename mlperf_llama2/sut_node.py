"""A SUT node: serves greedy generation of any backend over HTTP (token ids in, token ids out).

  python -m mlperf_llama2.sut_node --port 8001 --model-path DIR --backend engine [--tensor-parallel N ...]

Every main.py model flag applies (backend, device, dtype, engine knobs, --tensor-parallel,
--data-parallel; --scenario Server makes the reference backend stream first tokens). The node
binds 127.0.0.1 unless --host says otherwise, answers `GET /node/info`, `GET /v1/models` and
`POST /v1/completions` (node_protocol.py), and runs until SIGTERM or Ctrl-C. LoadGen runs on the
LoadGen node (`main.py --sut-nodes URL,...`), which sends each sample here and reports the answer.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import queue
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional, Sequence

from mlperf_llama2.backends.base import Backend, GenerationRequest
from mlperf_llama2.config import RunConfig, build_parser
from mlperf_llama2.parallel import node_protocol as wire
from mlperf_llama2.parallel.env import apply_dist_env
from mlperf_llama2.errors import UserError, configure_logging, run_cli
from mlperf_llama2.postprocess import cut_after_first_eos

log = logging.getLogger(__name__)

DEFAULT_REQUEST_TIMEOUT_S = 3600.0


class NodeSink:
    """The backend's ResultSink: routes each result to the queue of the HTTP request waiting for it."""

    def __init__(self) -> None:
        self._queues: dict[int, queue.Queue] = {}
        self._lock = threading.Lock()

    def open(self, request_id: int) -> queue.Queue:
        q: queue.Queue = queue.Queue()
        with self._lock:
            self._queues[request_id] = q
        return q

    def close(self, request_id: int) -> None:
        with self._lock:
            self._queues.pop(request_id, None)

    def _put(self, request_id: int, item) -> None:
        with self._lock:
            q = self._queues.get(request_id)
        if q is not None:
            q.put(item)

    def first_token(self, request_id: int, token: int) -> None:
        self._put(request_id, ("first", token))

    def complete(self, request_id: int, tokens: Sequence[int]) -> None:
        self._put(request_id, ("done", list(tokens)))

    def fail(self, request_id: int, error: BaseException) -> None:
        self._put(request_id, ("fail", error))


class SutNode:
    """One backend behind an HTTP server; `serve_forever` blocks, `shutdown` stops both."""

    def __init__(self, backend: Backend, name: str, host: str = "127.0.0.1", port: int = 0,
                 request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S) -> None:
        self.backend = backend
        self.name = name
        self.request_timeout_s = request_timeout_s
        self.sink = NodeSink()
        self._ids = itertools.count()
        self.completion_ids = itertools.count()
        self.requests_served = 0
        self.httpd = ThreadingHTTPServer((host, port), _handler_for(self))
        self.httpd.daemon_threads = True
        backend.start(self.sink)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def info(self) -> dict:
        return {"name": self.name, "backend": self.backend.name, "eos_token_id": self.backend.eos_token_id,
                "vocab_size": self.backend.vocab_size, "streams_first_token": self.backend.streams_first_token}

    def _submit(self, prompts: list[list[int]], max_tokens: int) -> list[tuple[int, queue.Queue]]:
        """Submit all prompts in one call (the backend batches them); (request id, result queue) each."""
        opened = [(rid, self.sink.open(rid)) for rid in (next(self._ids) for _ in prompts)]
        self.backend.submit([GenerationRequest(rid, -1, p, max_tokens) for (rid, _), p in zip(opened, prompts)])
        return opened

    def _next(self, results: queue.Queue):
        try:
            kind, value = results.get(timeout=self.request_timeout_s)
        except queue.Empty:
            raise TimeoutError(f"no answer within {self.request_timeout_s:.0f} s") from None
        if kind == "fail":
            raise RuntimeError(f"{type(value).__name__}: {value}")
        return kind, value

    def generate(self, prompts: list[list[int]], max_tokens: int) -> list[list[int]]:
        """Every prompt's ids, cut after the first EOS. Raises on a failure; bounded by request_timeout_s."""
        opened = self._submit(prompts, max_tokens)
        try:
            outputs = []
            for _, results in opened:
                kind, value = self._next(results)
                while kind != "done":
                    kind, value = self._next(results)
                outputs.append(cut_after_first_eos(value, self.backend.eos_token_id))
            self.requests_served += len(prompts)
            return outputs
        finally:
            for rid, _ in opened:
                self.sink.close(rid)

    def stream(self, prompt: list[int], max_tokens: int):
        """Yields ("first", token) at most once, then ("done", ids cut after the first EOS); raises on failure."""
        [(rid, results)] = self._submit([prompt], max_tokens)
        try:
            while True:
                kind, value = self._next(results)
                if kind == "done":
                    self.requests_served += 1
                    yield "done", cut_after_first_eos(value, self.backend.eos_token_id)
                    return
                yield kind, value
        finally:
            self.sink.close(rid)

    def serve_forever(self) -> None:
        log.info("SUT node %s serving %s on %s", self.name, self.backend.name, self.url)
        self.httpd.serve_forever(poll_interval=0.2)

    def shutdown(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.backend.stop()


def _handler_for(node: SutNode):
    class Handler(BaseHTTPRequestHandler):
        # HTTP/1.0: one request per connection, the end of a stream is the end of the connection.
        def log_message(self, fmt, *args):
            log.debug("%s " + fmt, self.address_string(), *args)

        def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _error(self, status: int, message: str) -> None:
            self._send(status, json.dumps({"error": {"message": message, "code": status}}).encode())

        def do_GET(self):
            if self.path == wire.INFO_PATH:
                return self._send(200, json.dumps(node.info()).encode())
            if self.path == wire.MODELS_PATH:
                return self._send(200, json.dumps({"object": "list", "data": [{"id": node.name, "object": "model"}]})
                                  .encode())
            self._error(404, f"no such path {self.path}")

        def do_POST(self):
            if self.path != wire.COMPLETIONS_PATH:
                return self._error(404, f"no such path {self.path}")
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if length < 0:
                return self._error(400, f"bad Content-Length {self.headers.get('Content-Length')!r}")
            raw = self.rfile.read(length)
            try:
                prompts, max_tokens, stream = wire.parse_request(raw, node.backend.vocab_size)
            except wire.BadRequest as exc:
                return self._error(400, str(exc))
            rid = f"cmpl-{next(node.completion_ids)}"
            if not stream:
                try:
                    outputs = node.generate(prompts, max_tokens)
                except Exception as exc:  # noqa: BLE001 - the client gets a 500 with the reason
                    log.error("generation failed: %s", exc)
                    return self._error(500, f"generation failed: {exc}")
                return self._send(200, wire.completion(rid, node.name, outputs, node.backend.eos_token_id))
            events = node.stream(prompts[0], max_tokens)
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            sent = 0
            try:
                for kind, value in events:
                    if kind == "first" and sent == 0:
                        self.wfile.write(wire.sse_chunk(rid, node.name, [value], None))
                        self.wfile.flush()
                        sent = 1
                    elif kind == "done":
                        reason = wire.finish_reason(value, node.backend.eos_token_id)
                        self.wfile.write(wire.sse_chunk(rid, node.name, value[sent:], reason))
                        self.wfile.write(wire.SSE_DONE)
            except Exception as exc:  # noqa: BLE001 - reported in-stream; the client fails the sample
                log.error("generation failed: %s", exc)
                self.wfile.write(b"data: " + json.dumps({"error": {"message": str(exc)}}).encode() + b"\n\n")

    return Handler


def build_node_parser() -> argparse.ArgumentParser:
    parser = build_parser()
    parser.prog = "python -m mlperf_llama2.sut_node"
    parser.description = "A SUT node: serve greedy generation over HTTP for main.py --sut-nodes."
    g = parser.add_argument_group("SUT node")
    g.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s: loopback only)")
    g.add_argument("--port", type=int, default=8000, help="TCP port (0: any free port; default %(default)s)")
    g.add_argument("--node-name", default=None, help="name reported to LoadGen (default: node@HOST:PORT)")
    g.add_argument("--request-timeout", type=float, default=DEFAULT_REQUEST_TIMEOUT_S,
                   help="seconds one generation may take before it is answered with an error (default %(default)s)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    ns = build_node_parser().parse_args(argv)
    if not (ns.request_timeout > 0 and math.isfinite(ns.request_timeout)):
        raise UserError(f"--request-timeout must be a finite number of seconds > 0, got {ns.request_timeout}")
    config = RunConfig.from_cli_args(ns)
    configure_logging(config.verbose)
    apply_dist_env()
    if config.model_path is None:
        raise UserError("no model given: pass --model-path DIR (a local Hugging Face checkpoint directory)")
    from mlperf_llama2.backends.registry import check, create_backend

    # the backend's pre-flight, as main.py runs it: the checkpoint (a local backend's) and every flag it would ignore
    check(config)
    backend = create_backend(config)
    node = SutNode(backend, ns.node_name or f"node@{ns.host}:{ns.port}", ns.host, ns.port, ns.request_timeout)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=node.httpd.shutdown, daemon=True).start())
    print(f"SUT node ready on {node.url}", flush=True)  # the line scripts and tests wait for
    try:
        node.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        node.httpd.server_close()
        backend.stop()
        log.info("SUT node stopped after %d requests", node.requests_served)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
