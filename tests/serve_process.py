"""`transformers serve` of a local checkpoint as a subprocess on 127.0.0.1, for the api backend tests.

The server lists the model under the path it was started with and takes text prompts only
(`/v1/completions` rejects token-id prompts and the vLLM extension fields), so it exercises
`--api-text-mode`. Start-up waits for GET /v1/models, bounded by a timeout.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

SERVE_PACKAGES = ("fastapi", "uvicorn", "openai")


def serve_available() -> bool:
    return all(importlib.util.find_spec(name) is not None for name in SERVE_PACKAGES)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TransformersServe:
    def __init__(self, model_dir, log_path, startup_timeout_s: float = 120.0):
        self.model = str(model_dir)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log_path = log_path
        self._timeout = startup_timeout_s
        self._proc: subprocess.Popen | None = None

    def __enter__(self) -> "TransformersServe":
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        cmd = [sys.executable, "-c", "import sys; from transformers.cli.transformers import main; sys.exit(main())",
               "serve", self.model, "--host", "127.0.0.1", "--port", str(self.port), "--device", "cpu",
               "--dtype", "float32"]
        self._log = open(self._log_path, "w")
        self._proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + self._timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self.__exit__()
                raise RuntimeError(f"transformers serve exited with {self._proc.returncode}; see {self._log_path}")
            try:
                with urllib.request.urlopen(f"{self.url}/v1/models", timeout=2) as r:
                    json.loads(r.read())
                    return self
            except OSError:
                time.sleep(0.5)
        self.__exit__()
        raise RuntimeError(f"transformers serve did not answer within {self._timeout} s; see {self._log_path}")

    def __exit__(self, *exc) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=10)
        self._log.close()
