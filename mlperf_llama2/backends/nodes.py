"""The LoadGen node's side of a multi-node run: a Backend whose generation happens on SUT nodes.

`NodeBackend(urls)` asks every node for `/node/info` (waiting a bounded time for nodes still
loading), checks they agree on the EOS id, then sends each request to the node with the fewest
outstanding tokens (`routing.LeastLoadedRouter`) as one `/v1/completions` call on a per-node pool
of `concurrency` threads. With `stream=True` (Server) the first token is reported as soon as its
chunk arrives. Every socket read is bounded by `timeout_s`; a failed request fails its sample.
Standard library only (http.client).
"""

from __future__ import annotations

import http.client
import json
import logging
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Optional, Sequence

from mlperf_llama2.backends.base import Backend, GenerationRequest, ResultSink
from mlperf_llama2.parallel import node_protocol as wire
from mlperf_llama2.parallel.routing import LeastLoadedRouter, request_cost
from mlperf_llama2.errors import UserError

log = logging.getLogger(__name__)

INFO_POLL_S = 0.5


@dataclass(frozen=True)
class NodeAddress:
    url: str
    host: str
    port: int

    @classmethod
    def parse(cls, url: str) -> "NodeAddress":
        try:
            parts = urllib.parse.urlsplit(url)
            port = parts.port  # ValueError for a port that is not a number in 0..65535
        except ValueError as exc:
            raise UserError(f"--sut-nodes {url!r}: {exc}; expected http://HOST:PORT") from None
        if parts.scheme != "http" or not parts.hostname or not port:
            raise UserError(f"--sut-nodes {url!r}: expected http://HOST:PORT")
        return cls(url.rstrip("/"), parts.hostname, port)

    def request(self, method: str, path: str, body: Optional[dict], timeout_s: float):
        """(connection, response) of one request; the caller reads and closes."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout_s)
        data = None if body is None else json.dumps(body).encode()
        conn.request(method, path, body=data, headers={"Content-Type": "application/json"} if data else {})
        response = conn.getresponse()
        if response.status != 200:
            detail = response.read(2000).decode("utf-8", "replace")
            conn.close()
            raise NodeHTTPError(f"{method} {self.url}{path}: HTTP {response.status}: {detail}", response.status)
        return conn, response


class NodeHTTPError(RuntimeError):
    """A node answered with another status than 200."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


def fetch_info(node: NodeAddress, wait_s: float) -> dict:
    """The node's /node/info, retried until `wait_s` has passed (nodes may still be loading a model).

    A 4xx (a server that is no SUT node, e.g. vLLM) or an answer without an integer EOS id is a UserError at once.
    """
    deadline = time.monotonic() + wait_s
    while True:
        try:
            conn, response = node.request("GET", wire.INFO_PATH, None, timeout_s=10.0)
            try:
                info = json.loads(response.read())
            finally:
                conn.close()
            break
        except NodeHTTPError as exc:
            if 400 <= exc.status < 500 or time.monotonic() >= deadline:
                raise UserError(f"SUT node {node.url} did not answer {wire.INFO_PATH} ({exc}); is it a SUT node "
                                "(python -m mlperf_llama2.sut_node)?") from None
            time.sleep(INFO_POLL_S)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            if time.monotonic() >= deadline:
                raise UserError(f"SUT node {node.url} is not answering ({exc}); start it with "
                                f"python -m mlperf_llama2.sut_node, or raise --node-wait") from None
            time.sleep(INFO_POLL_S)
    eos, vocab = (info.get("eos_token_id"), info.get("vocab_size")) if isinstance(info, dict) else (None, None)
    if not _is_int(eos) or not (vocab is None or _is_int(vocab)):
        raise UserError(f"SUT node {node.url}: {wire.INFO_PATH} has no integer eos_token_id/vocab_size "
                        f"({str(info)[:120]}); is it a SUT node (python -m mlperf_llama2.sut_node)?")
    return info


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class NodeBackend(Backend):
    name = "sut-nodes"

    def __init__(self, urls: Sequence[str], *, stream: bool, concurrency: int = 256, timeout_s: float = 3600.0,
                 wait_s: float = 60.0) -> None:
        if not urls:
            raise UserError("--sut-nodes needs at least one URL")
        self.nodes = [NodeAddress.parse(u) for u in urls]
        self.infos = [fetch_info(n, wait_s) for n in self.nodes]
        eos = {info["eos_token_id"] for info in self.infos}
        if len(eos) != 1:
            raise UserError(f"SUT nodes disagree on the EOS id ({sorted(eos)}): they must serve the same model")
        self._eos = eos.pop()
        vocab = {info.get("vocab_size") for info in self.infos}
        if len(vocab) != 1:
            raise UserError(f"SUT nodes disagree on the vocabulary size ({sorted(vocab, key=str)}): they must serve "
                            "the same model")
        self.streams_first_token = stream
        self.timeout_s = timeout_s
        self.concurrency = concurrency
        self.router = LeastLoadedRouter(len(self.nodes))
        self.sent = [0] * len(self.nodes)
        self._pools: list[ThreadPoolExecutor] = []
        self._sink: Optional[ResultSink] = None
        self.name_for_loadgen = "mlperf_llama2 SUT nodes: " + ", ".join(
            f"{info.get('name')} ({info.get('backend')}) at {n.url}" for n, info in zip(self.nodes, self.infos))

    @property
    def eos_token_id(self) -> int:
        return self._eos

    @property
    def vocab_size(self) -> int | None:
        return self.infos[0].get("vocab_size")

    def sut_name(self) -> str:
        """LoadGen's QDL name callback (no network here: the names were read at start)."""
        return self.name_for_loadgen

    def start(self, sink: ResultSink) -> None:
        self._sink = sink
        self._pools = [ThreadPoolExecutor(self.concurrency, thread_name_prefix=f"node{i}")
                       for i in range(len(self.nodes))]

    def submit(self, requests: Sequence[GenerationRequest]) -> None:
        for req in requests:
            target = self.router.assign(req.request_id, request_cost(len(req.prompt), req.max_new_tokens))
            self.sent[target] += 1
            self._pools[target].submit(self._run, self.nodes[target], req)

    def _run(self, node: NodeAddress, req: GenerationRequest) -> None:
        try:
            tokens = self._generate(node, req)
        except Exception as exc:  # noqa: BLE001 - every failure fails only this sample
            self.router.release(req.request_id)
            self._sink.fail(req.request_id, RuntimeError(f"{node.url}: {exc}"))
            return
        self.router.release(req.request_id)
        self._sink.complete(req.request_id, tokens)

    def _generate(self, node: NodeAddress, req: GenerationRequest) -> list[int]:
        body = wire.request_body("llama2", req.prompt, req.max_new_tokens, self.streams_first_token)
        conn, response = node.request("POST", wire.COMPLETIONS_PATH, body, self.timeout_s)
        try:
            if not self.streams_first_token:
                tokens, _ = wire.parse_choice(json.loads(response.read()))
                return tokens
            tokens: list[int] = []
            for raw in response:  # server-sent events, one "data: {...}" line per chunk
                line = raw.strip()
                if not line.startswith(b"data:"):
                    continue
                payload = line[len(b"data:"):].strip()
                if payload == b"[DONE]":
                    return tokens
                obj = json.loads(payload)
                if "error" in obj:
                    raise RuntimeError(f"node error: {obj['error']}")
                ids, _ = wire.parse_choice(obj)
                if ids and not tokens:
                    self._sink.first_token(req.request_id, ids[0])
                tokens.extend(ids)
            raise RuntimeError("stream ended before [DONE]")
        finally:
            conn.close()

    def stop(self) -> None:
        for pool in self._pools:
            pool.shutdown(wait=True, cancel_futures=True)
        self._pools = []
        log.info("SUT nodes: requests per node %s", self.sent)


def create_node_backend(config) -> NodeBackend:
    """Registry factory of `sut-nodes` (main.py --sut-nodes): the LoadGen node's backend (streams first
    tokens in Server)."""
    dist = config.dist
    log.info("LoadGen node: %d SUT node(s): %s", len(dist.sut_nodes), ", ".join(dist.sut_nodes))
    backend = NodeBackend(dist.sut_nodes, stream=config.scenario == "Server", concurrency=dist.node_concurrency,
                          timeout_s=dist.node_timeout_s, wait_s=dist.node_wait_s)
    backend.network_name = backend.sut_name  # LoadGen constructs a QDL: the SUT is reached over the network
    return backend
