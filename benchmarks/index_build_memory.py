"""Building an index: memory and time of the in-RAM build against the part-by-part on-disk build, side by side.

    .venv/bin/python benchmarks/index_build_memory.py --n 1000000

Vectors: the real 32-d embeddings of a built workdir (default work/demo, from `make demo`) repeated to --n
with Gaussian noise (as benchmarks/index_scale.py makes them), written as the embed stage writes them:
Parquet parts of 50,000 rows plus a manifest. Each kind is built by `vaepipe.index.build_index`, the
product's own path, in a fresh process (clean peak memory): HNSW ("auto" below `in_ram_below`, built in
RAM) and ivf-disk (built one part at a time, lists merged into a file). Then both are opened as queries
open them and measured on 2,000 held-out queries against exact search over the same vectors.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vaepipe.config import EmbedConfig, IndexConfig
from vaepipe.index import SearchIndex, build_index, prepare
from vaepipe.store import MANIFEST_SCHEMA, embedding_schema

from index_scale import noisy_copies
from results_io import save_results  # benchmarks/ is on sys.path when a script runs

REPO = Path(__file__).resolve().parents[1]


def status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def build(kind: str, folder: Path) -> dict:
    """In a child: build with the product's build_index, report seconds and memory.

    Peak RSS also counts pages of files the build maps (FAISS reads the per-part indexes and writes the merged
    lists through mmap: page cache, which the kernel can drop), so private memory (RssAnon) is sampled too.
    """
    before = status_mb("RssAnon")
    peak_private = [before]

    def sample() -> None:
        while True:
            peak_private[0] = max(peak_private[0], status_mb("RssAnon"))
            time.sleep(0.02)

    threading.Thread(target=sample, daemon=True).start()
    t0 = time.monotonic()
    result = build_index(folder / "emb", folder / "manifest.parquet", folder / f"index-{kind}", "bench", IndexConfig(kind=kind))
    return {"kind": kind, "build_s": round(time.monotonic() - t0, 1), "private_before_mb": round(before),
            "peak_private_mb": round(peak_private[0]),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024), "params": result.params,
            "sample_recall@10": round(result.recall_at_10, 4)}


def write_collection(folder: Path, vectors: np.ndarray) -> None:
    (folder / "emb").mkdir(parents=True)
    rows = EmbedConfig().part_rows
    shas = [f"{i:064x}" for i in range(len(vectors))]
    for j, start in enumerate(range(0, len(vectors), rows)):
        s = slice(start, start + rows)
        n = len(vectors[s])
        pq.write_table(pa.table({"path": [f"{i:08d}.png" for i in range(start, start + n)], "sha256": shas[s],
                                 "model_id": ["bench"] * n,
                                 "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors[s].ravel()), vectors.shape[1])},
                                schema=embedding_schema(vectors.shape[1])), folder / "emb" / f"part-{j:05d}.parquet")
    manifest = {"path": [f"{i:08d}.png" for i in range(len(vectors))], "sha256": shas, "status": ["ok"] * len(vectors)}
    pq.write_table(pa.table({f.name: manifest.get(f.name, pa.nulls(len(vectors), f.type)) for f in MANIFEST_SCHEMA},
                            schema=MANIFEST_SCHEMA), folder / "manifest.parquet")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--workdir", type=Path, default=REPO / "work" / "demo")
    ap.add_argument("--queries", type=int, default=2_000)
    ap.add_argument("--build", nargs=2, metavar=("KIND", "FOLDER"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.build:
        print("RESULT " + json.dumps(build(args.build[0], Path(args.build[1]))))
        return

    vectors, raw_queries = noisy_copies(args.workdir, args.n, args.queries)
    folder = Path(tempfile.mkdtemp(prefix="vaepipe-ibm-"))
    write_collection(folder, vectors)
    centre = vectors.mean(0)
    x, q = prepare(vectors, "cosine", centre), prepare(raw_queries, "cosine", centre)
    del vectors
    t0 = time.monotonic()
    _, truth = faiss.knn(q, x, 10, metric=faiss.METRIC_INNER_PRODUCT)
    exact_qps = len(q) / (time.monotonic() - t0)
    del x

    rows = []
    for kind in ("hnsw", "ivf-disk"):
        proc = subprocess.run([sys.executable, __file__, "--build", kind, str(folder)], capture_output=True, text=True, check=True)
        row = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
        index = SearchIndex.open(folder / f"index-{kind}")
        t0 = time.monotonic()
        found, _, _ = index.search(raw_queries, 10)
        row["qps"] = round(len(q) / (time.monotonic() - t0))
        row["recall@10"] = round(float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found.tolist(), truth.tolist())])), 4)
        row["files_mb"] = round(sum(p.stat().st_size for p in (folder / f"index-{kind}").iterdir()) / 1e6)
        rows.append(row)
        print(row, flush=True)
    shutil.rmtree(folder, ignore_errors=True)  # ~0.7 GB per million vectors

    header = (f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {platform.machine()}, {os.cpu_count()} cores, "
              f"faiss {faiss.__version__}; {args.n:,} vectors of dimension {q.shape[1]} (real embeddings of {args.workdir.name} "
              f"repeated with noise) in {-(-args.n // EmbedConfig().part_rows)} parts, {len(q):,} held-out queries, exact search "
              f"{exact_qps:,.0f} queries/s; command: `python benchmarks/index_build_memory.py --n {args.n} --workdir {args.workdir}`")
    lines = ["| kind | params | build s | private MB after imports | peak private MB | peak RSS MB | index files MB | queries/s | recall@10 vs exact |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        params = {k: v for k, v in r["params"].items() if k != "lists"}
        lines.append(f"| {r['kind']} | {params} | {r['build_s']} | {r['private_before_mb']:,} | {r['peak_private_mb']:,} | "
                     f"{r['peak_rss_mb']:,} | {r['files_mb']:,} | {r['qps']:,} | {r['recall@10']} |")
    save_results(f"index_build_memory-{args.n}", header, lines, {"rows": rows, "exact_qps": exact_qps})


if __name__ == "__main__":
    main()
