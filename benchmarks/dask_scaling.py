"""Embedding on a local Dask cluster of 1 and 2 worker processes, side by side in one run, through build-index.

    .venv/bin/python benchmarks/dask_scaling.py --images 10000

Both runs use the same folder (Fashion-MNIST PNGs from benchmarks/throughput.py) and the same model
(trained once, then passed as --model), so only the embed stage differs. Results:
benchmarks/results/dask_scaling.json and .md.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import shutil
import tempfile
import time
from pathlib import Path

from results_io import save_results  # benchmarks/ is on sys.path when a script runs

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import flows  # noqa: E402,F401
from throughput import make_folder  # noqa: E402

from flows.build_index import build_index  # noqa: E402
from vaepipe.config import BuildConfig, EmbedConfig, TrainConfig  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=10_000)
    ap.add_argument("--shard-size", type=int, default=1_000)
    args = ap.parse_args()
    folder = make_folder("png", args.images)
    tmp = Path(tempfile.mkdtemp(prefix="vaepipe-dask-"))
    config = BuildConfig(train=TrainConfig(epochs=1), embed=EmbedConfig(part_rows=args.shard_size))
    first = build_index(str(folder), str(tmp / "train"), config=config)
    checkpoint = tmp / "train" / "models" / first["model id"] / "model.pt"
    rows = []
    for workers in (1, 2):
        t0 = time.monotonic()
        summary = build_index(str(folder), str(tmp / f"dask{workers}"), model=str(checkpoint), config=config,
                              dask_workers=workers)
        rows.append({"dask workers": workers, "embed seconds": summary["embed seconds"],
                     "images per second": round(args.images / summary["embed seconds"]),
                     "whole build seconds": round(time.monotonic() - t0, 1)})
        print(rows[-1], flush=True)
    shutil.rmtree(tmp, ignore_errors=True)
    header = (f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {platform.machine()}, {os.cpu_count()} cores; "
              f"{args.images:,} 28x28 PNGs in shards of {args.shard_size:,}, one torch thread per worker; "
              f"command: `python benchmarks/dask_scaling.py --images {args.images}`")
    lines = ["| Dask workers | embed s (incl. cluster start) | images/s | whole build s |", "|---:|---:|---:|---:|"]
    lines += [f"| {r['dask workers']} | {r['embed seconds']} | {r['images per second']:,} | {r['whole build seconds']} |" for r in rows]
    lines.append(f"\nScaling 1 -> 2 workers: {rows[0]['embed seconds'] / rows[1]['embed seconds']:.2f}x.")
    save_results("dask_scaling", header, lines, {"rows": rows})


if __name__ == "__main__":
    main()
