"""The README's Python example, run as written on real images."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import write_fmnist

README = Path(__file__).resolve().parent.parent / "README.md"


@pytest.mark.slow
def test_the_readme_python_example_builds_and_queries_a_folder(tmp_path):
    section = README.read_text().split("### From Python", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    (tmp_path / "example.py").write_text(code)
    write_fmnist(tmp_path / "images", n=40)
    done = subprocess.run([sys.executable, str(tmp_path / "example.py"), str(tmp_path / "images"), str(tmp_path / "work")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("40 images, model ")
    assert "query_path" in lines[1] and "similarity" in lines[1]
    assert len(lines) == 2 + 10  # header and the first ten neighbour rows
    assert (tmp_path / "work" / "collection.json").exists()
