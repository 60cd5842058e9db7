"""Reliability on hostile input: a folder with every kind of bad file from tests/hostile.py plus a few
hundred good Fashion-MNIST images, through the real build-index flow. Prints and saves:
files tried, good embedded, bad recorded, bad by reason, and "lost", computed by comparing the
manifest and the index with the folder itself.

    .venv/bin/python benchmarks/reliability.py [--good 500]

Results: benchmarks/results/reliability.json and .md (copied into BENCHMARKS.md by hand).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import shutil
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import flows  # noqa: E402,F401  (Prefect settings before prefect is imported)
import pyarrow.parquet as pq  # noqa: E402
from conftest import write_fmnist  # noqa: E402
from hostile import write_hostile  # noqa: E402

from flows.build_index import build_index  # noqa: E402
from vaepipe.config import BuildConfig, EmbedConfig, IngestConfig, TrainConfig  # noqa: E402
from vaepipe.store import name_of  # noqa: E402
from test_fuzz import FORMATS, _mutated, _original  # noqa: E402


def write_fuzzed(folder: Path, per_format: int, seed: int = 0) -> int:
    """Damaged copies of a small file of every format (tests/test_fuzz.py's mutations): each must end as a row."""
    import random

    rng = random.Random(seed)
    folder.mkdir(parents=True)
    for suffix, fmt in FORMATS.items():
        data = _original(fmt)
        for i in range(per_format):
            (folder / f"{suffix}-{i:03d}.{suffix}").write_bytes(_mutated(data, rng))
    return per_format * len(FORMATS)


def files_in(root: Path) -> set[str]:
    """What a person sees in the folder: every file, not hidden, not through a symlinked directory."""
    seen = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for f in filenames:
            if not f.startswith("."):
                seen.add(name_of(os.path.relpath(os.path.join(dirpath, f), root)))
    return seen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--good", type=int, default=500)
    ap.add_argument("--fuzzed", type=int, default=100, help="damaged files per format")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="vaepipe-reliability-"))
    expect = write_hostile(tmp / "folder", tmp / "outside")
    write_fmnist(tmp / "folder" / "good", n=args.good)
    n_fuzzed = write_fuzzed(tmp / "folder" / "fuzzed", args.fuzzed)
    os.mkfifo(tmp / "folder" / "pipe.png")  # a reader that opened it would wait forever
    expect["pipe.png"] = "empty file"
    t0 = time.monotonic()
    summary = build_index(str(tmp / "folder"), str(tmp / "wd"),
                          config=BuildConfig(ingest=IngestConfig(workers=1), train=TrainConfig(epochs=2),
                                             embed=EmbedConfig(workers=0)))
    seconds = time.monotonic() - t0
    manifest = pq.read_table(tmp / "wd" / "manifest.parquet").to_pylist()
    ids = set(pq.read_table(Path(summary["index"]) / "ids.parquet")["path"].to_pylist())
    in_folder = files_in(tmp / "folder")
    shutil.rmtree(tmp, ignore_errors=True)
    rows = {r["path"]: r for r in manifest}
    ok = {p for p, r in rows.items() if r["status"] == "ok"}
    lost = len(in_folder - rows.keys()) + len(ok - ids)  # not in the manifest, or usable but not searchable
    wrong = [n for n, kind in expect.items()
             if (kind is None) != (rows.get(n, {}).get("status") == "ok")
             or (kind and not (rows.get(n, {}).get("error") or "").startswith(kind.removeprefix("skipped: ")))
             or (kind and (rows.get(n, {}).get("status") == "skipped") != kind.startswith("skipped: "))]
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "files tried": len(manifest), "of which fuzzed (damaged copies of every format)": n_fuzzed,
        "fuzzed files ending ok / error": f"{sum(rows[n]['status'] == 'ok' for n in rows if n.startswith('fuzzed/'))} / "
                                          f"{sum(rows[n]['status'] != 'ok' for n in rows if n.startswith('fuzzed/'))}",
        "crashes": 0,  # the build returned
        "good embedded": len(ids), "bad recorded": len(manifest) - len(ok),
        "bad by reason": summary["failed by reason"], "lost": lost, "recorded with the wrong outcome": wrong,
        "seconds": round(seconds, 1), "command": f"python benchmarks/reliability.py --good {args.good} --fuzzed {args.fuzzed}",
    }
    out = REPO / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "reliability.json").write_text(json.dumps(result, indent=2) + "\n")
    md = ["| figure | value |", "|---|---|"] + [f"| {k} | {v if not isinstance(v, dict) else ', '.join(f'{a}: {b}' for a, b in v.items())} |"
                                             for k, v in result.items()]
    (out / "reliability.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    print(f"lost: {lost}")


if __name__ == "__main__":
    main()
