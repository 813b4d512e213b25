"""A tiny vLLM-protocol server on 127.0.0.1 for the api backend tests (standard library only).

`FakeVllmServer(generate=...)` answers GET /v1/models and POST /v1/completions like vLLM does in
token-id mode: prompts as token-id lists (one list or a list of lists), outputs as
"token_id:N" strings under `logprobs.tokens` (or as `token_ids`, `carrier="token_ids"`), SSE when
`stream` is true. `generate(prompt_ids, max_tokens) -> ids` is the model: `model_generator` wraps
a real checkpoint's greedy `generate`, so the fake is a real server of a real (tiny) model.
`faults` is a script consumed one entry per POST: an int (HTTP status), ("sleep", seconds) before
answering normally, "drop" (close the connection without an answer), or "cut" (a stream closed
after its first token, without a finish_reason). The backend's start-up probe (`max_tokens` 1) is
answered normally without consuming a fault and is recorded in `probes`, not `bodies`.
`carrier="text"` returns text only, like a server that knows no token ids.

Run alone, it serves a checkpoint until Ctrl-C:
`python tests/api_fake_server.py --model-dir DIR [--model-name NAME] [--port 8000]`.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Optional, Sequence

Generator = Callable[[list[int], int], list[int]]


def model_generator(model_dir) -> Generator:
    """Greedy generate of the checkpoint at `model_dir`, one prompt at a time (min_new_tokens=1)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    lock = threading.Lock()
    eos = model.config.eos_token_id

    def generate(prompt: list[int], max_tokens: int) -> list[int]:
        with lock, torch.no_grad():
            ids = torch.tensor([prompt], dtype=torch.long)  # [1, L]
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens,
                                 min_new_tokens=1, do_sample=False, num_beams=1, pad_token_id=eos)
        return out[0, len(prompt):].tolist()

    return generate


class FakeVllmServer:
    def __init__(self, generate: Generator, *, model_name: str = "tiny", eos_token_id: int = 2,
                 carrier: str = "logprobs", include_eos: bool = True, faults: Sequence = (), port: int = 0):
        self.generate = generate
        self.model_name = model_name
        self.eos = eos_token_id
        self.carrier = carrier
        self.include_eos = include_eos
        self.faults = list(faults)
        self.bodies: list[dict] = []  # every POST body received, in order (probes apart)
        self.probes: list[dict] = []
        self.lock = threading.Lock()
        self._port = port  # 0: any free loopback port
        self._httpd: Optional[ThreadingHTTPServer] = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def __enter__(self) -> "FakeVllmServer":
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                if self.path != "/v1/models":
                    return self._json(404, {"error": "not found"})
                self._json(200, {"object": "list", "data": [{"id": fake.model_name, "object": "model"}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with fake.lock:
                    if body.get("max_tokens") == 1:
                        fake.probes.append(body)
                        fault = None
                    else:
                        fake.bodies.append(body)
                        fault = fake.faults.pop(0) if fake.faults else None
                if fault == "drop":
                    self.close_connection = True
                    return
                if isinstance(fault, int):
                    return self._json(fault, {"error": f"injected {fault}"})
                if isinstance(fault, tuple) and fault[0] == "sleep":
                    time.sleep(fault[1])
                fake._answer(self, body, cut=fault == "cut")

            def _json(self, status, obj):
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        class QuietServer(ThreadingHTTPServer):
            def handle_error(self, request, client_address):
                pass  # a client that timed out and hung up is part of the tests

        self._httpd = QuietServer(("127.0.0.1", self._port), Handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    # ----- answering -----

    def _output(self, prompt: list[int], max_tokens: int) -> tuple[list[int], str]:
        ids = self.generate(prompt, max_tokens)
        finish = "stop" if self.eos in ids else "length"
        if self.eos in ids:
            ids = ids[: ids.index(self.eos) + (1 if self.include_eos else 0)]
        return ids, finish

    def _choice(self, index: int, ids: list[int], finish: Optional[str]) -> dict:
        choice = {"index": index, "text": "".join(f"<{t}>" for t in ids), "finish_reason": finish}
        if self.carrier == "token_ids":
            choice["token_ids"] = ids
        elif self.carrier == "logprobs":
            choice["logprobs"] = {"tokens": [f"token_id:{t}" for t in ids],
                                  "token_logprobs": [-0.1] * len(ids)}
        return choice

    def _answer(self, handler: BaseHTTPRequestHandler, body: dict, cut: bool = False) -> None:
        prompt = body["prompt"]
        if isinstance(prompt, str) or not prompt:
            return handler._json(400, {"error": "this fake takes token-id prompts only"})
        prompts = [prompt] if isinstance(prompt[0], int) else prompt
        outputs = [self._output(list(p), int(body["max_tokens"])) for p in prompts]
        if not body.get("stream"):
            return handler._json(200, {"object": "text_completion", "model": self.model_name, "choices": [
                self._choice(i, ids, finish) for i, (ids, finish) in enumerate(outputs)]})
        ids, finish = outputs[0]
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.send_header("Connection", "close")
        handler.end_headers()
        handler.close_connection = True
        for pos, token in enumerate(ids):
            last = pos == len(ids) - 1
            chunk = {"object": "text_completion", "choices": [self._choice(0, [token], finish if last else None)]}
            handler.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            handler.wfile.flush()
            if cut:
                return
        if not ids:
            chunk = {"choices": [self._choice(0, [], finish)]}
            handler.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
        handler.wfile.write(b"data: [DONE]\n\n")
        handler.wfile.flush()


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="serve a checkpoint's greedy generate with vLLM's token-id protocol")
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--model-name", default="tiny")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    server = FakeVllmServer(model_generator(args.model_dir), model_name=args.model_name, port=args.port)
    with server:
        print(f"serving {args.model_dir} as {args.model_name!r} at {server.url}", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
