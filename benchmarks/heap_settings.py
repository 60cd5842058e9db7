"""The nightly query's peak memory and time under glibc's malloc settings, side by side, on built workdirs.

    python benchmarks/heap_settings.py /tmp/m3k /tmp/m30k --rounds 3 --name heap-1205

Each workdir is a collection already built and queried once (so that its views and signatures are cached): for
instance peers.py's folders of 3,000 and 30,000 photos indexed with `vaepipe --no-prefect index FOLDER --workdir W`.
Every setting runs `vaepipe --no-prefect --quiet query W --all -k 10` in a fresh process, settings alternating within
a round; the table gives medians over rounds of the peak RSS (GNU time's %M) and wall seconds, and whether each run's
duplicate table is the default's (the settings move memory, never the answer). The environment variables are
glibc's own (mallopt(3)): a fixed mmap threshold returns every block at least that large to the system when freed,
where by default the threshold rises with the largest block freed (up to 32 MB) and blocks below it stay in the heap.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

from peers import timed, vaepipe  # noqa: E402
from results_io import save_results  # noqa: E402

SETTINGS = {
    "default": {},
    "mmap threshold 1 MB": {"MALLOC_MMAP_THRESHOLD_": str(1 << 20)},
    "mmap threshold 4 MB, trim threshold 32 MB": {"MALLOC_MMAP_THRESHOLD_": str(4 << 20),
                                                   "MALLOC_TRIM_THRESHOLD_": str(32 << 20)},
    "mmap threshold 16 MB": {"MALLOC_MMAP_THRESHOLD_": str(16 << 20)},
}


def latest_duplicates(workdir: Path) -> str:
    """The sha256 of the newest run's duplicate table as CSV (group numbers, kinds, paths, in order)."""
    newest = max((workdir / "runs").glob("*/duplicates.parquet"), key=lambda p: p.stat().st_mtime)
    return hashlib.sha256(pq.read_table(newest).to_pandas().to_csv(index=False).encode()).hexdigest()


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("workdirs", type=Path, nargs="+")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--name", default="heap-settings")
    a = p.parse_args(argv)
    runs: dict[str, dict[str, list[dict]]] = {str(w): {s: [] for s in SETTINGS} for w in a.workdirs}
    for r in range(a.rounds):
        for w in a.workdirs:
            for setting, env in SETTINGS.items():
                # `env` execs the command in its own process: GNU time measures the query, not a shell.
                job = timed(["env", *(f"{k}={v}" for k, v in env.items()),
                             *vaepipe("--no-prefect", "--quiet", "query", str(w), "--all", "-k", "10")])
                job["duplicates"] = latest_duplicates(w)
                runs[str(w)][setting].append(job)
                print(f"round {r + 1} {w} {setting}: {job['peak_mb']:.0f} MB {job['seconds']:.1f} s", file=sys.stderr)
    lines = ["| workdir | setting | peak RSS, median (MB) | wall, median (s) | runs' peaks (MB) | same duplicates as default |",
             "|---|---|---:|---:|---|---|"]
    for w, by in runs.items():
        default = {j["duplicates"] for j in by["default"]}
        for setting, jobs in by.items():
            same = "yes" if {j["duplicates"] for j in jobs} == default and len(default) == 1 else "**no**"
            peaks = ", ".join(f"{j['peak_mb']:.0f}" for j in jobs)
            lines.append(f"| {Path(w).name} | {setting} | {statistics.median(j['peak_mb'] for j in jobs):.0f} | "
                         f"{statistics.median(j['seconds'] for j in jobs):.1f} | {peaks} | {same} |")
    header = (f"Nightly `query --all -k 10 --no-prefect` under glibc malloc settings, {a.rounds} rounds alternating, "
              f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.uname().nodename}, {os.cpu_count()} cores")
    return {"runs": runs, "table": save_results(a.name, header, lines, {"runs": runs})}


if __name__ == "__main__":
    main()
