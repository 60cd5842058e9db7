"""What every flow shares: the summary artifact, and how expected errors are reported."""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact

from vaepipe import progress
from vaepipe.store import VaepipeError


@contextlib.contextmanager
def progress_artifact(key: str, description: str) -> Iterator[None]:
    """A Prefect progress artifact that follows the library's progress (per stage, 0-100%) while the block runs."""
    artifact_id = create_progress_artifact(progress=0.0, key=key, description=description)

    def listener(stage: str, fraction: float) -> None:
        update_progress_artifact(artifact_id, progress=round(100 * fraction, 1), description=f"{description}: {stage}")

    progress.add_listener(listener)
    try:
        yield
    finally:
        progress.remove_listener(listener)
        update_progress_artifact(artifact_id, progress=100.0, description=f"{description}: done")


def summary_artifact(key: str, title: str, rows: dict[str, object], link: Path | None = None) -> str:
    """The flow's figures as a Prefect markdown artifact (and in the run log), with a link to the page to open."""
    lines = [f"# {title}", ""]
    if link:
        lines += [f"Open the report: [{link.name}]({Path(link).resolve().as_uri()})", ""]
    lines += ["| | |", "|---|---|"]
    lines += [f"| {name} | {format_value(value)} |" for name, value in rows.items()]
    markdown = "\n".join(lines)
    create_markdown_artifact(key=key, markdown=markdown, description=title)
    get_run_logger().info("%s\n%s", title, "\n".join(f"  {k}: {format_value(v)}" for k, v in rows.items()))
    return markdown


def start_api_early() -> Callable[[], contextlib.AbstractContextManager[None]]:
    """Start a temporary Prefect server now, in the background, when the flow would need one; returns the context
    to run the flow in (it waits for the server, and points Prefect at it).

    Without PREFECT_API_URL, Prefect boots a temporary server (a uvicorn subprocess, ~5 s here) at the first API
    call, after this process has spent its own seconds importing torch and FAISS. Started first, it boots on the
    other core while those imports run. It is started here the way Prefect starts it (same command, same
    settings), but without importing Prefect's server package into this process first (~2 s). If it does not
    come up, the flow runs as before and Prefect starts its own. With PREFECT_API_URL set, nothing is started.
    """
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        return contextlib.nullcontext
    server = _TemporaryServer()
    server.start()
    return server.serving


class _TemporaryServer:
    """Prefect's temporary API server as `prefect.server.api.server.SubprocessASGIServer` runs it."""

    def __init__(self) -> None:
        self.process: subprocess.Popen | None = None
        self.port = 0

    def start(self) -> None:
        import prefect
        from prefect.settings import get_current_settings

        with socket.socket() as s:  # a free port (if it is taken before uvicorn binds it, Prefect starts its own)
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1",
               **get_current_settings().to_environment_variables(exclude_unset=True)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--app-dir", str(prefect.__module_path__.parent), "--factory",
             "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(self.port),
             "--log-level", "error", "--lifespan", "on"], env=env)
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


def retry_unless_expected(task, task_run, state) -> bool:
    """Retry I/O hiccups, not bad input: a VaepipeError will fail the same way again."""
    try:
        state.result()
    except VaepipeError:
        return False
    except Exception:
        return True
    return True


class _HideExpectedTracebacks(logging.Filter):
    """Prefect logs every failure with its traceback; for a VaepipeError the message alone says it all."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], VaepipeError):
            record.exc_info, record.exc_text = None, None
        return True


def hide_expected_tracebacks() -> None:
    loggers = [logging.getLogger()] + [logging.getLogger(n) for n in list(logging.root.manager.loggerDict)]
    for logger in loggers:
        for handler in getattr(logger, "handlers", []):
            if not any(isinstance(f, _HideExpectedTracebacks) for f in handler.filters):
                handler.addFilter(_HideExpectedTracebacks())


def format_value(value: object) -> str:
    """How summaries show a value, in artifacts, logs and the CLI alike."""
    if isinstance(value, float):
        return f"{value:,.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {format_value(v)}" for k, v in value.items()) or "none"
    return str(value)
