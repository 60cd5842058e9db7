"""How summaries read, in artifacts, logs and the CLI alike (no Prefect import: the CLI prints them without it)."""

from __future__ import annotations


def format_value(value: object) -> str:
    """How summaries show a value, in artifacts, logs and the CLI alike."""
    if isinstance(value, float):
        return f"{value:,.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {format_value(v)}" for k, v in value.items()) or "none"
    return str(value)
