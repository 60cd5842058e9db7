"""Where every benchmark script leaves its figures: benchmarks/results/<name>.json (the record) and .md (the table)."""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def save_results(name: str, header: str, lines: list[str], record: dict) -> str:
    """Write <name>.json ({"header": ..., **record}) and <name>.md (header, blank line, table lines); print the Markdown."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps({"header": header, **record}, indent=2, default=str) + "\n")
    md = header + "\n\n" + "\n".join(lines) + "\n"
    (RESULTS / f"{name}.md").write_text(md)
    print(md, end="")
    return md
