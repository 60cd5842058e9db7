"""Index build and bulk query at a million vectors: the product's index kinds side by side with exact search.

    .venv/bin/python benchmarks/index_scale.py --n 1000000 [--autofaiss-python /path/to/venv/bin/python]

autofaiss pins numpy < 2, so it lives in its own venv: python3 -m venv /tmp/af && /tmp/af/bin/pip install autofaiss "pyarrow<18"

Vectors: the 10,000 real 32-d embeddings of a built workdir (default work/demo, from `make demo`),
repeated to --n with Gaussian noise (0.15 x each dimension's spread), prepared as the product does
(cosine: centred, unit length). Queries: 2,000 fresh noisy copies, not in the index. For exact search
(IndexFlat), HNSW and IVF as vaepipe builds and tunes them (search knob raised until recall@10 >= 0.95
on a sample): build seconds, index bytes, queries per second, recall@10 against exact search; then
all-against-all over every indexed vector with the product's automatic choice. autofaiss (in its own
venv: it pins numpy < 2) is given the same vectors and memory budget when --autofaiss-python is set.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from vaepipe.config import IndexConfig
from vaepipe.index import make_index, load_vectors, prepare, tune
from vaepipe.store import Workdir

from results_io import save_results  # benchmarks/ is on sys.path when a script runs

REPO = Path(__file__).resolve().parents[1]


def noisy_copies(workdir: Path, n: int, queries: int) -> tuple[np.ndarray, np.ndarray]:
    """(n vectors, held-out queries): a built workdir's real embeddings repeated with Gaussian noise of 0.15 x
    each dimension's spread; the queries are fresh noisy copies, not in the n."""
    wd = Workdir(workdir)
    _, base = load_vectors(wd.embeddings_dir(wd.read_collection()["model_id"]), wd.manifest)
    rng = np.random.default_rng(0)
    spread = base.std(0) * 0.15
    vectors = np.tile(base, (-(-n // len(base)), 1))[:n] + rng.normal(size=(n, base.shape[1])) * spread
    held_out = base[rng.integers(0, len(base), queries)] + rng.normal(size=(queries, base.shape[1])) * spread
    return vectors.astype(np.float32), held_out.astype(np.float32)


def qps_and_recall(index: faiss.Index, queries: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    t0 = time.monotonic()
    _, found = index.search(queries, 10)
    seconds = time.monotonic() - t0
    recall = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found.tolist(), truth.tolist())])
    return len(queries) / seconds, float(recall)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--workdir", type=Path, default=REPO / "work" / "demo")
    ap.add_argument("--queries", type=int, default=2_000)
    ap.add_argument("--autofaiss-python", help="python of a venv with autofaiss installed")
    args = ap.parse_args()

    vectors, raw_queries = noisy_copies(args.workdir, args.n, args.queries)
    centre = vectors.mean(0)
    x, q = prepare(vectors, "cosine", centre), prepare(raw_queries, "cosine", centre)
    del vectors

    rows = []
    t0 = time.monotonic()
    exact = faiss.IndexFlat(x.shape[1], faiss.METRIC_INNER_PRODUCT)
    exact.add(x)
    build = time.monotonic() - t0
    t0 = time.monotonic()
    _, truth = exact.search(q, 10)
    exact_qps = len(q) / (time.monotonic() - t0)
    rows.append({"index": "exact (IndexFlat)", "params": {}, "build_s": round(build, 1), "bytes": x.nbytes,
                 "qps": round(exact_qps), "recall@10": 1.0})
    cfg = IndexConfig()
    chosen = "flat" if args.n < cfg.exact_below else "hnsw"
    indexes = {}
    for kind in ("hnsw", "ivf"):
        t0 = time.monotonic()
        index, params = make_index(kind, x, "cosine")
        sample_recall, knob = tune(index, kind, x, cfg)
        build = time.monotonic() - t0
        qps, recall = qps_and_recall(index, q, truth)
        indexes[kind] = index
        with tempfile.NamedTemporaryFile() as f:
            faiss.write_index(index, f.name)
            size = os.path.getsize(f.name)
        rows.append({"index": kind + (" (product's choice)" if kind == chosen else ""), "params": {**params, **knob},
                     "build_s": round(build, 1), "bytes": size, "qps": round(qps), "recall@10": round(recall, 4),
                     "tuning sample recall@10": round(sample_recall, 4)})
        print(rows[-1], flush=True)

    # All against all with the product's choice: every indexed vector, k = 10 plus itself.
    index = indexes.get(chosen) or exact
    t0 = time.monotonic()
    for start in range(0, len(x), 65_536):
        index.search(x[start : start + 65_536], 11)
    all_seconds = time.monotonic() - t0

    autofaiss = None
    if args.autofaiss_python:
        tmp = Path(tempfile.mkdtemp(prefix="vaepipe-af-"))
        (tmp / "emb").mkdir()
        np.save(tmp / "emb" / "x.npy", x)
        t0 = time.monotonic()
        call = ("from autofaiss import build_index; build_index(embeddings=%r, index_path=%r, index_infos_path=%r, "
                "metric_type='ip', max_index_memory_usage='2G', current_memory_available='8G', "
                "max_index_query_time_ms=10)" % (str(tmp / "emb"), str(tmp / "af.index"), str(tmp / "infos.json")))
        subprocess.run([args.autofaiss_python, "-c", call], check=True, capture_output=True)
        build = time.monotonic() - t0
        af = faiss.read_index(str(tmp / "af.index"))
        infos = json.loads((tmp / "infos.json").read_text())
        qps, recall = qps_and_recall(af, q, truth)
        autofaiss = {"index": "autofaiss", "params": {"index_key": infos.get("index_key"), "index_param": infos.get("index_param")},
                     "build_s": round(build, 1), "bytes": os.path.getsize(tmp / "af.index"), "qps": round(qps),
                     "recall@10": round(recall, 4)}
        rows.append(autofaiss)

    header = (f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {platform.machine()}, {os.cpu_count()} cores, "
              f"faiss {faiss.__version__}; {args.n:,} vectors of dimension {x.shape[1]} (real embeddings of {args.workdir.name} "
              f"repeated with noise), {len(q):,} held-out queries; command: `python benchmarks/index_scale.py --n {args.n}`")
    lines = ["| index | params | build s | size MB | queries/s | recall@10 vs exact | speed-up vs exact |", "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['index']} | {r['params'] or '-'} | {r['build_s']} | {r['bytes'] / 1e6:,.0f} | {r['qps']:,} | "
                     f"{r['recall@10']} | {r['qps'] / exact_qps:.1f}x |")
    lines.append(f"\nAll against all ({len(x):,} queries, k=10) with the product's choice ({chosen}): {all_seconds:.0f} s. "
                 f"Peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MB.")
    save_results("index_scale", header, lines, {"rows": rows, "all_against_all_s": all_seconds})


if __name__ == "__main__":
    main()
