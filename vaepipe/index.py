"""Stage 4: a FAISS index over the embeddings of the collection's current files.

Row i of the index is row i of ids.parquet (path, sha256): index rows map back to manifest rows.
The default metric is cosine on centred, L2-normalised posterior means (chosen by measurement, see
BENCHMARKS.md). "auto" picks exact search below `exact_below` vectors and HNSW above, and the
search-time knob is raised until recall@10 against exact search reaches the target on a sample.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from vaepipe.config import IndexConfig
from vaepipe.ingest import read_ok
from vaepipe.store import VaepipeError, atomic_path, fingerprint, read_json, write_json, write_parquet

log = logging.getLogger("vaepipe")

HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
EF_SEARCH_STEPS = (16, 32, 64, 128, 256, 512)
NPROBE_STEPS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


@dataclass
class IndexResult:
    index_dir: Path
    kind: str
    n: int
    dim: int
    recall_at_10: float
    params: dict


def load_vectors(embeddings_dir: Path, manifest_path: Path) -> tuple[pa.Table, np.ndarray]:
    """(ids: path, sha256 sorted by path; vectors float32 (N, d)) for every usable manifest row with an embedding.

    Two paths with the same content are two rows with the same vector: both can be found.
    """
    parts = sorted(Path(embeddings_dir).glob("part-*.parquet"))
    if not parts:
        raise VaepipeError(f"no embeddings in {embeddings_dir}: run the embed stage first")
    emb = pa.concat_tables([pq.read_table(p, columns=["sha256", "embedding"]) for p in parts])
    dim = emb.schema.field("embedding").type.list_size
    ok = read_ok(manifest_path).select(["path", "sha256"]).sort_by("path")
    # Matched in Arrow, not through a dict of Python strings (~150 bytes per image, held while the index is built).
    found = pc.index_in(ok["sha256"], value_set=emb["sha256"].combine_chunks())  # a sha embedded twice: the first
    ids = ok.filter(pc.is_valid(found))
    all_vectors = emb["embedding"].combine_chunks().flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)
    vectors = all_vectors[pc.drop_null(found).to_numpy().astype(np.int64)]
    return ids, np.ascontiguousarray(vectors, dtype=np.float32)


def prepare(vectors: np.ndarray, metric: str, centre: np.ndarray) -> np.ndarray:
    """What the index stores and what queries must become before search: centred and unit length for cosine."""
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if metric == "cosine":
        x = np.ascontiguousarray(x - centre, dtype=np.float32)
        faiss.normalize_L2(x)
    return x


def _faiss_metric(metric: str) -> int:
    return faiss.METRIC_INNER_PRODUCT if metric == "cosine" else faiss.METRIC_L2


def _make_index(kind: str, x: np.ndarray, metric: str, seed: int = 0) -> tuple[faiss.Index, dict]:
    n, d = x.shape
    if kind == "flat":
        index = faiss.IndexFlat(d, _faiss_metric(metric))
        params: dict = {}
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, HNSW_M, _faiss_metric(metric))
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        params = {"M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION}
    elif kind == "ivf":
        nlist = max(1, min(int(4 * math.sqrt(n)), n // 39))  # FAISS wants >= 39 training points per list
        quantizer = faiss.IndexFlat(d, _faiss_metric(metric))
        index = faiss.IndexIVFFlat(quantizer, d, nlist, _faiss_metric(metric))
        rng = np.random.default_rng(seed)
        train = x[rng.choice(n, size=min(n, 256 * nlist), replace=False)]
        index.train(train)
        params = {"nlist": nlist}
    else:
        raise VaepipeError(f"unknown index kind {kind!r}: use auto, flat, hnsw or ivf")
    index.add(x)
    return index, params


def _set_knob(index: faiss.Index, kind: str, value: int) -> dict:
    if kind == "hnsw":
        index.hnsw.efSearch = value
        return {"efSearch": value}
    if kind == "ivf":
        index.nprobe = value
        return {"nprobe": value}
    return {}


def recall_at_10(index: faiss.Index, x: np.ndarray, queries: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    _, found = index.search(x[queries], k)
    hits = sum(len(set(f) & set(t)) for f, t in zip(found.tolist(), truth.tolist()))
    return hits / truth.size


def tune(index: faiss.Index, kind: str, x: np.ndarray, cfg: IndexConfig, seed: int = 0) -> tuple[float, dict]:
    """Measure recall@10 against exact search on a sample; for approximate kinds, raise the knob until the target."""
    if kind == "flat":
        return 1.0, {}
    n = len(x)
    k = min(10, n)
    rng = np.random.default_rng(seed)
    queries = rng.choice(n, size=min(cfg.recall_sample, n), replace=False)
    exact = faiss.IndexFlat(x.shape[1], index.metric_type)
    exact.add(x)
    _, truth = exact.search(x[queries], k)
    steps = EF_SEARCH_STEPS if kind == "hnsw" else [s for s in NPROBE_STEPS if s <= index.nlist] or [index.nlist]
    recall, knob = 0.0, {}
    for value in steps:
        knob = _set_knob(index, kind, value)
        recall = recall_at_10(index, x, queries, truth)
        log.info("index: %s %s -> recall@10 %.4f", kind, knob, recall)
        if recall >= cfg.target_recall:
            break
    return recall, knob


def build_index(embeddings_dir: Path, manifest_path: Path, index_dir: Path, model_id: str,
                cfg: IndexConfig = IndexConfig()) -> IndexResult:
    t0 = time.monotonic()
    ids, vectors = load_vectors(embeddings_dir, manifest_path)
    n, dim = vectors.shape
    if n == 0:
        raise VaepipeError("no usable images to index: every file in the manifest failed (see manifest.parquet)")
    if cfg.metric not in ("cosine", "l2"):
        raise VaepipeError(f"unknown metric {cfg.metric!r}: use cosine or l2")
    kind = cfg.kind if cfg.kind != "auto" else ("flat" if n < cfg.exact_below else "hnsw")
    centre = vectors.mean(0) if cfg.metric == "cosine" else np.zeros(dim, np.float32)
    x = prepare(vectors, cfg.metric, centre)
    index, params = _make_index(kind, x, cfg.metric)
    recall, knob = tune(index, kind, x, cfg)
    params.update(knob)

    index_dir = Path(index_dir)
    log.info("index: writing %s", index_dir)
    with atomic_path(index_dir / "index.faiss") as tmp:
        faiss.write_index(index, str(tmp))
    write_parquet(ids, index_dir / "ids.parquet")
    meta = {
        "kind": kind, "params": params, "n": n, "dim": dim, "metric": cfg.metric,
        "recall_at_10": recall, "recall_sample": min(cfg.recall_sample, n) if kind != "flat" else 0,
        "model_id": model_id, "centre": centre.astype(float).tolist(),
        "source_fingerprint": source_fingerprint(model_id, ids),
        "config": asdict(cfg), "build_seconds": round(time.monotonic() - t0, 3),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json(meta, index_dir / "index.json")  # written last: its presence means the index is whole
    log.info("index: %s over %d x %d (%s), recall@10 %.4f, %s", kind, n, dim, cfg.metric, recall, params)
    return IndexResult(index_dir, kind, n, dim, recall, params)


def source_fingerprint(model_id: str, ids: pa.Table) -> str:
    return fingerprint(model_id, *ids["path"].to_pylist(), *ids["sha256"].to_pylist())


@dataclass
class SearchIndex:
    """A built index opened for search: the one way queries reach FAISS."""

    index: faiss.Index
    ids: pa.Table
    meta: dict

    @classmethod
    def open(cls, index_dir: Path, mmap: bool = True) -> SearchIndex:
        """Memory-mapped by default: the vectors (flat, HNSW) or inverted lists (IVF) stay in the file and are
        paged in as searches touch them, so opening costs no RAM up front and an IVF search reads only the lists
        it probes. The HNSW graph itself is always read into RAM (BENCHMARKS.md has the figures)."""
        index_dir = Path(index_dir)
        if not (index_dir / "index.json").exists():
            raise VaepipeError(f"no complete index in {index_dir} (index.json missing): rebuild with `vaepipe index`")
        meta = read_json(index_dir / "index.json")
        try:
            # IVF takes IO_FLAG_MMAP (on-disk inverted lists); flat and HNSW storage take IO_FLAG_MMAP_IFC.
            flags = (faiss.IO_FLAG_MMAP if meta["kind"] == "ivf" else faiss.IO_FLAG_MMAP_IFC) if mmap else 0
            index = faiss.read_index(str(index_dir / "index.faiss"), flags)
            ids = pq.read_table(index_dir / "ids.parquet")
        except Exception as e:  # FAISS raises RuntimeError, Arrow its own: both mean the files are damaged
            raise VaepipeError(f"index in {index_dir} is unreadable ({e}): rebuild with `vaepipe index`") from None
        if index.ntotal != meta["n"] or ids.num_rows != meta["n"] or index.d != meta["dim"]:
            raise VaepipeError(f"index in {index_dir} is inconsistent (index has {index.ntotal} rows, ids "
                               f"{ids.num_rows}, index.json says {meta['n']}): rebuild with `vaepipe index`")
        if source_fingerprint(meta["model_id"], ids) != meta["source_fingerprint"]:
            raise VaepipeError(f"index in {index_dir} does not match its recorded source: rebuild with `vaepipe index`")
        _set_knob(index, meta["kind"], meta["params"].get("efSearch") or meta["params"].get("nprobe") or 0)
        if meta["kind"] == "ivf":
            index.make_direct_map()  # lets stored_vectors() reconstruct rows
        return cls(index, ids, meta)

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    def search(self, vectors: np.ndarray, k: int, prepared: bool = False
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rows (Q, k) with -1 where fewer were found, distance, similarity). Cosine: distance = 1 - cosine.

        `vectors` are posterior means, or with prepared=True vectors already as stored (from `stored_vectors`).
        """
        if vectors.shape[1] != self.dim:
            raise VaepipeError(f"query embeddings have dimension {vectors.shape[1]} but the index has {self.dim}: "
                               "the index was built with another model; rebuild with `vaepipe index`")
        x = vectors if prepared else prepare(vectors, self.meta["metric"], np.asarray(self.meta["centre"], np.float32))
        scores, rows = self.index.search(np.ascontiguousarray(x, dtype=np.float32), k)
        if self.meta["metric"] == "cosine":
            return rows, (1.0 - scores).astype(np.float32), scores.astype(np.float32)
        distance = np.sqrt(np.maximum(scores, 0)).astype(np.float32)  # FAISS L2 scores are squared
        return rows, distance, (1.0 / (1.0 + distance)).astype(np.float32)

    def stored_vectors(self, rows: np.ndarray) -> np.ndarray:
        """Vectors of index rows as stored (prepared), for querying the collection against itself."""
        return self.index.reconstruct_batch(np.asarray(rows, dtype=np.int64))
