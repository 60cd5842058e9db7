"""The README's Python example, run as written on real images."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import write_fmnist

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
    assert lines[1].split() == ["query_path", "rank", "neighbour_path", "similarity"]
    assert len(lines) == 2 + 10 + 1 + 3 + 1  # the first ten rows of every image's neighbours, one file's three, the report
    first = sorted(p for p in (tmp_path / "images").rglob("*") if p.is_file())[0]
    rank1 = lines[13].split()
    assert rank1[1] == "1" and rank1[2] == first.relative_to(tmp_path / "images").as_posix()  # the file finds itself
    assert float(rank1[3]) > 0.99
    assert lines[-1].endswith("report.html") and Path(lines[-1]).is_file()
