"""What every flow shares: the summary artifact, and how expected errors are reported."""

from __future__ import annotations

import logging

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact

from vaepipe.store import VaepipeError


def summary_artifact(key: str, title: str, rows: dict[str, object]) -> str:
    """The flow's figures as a Prefect markdown artifact (and in the run log)."""
    lines = [f"# {title}", "", "| | |", "|---|---|"]
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


def format_value(value: object) -> str:
    """How summaries show a value, in artifacts, logs and the CLI alike."""
    if isinstance(value, float):
        return f"{value:,.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {format_value(v)}" for k, v in value.items()) or "none"
    return str(value)
