"""Start a Jupyter server (JupyterLab or Voilà) on 127.0.0.1 with a token, wait until it answers, always stop it."""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Server:
    process: subprocess.Popen
    base_url: str
    token: str
    log: Path

    def url(self, path: str) -> str:
        """`path` on this server, with the token as a query parameter."""
        return f"{self.base_url}{path}{'&' if '?' in path else '?'}token={self.token}"

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")[-chars:]


def _answers(url: str) -> bool:
    """True once the server answers HTTP at all (a 404 counts: it is listening); 5xx and refused are not yet."""
    try:
        with urllib.request.urlopen(url, timeout=5):
            return True
    except urllib.error.HTTPError as err:
        return err.code < 500
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


@contextlib.contextmanager
def running_server(module: str, args: list[str], workdir: Path, log: Path, ready_path: str,
                   start_timeout: float = 90.0, env: dict[str, str] | None = None) -> Iterator[Server]:
    """`python -m module *args` run from `workdir`, `{token}` and `{port}` in `args` replaced by a fresh token and a
    free port, its output in `log`. Yields once `ready_path` answers; on leaving, whatever happened in between,
    stops the server and with it every kernel it started."""
    token, port = secrets.token_hex(16), free_port()
    argv = [sys.executable, "-m", module, *(a.format(token=token, port=port) for a in args)]
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as log_file:
        process = subprocess.Popen(argv, cwd=workdir, stdout=log_file, stderr=subprocess.STDOUT,
                                   env={**os.environ, **(env or {})})
    server = Server(process, f"http://127.0.0.1:{port}", token, log)
    try:
        deadline = time.monotonic() + start_timeout
        while not _answers(server.url(ready_path)):
            if process.poll() is not None:
                raise RuntimeError(f"{module} exited with code {process.returncode} before answering; "
                                   f"log {log}:\n{server.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{module} did not answer {ready_path} within {start_timeout:.0f} s; "
                                   f"log {log}:\n{server.log_tail()}")
            time.sleep(0.25)
        yield server
    finally:
        _stop(process)


def _stop(process: subprocess.Popen, grace: float = 20.0) -> None:
    """SIGTERM lets the server shut its kernels down; a server still there after `grace` s is killed (its kernels
    then exit on their own: ipykernel leaves when its parent process is gone)."""
    process.terminate()
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
