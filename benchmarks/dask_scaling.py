"""Embedding on a Dask cluster of 1 and 2 worker processes, beside the default one-process run, through build-index.

    .venv/bin/python benchmarks/dask_scaling.py --images 100000 --shard-size 10000 --repeats 3

Every run uses the same folder (Fashion-MNIST PNGs from benchmarks/throughput.py) and the same model
(trained once on a sample, then passed as --model), so only the embed stage differs. Each Dask cluster is
a LocalCluster of worker processes with one thread each, started here and handed to the flow by address
(the `--dask-address` path). Its start is timed apart from the embedding; it includes the workers' imports
of the product (spawned workers import this script, and with it torch and Prefect), which a long-lived
cluster pays once. Rounds alternate the three
setups so a noisy minute hits each alike; the table shows each one's median. Results:
benchmarks/results/dask_scaling.json and .md.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

from results_io import save_results  # benchmarks/ is on sys.path when a script runs


import flows  # noqa: E402,F401
from throughput import make_folder  # noqa: E402

from flows.build_index import build_index  # noqa: E402
from vaepipe.config import BuildConfig, EmbedConfig, TrainConfig  # noqa: E402

SETUPS = {0: "one process, 2 DataLoader workers (default)", 1: "Dask, 1 worker process", 2: "Dask, 2 worker processes"}


def run(folder: Path, workdir: Path, checkpoint: Path, config: BuildConfig, dask_workers: int) -> dict:
    """One build of the folder into a fresh workdir; Dask runs get a cluster started here, by address."""
    cluster_seconds = 0.0
    cluster = None
    if dask_workers:
        from distributed import LocalCluster

        t0 = time.monotonic()
        cluster = LocalCluster(n_workers=dask_workers, threads_per_worker=1, processes=True, dashboard_address=None)
        cluster_seconds = time.monotonic() - t0
    try:
        summary = build_index(str(folder), str(workdir), model=str(checkpoint), config=config,
                              dask_address=cluster.scheduler_address if cluster else None)
    finally:
        if cluster:
            cluster.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return {"dask workers": dask_workers, "cluster start seconds": round(cluster_seconds, 2),
            "embed seconds": summary["embed seconds"], "images per second": round(summary["embedded now"] / summary["embed seconds"])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=100_000)
    ap.add_argument("--shard-size", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=3, help="rounds of the three setups")
    args = ap.parse_args()
    folder = make_folder("png", args.images)
    tmp = Path(tempfile.mkdtemp(prefix="vaepipe-dask-"))
    config = BuildConfig(train=TrainConfig(epochs=1, max_images=10_000), embed=EmbedConfig(part_rows=args.shard_size))
    first = build_index(str(folder), str(tmp / "train"), config=config)
    checkpoint = tmp / "train" / "models" / first["model id"] / "model.pt"
    runs: dict[int, list[dict]] = {}
    for _ in range(args.repeats):
        for workers in SETUPS:
            row = run(folder, tmp / f"run{workers}", checkpoint, config, workers)
            runs.setdefault(workers, []).append(row)
            print(row, flush=True)
    shutil.rmtree(tmp, ignore_errors=True)
    rows = []
    for workers, measured in runs.items():
        median = sorted(measured, key=lambda r: r["embed seconds"])[len(measured) // 2]
        rows.append({**median, "runs_embed_seconds": [r["embed seconds"] for r in measured]})
    header = (f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {platform.machine()}, {os.cpu_count()} cores; "
              f"{args.images:,} 28x28 PNGs in shards of {args.shard_size:,}, one torch thread per Dask worker; "
              f"each figure the median of {args.repeats} rounds; "
              f"command: `python benchmarks/dask_scaling.py --images {args.images} --shard-size {args.shard_size} --repeats {args.repeats}`")
    lines = ["| setup | cluster start s | embed s | images/s | embed s, every round |", "|---|---:|---:|---:|---|"]
    lines += [f"| {SETUPS[r['dask workers']]} | {r['cluster start seconds'] if r['dask workers'] else '-'} | "
              f"{r['embed seconds']} | {r['images per second']:,} | {', '.join(map(str, r['runs_embed_seconds']))} |" for r in rows]
    by = {r["dask workers"]: r for r in rows}
    lines.append(f"\nScaling 1 -> 2 Dask workers: {by[1]['embed seconds'] / by[2]['embed seconds']:.2f}x; "
                 f"2 Dask workers against one process: {by[0]['embed seconds'] / by[2]['embed seconds']:.2f}x.")
    save_results("dask_scaling", header, lines, {"rows": rows})


if __name__ == "__main__":
    main()
