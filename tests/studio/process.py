"""`spade-deploy paint` as a user starts it: a subprocess on a free loopback port (`--port 0`, the port it prints),
waited for until it answers, and stopped with SIGTERM. Plain urllib requests, so the tests see the real HTTP; the
images it answers with, compared as the tests compare them."""
from __future__ import annotations

import importlib.util
import io
import json
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from email.message import Message
from typing import Any

import numpy as np
import pytest
from PIL import Image

STARTUP_TIMEOUT = 120.0  # seconds: python, torch and the model load on a busy CI machine


@dataclass(frozen=True)
class Reply:
    status: int
    headers: Message
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def image(self) -> np.ndarray:
        """The PNG image of a successful answer."""
        assert self.status == 200, self.body[:500]
        assert self.headers["Content-Type"] == "image/png"
        return np.array(Image.open(io.BytesIO(self.body)))


def assert_close(image: np.ndarray, expected: np.ndarray) -> None:
    """Equal within one 8-bit level: PyTorch or ONNX Runtime in another process may round a value the other way."""
    assert image.shape == expected.shape and image.dtype == np.uint8
    assert np.abs(image.astype(np.int16) - expected.astype(np.int16)).max() <= 1


def require_studio() -> None:
    for module in ("fastapi", "uvicorn"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed (pip install -e '.[studio]'): spade-deploy paint cannot run")


class Studio:
    def __init__(self, *options: str) -> None:
        require_studio()
        command = [sys.executable, "-m", "spade_deploy.cli", "paint", "--port", "0", *options]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.reader = threading.Thread(target=lambda: [self.lines.put(line) for line in self.process.stdout],
                                       daemon=True)
        self.reader.start()
        self.output: list[str] = []
        self.url = ""  # http://host:port, once printed
        try:
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not self.url:
            try:
                line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(f"spade-deploy paint printed no URL within {STARTUP_TIMEOUT} s: "
                                   f"{''.join(self.output)}") from None
            self.output.append(line)
            if line.strip().startswith("open  http://"):
                self.url = line.split()[-1].rstrip("/")
            elif self.process.poll() is not None and self.lines.empty():
                raise RuntimeError(f"spade-deploy paint exited with status {self.process.returncode}: "
                                   f"{''.join(self.output)}")
        while self.get("/api/model").status != 200:  # answers once uvicorn runs; the socket listens before
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.url} did not answer within {STARTUP_TIMEOUT} s")
            time.sleep(0.1)

    def request(self, method: str, path: str, body: bytes | None = None,
                content_type: str = "image/png") -> Reply:
        headers = {"Content-Type": content_type} if body is not None else {}
        request = urllib.request.Request(self.url + path, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return Reply(response.status, response.headers, response.read())
        except urllib.error.HTTPError as error:
            return Reply(error.code, error.headers, error.read())
        except urllib.error.URLError as error:
            if self.process.poll() is not None:
                raise RuntimeError(f"spade-deploy paint exited: {''.join(self.output)}") from error
            raise

    def get(self, path: str) -> Reply:
        return self.request("GET", path)

    def post(self, path: str, body: bytes, content_type: str = "image/png") -> Reply:
        return self.request("POST", path, body, content_type)

    def stop(self) -> tuple[int, str]:
        """SIGTERM, as a service manager stops it: (exit status, everything it printed)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.reader.join(timeout=10)  # it ends at the end of the process's output
        while not self.lines.empty():
            self.output.append(self.lines.get())
        return self.process.returncode, "".join(self.output)
