"""The summary every flow leaves behind, as a Prefect markdown artifact (and in the logs)."""

from __future__ import annotations

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact


def summary_artifact(key: str, title: str, rows: dict[str, object]) -> str:
    lines = [f"# {title}", "", "| | |", "|---|---|"]
    lines += [f"| {name} | {_fmt(value)} |" for name, value in rows.items()]
    markdown = "\n".join(lines)
    create_markdown_artifact(key=key, markdown=markdown, description=title)
    get_run_logger().info("%s\n%s", title, "\n".join(f"  {k}: {_fmt(v)}" for k, v in rows.items()))
    return markdown


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)
