"""What opening an index costs in RAM: memory-mapped (the default of SearchIndex.open) against read into RAM.

    .venv/bin/python benchmarks/index_mmap.py --n 1000000

Builds, through vaepipe.index.build_index, a flat and an IVF index over --n 32-d vectors (random, clustered:
the memory figures do not depend on what the vectors mean), then in a fresh process per case opens each with
SearchIndex.open(mmap=True / False) and runs 1,000 queries. Reports the process's private memory (RssAnon:
what the index costs in RAM) and its file-backed resident pages (RssFile: page cache the kernel can drop), and
whether both ways return the same neighbours.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from results_io import save_results  # benchmarks/ is on sys.path when a script runs



def status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def build(root: Path, n: int, dim: int = 32) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from vaepipe.config import IndexConfig
    from vaepipe.index import build_index
    from vaepipe.store import MANIFEST_SCHEMA, embedding_schema

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(1000, dim)).astype(np.float32)
    vectors = centres[rng.integers(0, len(centres), n)] + 0.3 * rng.normal(size=(n, dim)).astype(np.float32)
    paths = [f"{i:08d}.png" for i in range(n)]
    shas = [f"{i:064x}" for i in range(n)]
    (root / "emb").mkdir(parents=True)
    pq.write_table(pa.table({"path": paths, "sha256": shas, "model_id": ["m"] * n,
                             "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dim)},
                            schema=embedding_schema(dim)), root / "emb" / "part-00000.parquet")
    given = {"path": paths, "sha256": shas, "status": ["ok"] * n}
    pq.write_table(pa.table({f.name: pa.array(given[f.name], f.type) if f.name in given else pa.nulls(n, f.type)
                             for f in MANIFEST_SCHEMA}, schema=MANIFEST_SCHEMA), root / "manifest.parquet")
    np.save(root / "queries.npy", vectors[rng.choice(n, 1000, replace=False)])
    for kind in ("flat", "ivf"):
        t0 = time.monotonic()
        build_index(root / "emb", root / "manifest.parquet", root / kind, "m", IndexConfig(kind=kind))
        print(f"built {kind} in {time.monotonic() - t0:.0f} s", flush=True)


def measure(root: Path, kind: str, mmap: bool) -> dict:
    import numpy as np

    from vaepipe.index import SearchIndex

    before = status_mb("RssAnon")
    t0 = time.monotonic()
    index = SearchIndex.open(root / kind, mmap=mmap)
    open_s = time.monotonic() - t0
    after_open = status_mb("RssAnon")
    t0 = time.monotonic()
    rows, _, _ = index.search(np.load(root / "queries.npy"), 10)
    return {"kind": kind, "mmap": mmap, "index_mb": round((root / kind / "index.faiss").stat().st_size / 2**20),
            "open_s": round(open_s, 2), "search_s": round(time.monotonic() - t0, 2),
            "anon_mb_open": round(after_open - before), "anon_mb_after_search": round(status_mb("RssAnon") - before),
            "file_mb_after_search": round(status_mb("RssFile")), "rows_hash": hashlib.sha256(rows.tobytes()).hexdigest()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--measure", nargs=3, metavar=("ROOT", "KIND", "MMAP"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        root, kind, mmap = args.measure
        print("RESULT " + json.dumps(measure(Path(root), kind, mmap == "1")))
        return
    root = Path(tempfile.mkdtemp(prefix="vaepipe-mmap-"))
    build(root, args.n)
    rows = []
    for kind in ("flat", "ivf"):
        for mmap in (False, True):
            out = subprocess.run([sys.executable, __file__, "--measure", str(root), kind, "1" if mmap else "0"],
                                 capture_output=True, text=True, check=True).stdout
            rows.append(json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:]))
            print(rows[-1], flush=True)
    shutil.rmtree(root, ignore_errors=True)
    header = (f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {platform.machine()}, {os.cpu_count()} cores; "
              f"{args.n:,} vectors of dimension 32; command: `python benchmarks/index_mmap.py --n {args.n}`")
    lines = ["| index | opened | file MB | open s | private RAM after open MB | private RAM after 1,000 queries MB "
             "| same neighbours |", "|---|---|---:|---:|---:|---:|---|"]
    for r in rows:
        same = r["rows_hash"] == next(x["rows_hash"] for x in rows if x["kind"] == r["kind"] and not x["mmap"])
        lines.append(f"| {r['kind']} | {'memory-mapped' if r['mmap'] else 'read into RAM'} | {r['index_mb']:,} | "
                     f"{r['open_s']} | {r['anon_mb_open']:,} | {r['anon_mb_after_search']:,} | {'yes' if same else 'NO'} |")
    save_results("index_mmap", header, lines, {"rows": rows})


if __name__ == "__main__":
    main()
