"""Memory of listing one flat folder: what ingest holds for a directory of many files before its first file.

    .venv/bin/python benchmarks/listing_memory.py --files 100000 300000

`vaepipe.ingest.walk` lists one directory at a time, so a nested folder costs little, but a flat folder is
listed whole (it has to be sorted). For each size, a flat folder of that many empty files (the listing does
not open them) is walked to the end in a fresh process; Python's allocations are traced (tracemalloc) and
their peak reported, with bytes per file. Compare old and new code side by side with
PYTHONPATH=<other checkout>.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from results_io import save_results  # benchmarks/ is on sys.path when a script runs


def flat_folder(n: int) -> Path:
    folder = Path(tempfile.gettempdir()) / f"vaepipe-flat-{n}"
    if not (folder / ".done").exists():
        folder.mkdir(exist_ok=True)
        for i in range(n):
            (folder / f"img_{i:07d}.png").touch()
        (folder / ".done").touch()  # hidden: walk skips it
    return folder


def measure(folder: Path) -> dict:
    import tracemalloc

    from vaepipe.ingest import walk

    tracemalloc.start()
    t0 = time.monotonic()
    n = sum(1 for _ in walk(folder))
    seconds = time.monotonic() - t0
    peak = tracemalloc.get_traced_memory()[1]
    return {"files": n, "seconds": round(seconds, 2), "peak_mb": round(peak / 1e6, 1), "bytes_per_file": round(peak / n)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, nargs="+", default=[100_000, 300_000])
    ap.add_argument("--measure", metavar="FOLDER", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        print("RESULT " + json.dumps(measure(Path(args.measure))))
        return
    rows = []
    for n in args.files:
        proc = subprocess.run([sys.executable, __file__, "--measure", str(flat_folder(n))], capture_output=True,
                              text=True, check=True, env=os.environ)
        rows.append(json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:]))
        print(rows[-1], flush=True)
    lines = ["| files in one folder | peak traced MB | bytes a file | seconds (traced) |", "|---:|---:|---:|---:|"]
    lines += [f"| {r['files']:,} | {r['peak_mb']} | {r['bytes_per_file']} | {r['seconds']} |" for r in rows]
    header = (f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {platform.machine()}, {os.cpu_count()} cores; "
              f"command: `python benchmarks/listing_memory.py --files {' '.join(map(str, args.files))}`")
    save_results("listing_memory", header, lines, {"rows": rows})


if __name__ == "__main__":
    main()
