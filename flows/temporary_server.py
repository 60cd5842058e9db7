"""The temporary Prefect API server a CLI command runs its flow against when no PREFECT_API_URL is set.

Without PREFECT_API_URL, Prefect boots a temporary server (a uvicorn subprocess, ~4 s here) at the first API
call, after this process has spent its own seconds importing Prefect, torch and FAISS. The CLI starts it
first instead, so it boots on the other core while those imports run, and it is the longest wait of a small
command: this module imports nothing from Prefect until the server's process is started.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path


def start_api_early() -> Callable[[], contextlib.AbstractContextManager[None]]:
    """Start a temporary Prefect server now, in the background, when the flow would need one; returns the context
    to run the flow in (it waits for the server, and points Prefect at it).

    The server is started the way Prefect's `SubprocessASGIServer` starts it (same command and settings), before
    Prefect's settings are read (~1 s) and without importing Prefect's server package here (~2 s). If Prefect's
    settings then name a server after all (a profile, a settings file) or forbid a temporary one, it is stopped
    again. If it does not come up, the flow runs as before and Prefect starts its own.
    """
    server = None if os.environ.get("PREFECT_API_URL") else _TemporaryServer()
    if server:
        server.start()
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

    if server is None or PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        if server:
            server.stop()
        return contextlib.nullcontext
    return server.serving


def _dies_with(parent: int) -> Callable[[], None] | None:
    """For Popen's preexec_fn: the child gets SIGTERM when `parent` dies, even by SIGKILL, which skips atexit (each
    killed command left a ~220 MB server behind). Linux only (prctl); elsewhere None. Started from the main
    thread, which lives as long as the process: the signal follows the thread that forked."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes
    import signal

    libc = ctypes.CDLL(None, use_errno=True)

    def set_up() -> None:
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before the line above
            os._exit(0)

    return set_up


class _TemporaryServer:
    """Prefect's temporary API server as `prefect.server.api.server.SubprocessASGIServer` runs it."""

    def __init__(self) -> None:
        self.process: subprocess.Popen | None = None
        self.port = 0

    def start(self) -> None:
        with socket.socket() as s:  # a free port (if it is taken before uvicorn binds it, Prefect starts its own)
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        # The server reads Prefect's settings from the same environment, profile and files as this process would.
        env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
        prefect_dir = Path(importlib.util.find_spec("prefect").origin).parent  # without importing Prefect
        self.process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--app-dir", str(prefect_dir.parent), "--factory",
             "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(self.port),
             "--log-level", "error", "--lifespan", "on"], env=env, preexec_fn=_dies_with(os.getpid()))
        atexit.register(self.stop)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def ready(self, timeout: float) -> bool:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.process is not None and self.process.poll() is None:
            try:
                if httpx.get(f"{self.api_url}/health", timeout=2).status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        return False

    @contextlib.contextmanager
    def serving(self) -> Iterator[None]:
        from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, temporary_settings

        # Flow heartbeats tell a server that a run is alive; a temporary server ends with this process, so they
        # only cost time: every flow run joins its heartbeat thread at its end, and that thread sleeps in 1 s steps
        # (~0.8 s a flow run, subflows included).
        updates: dict = {"flows.heartbeat_frequency": None}
        if self.ready(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()):
            updates[PREFECT_API_URL] = self.api_url
        else:
            self.stop()  # Prefect starts its own at the first API call, and reports what goes wrong with it
        with temporary_settings(updates=updates):
            yield

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None
