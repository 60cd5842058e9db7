"""What every flow shares: the summary artifact, and how expected errors are reported."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact

from flows.text import format_value
from vaepipe import progress
from vaepipe.errors import VaepipeError
from vaepipe.serve import page_url


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
        # Browsers do not follow file:// links from a web page such as the Prefect UI: the page's address is where
        # `vaepipe serve` shows it (the workdir is two folders up: runs/<id>/ or samples/<id>/).
        workdir = Path(link).resolve().parents[2]
        lines += [f"Open [{link.name}]({page_url(link, workdir)}) after starting `vaepipe serve {workdir}` on the "
                  f"machine that ran this (the file: `{Path(link).resolve()}`)", ""]
    lines += ["| | |", "|---|---|"]
    lines += [f"| {name} | {format_value(value)} |" for name, value in rows.items()]
    markdown = "\n".join(lines)
    create_markdown_artifact(key=key, markdown=markdown, description=title)
    get_run_logger().info("%s\n%s", title, "\n".join(f"  {k}: {format_value(v)}" for k, v in rows.items()))
    return markdown


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
