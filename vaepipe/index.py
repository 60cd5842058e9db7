"""Stage 4: a FAISS index over the embeddings of the collection's current files.

Row i of the index is row i of ids.parquet (path, sha256): index rows map back to manifest rows.
The default metric is cosine on centred, L2-normalised posterior means (chosen by measurement, see
BENCHMARKS.md). "auto" picks exact search below `exact_below` vectors, HNSW up to `in_ram_below`, and
above that an IVF index built one embedding part at a time with its lists on disk ("ivf-disk"), so
building never holds every vector. The search-time knob is raised until recall@10 against exact search
reaches the target on a sample of queries.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from faiss.contrib.ondisk import merge_ondisk

from vaepipe.config import IndexConfig
from vaepipe.embeddings import Embedded
from vaepipe.ingest import read_ok
from vaepipe.errors import VaepipeError
from vaepipe.store import (GREY_INDEX_FILE, IDS_FILE, INDEX_FILE, INDEX_META_FILE, atomic_path, fingerprint_of, read_json,
                           write_json, write_parquet)

log = logging.getLogger("vaepipe")

HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
EF_SEARCH_STEPS = (16, 32, 64, 128, 256, 512)
NPROBE_STEPS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
IVF_TRAIN_MAX = 1_000_000  # vectors an IVF quantizer is trained on, at most
PAIR_BLOCK = 65_536  # pairs whose vectors pair_similarity gathers at a time


@dataclass
class IndexResult:
    index_dir: Path
    kind: str
    n: int
    dim: int
    recall_at_10: float
    params: dict


@dataclass
class Source:
    """Which embedding row each index row takes: the ids (path, sha256, sorted by path) and, per Parquet part,
    the index rows it fills and the rows of the part that fill them. Vectors stay on disk until asked for."""

    ids: pa.Table  # with a column greyscale where the parts have grey renderings (colour models)
    dim: int
    parts: list[tuple[Path, np.ndarray, np.ndarray]]  # (part file, index rows, rows within the part)

    @property
    def n(self) -> int:
        return self.ids.num_rows

    @property
    def spaces(self) -> list[str]:
        """The embedding columns an index is built over: the images, and where there are, their grey renderings."""
        return ["embedding", "grey_embedding"] if "greyscale" in self.ids.column_names else ["embedding"]

    def blocks(self, column: str = "embedding") -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(index rows, their vectors float32) one part at a time."""
        for part, rows, within in self.parts:
            if len(rows):
                table = pq.read_table(part, columns=[column])
                flat = table[column].combine_chunks().flatten().to_numpy(zero_copy_only=False)
                yield rows, np.ascontiguousarray(flat.reshape(-1, self.dim)[within], dtype=np.float32)

    def vectors(self, column: str = "embedding") -> np.ndarray:
        """Every index row's vector, float32 (n, d), in index order: all of them in RAM."""
        out = np.empty((self.n, self.dim), np.float32)
        for rows, block in self.blocks(column):
            out[rows] = block
        return out

    def gather(self, rows: np.ndarray, column: str = "embedding") -> np.ndarray:
        """The vectors of some index rows (in the order given), reading one part at a time."""
        out = np.empty((len(rows), self.dim), np.float32)
        where = np.full(self.n, -1, np.int64)
        where[rows] = np.arange(len(rows))
        for block_rows, vectors in self.blocks(column):
            at = where[block_rows]
            out[at[at >= 0]] = vectors[at >= 0]
        return out


def match_embeddings(embeddings_dir: Path, manifest_path: Path) -> Source:
    """Every usable manifest row with an embedding, sorted by path; two paths with the same content are two
    rows with the same vector, so both can be found."""
    parts = sorted(Path(embeddings_dir).glob("part-*.parquet"))
    if not parts:
        raise VaepipeError(f"no embeddings in {embeddings_dir}: run the embed stage first")
    shas = [pq.read_table(p, columns=["sha256"])["sha256"].combine_chunks() for p in parts]
    schema = pq.read_schema(parts[0]).remove_metadata()
    if any(not pq.read_schema(p).remove_metadata().equals(schema) for p in parts[1:]):
        raise VaepipeError(f"the parts in {embeddings_dir} have different columns (written by different versions): "
                           "run the embed stage again, which sets the outdated ones aside")
    dim = schema.field("embedding").type.list_size
    ok = read_ok(manifest_path).select(["path", "sha256"]).sort_by("path")
    # Matched in Arrow, not through a dict of Python strings (~150 bytes per image, held while the index is built).
    found = pc.index_in(ok["sha256"], value_set=pa.chunked_array(shas, pa.string()).combine_chunks())  # a sha embedded twice: the first
    ids = ok.filter(pc.is_valid(found))
    at = pc.drop_null(found).to_numpy().astype(np.int64)  # row in all parts, concatenated
    starts = np.cumsum([0] + [len(s) for s in shas])
    part_of = np.searchsorted(starts, at, side="right") - 1
    by_part = np.argsort(part_of, kind="stable")  # index rows grouped by part, in index order within each
    bounds = np.searchsorted(part_of[by_part], np.arange(len(parts) + 1))
    matched = [(part, by_part[bounds[j]:bounds[j + 1]], at[by_part[bounds[j]:bounds[j + 1]]] - starts[j])
               for j, part in enumerate(parts)]
    if "greyscale" in schema.names:  # 1 byte an image: read whole
        flags = pa.concat_arrays([pq.read_table(p, columns=["greyscale"])["greyscale"].combine_chunks() for p in parts])
        ids = ids.append_column("greyscale", flags.take(pa.array(at)))
    return Source(ids, dim, matched)


def load_vectors(embeddings_dir: Path, manifest_path: Path) -> tuple[pa.Table, np.ndarray]:
    """(ids: path, sha256 sorted by path; vectors float32 (N, d)) for every usable manifest row with an embedding."""
    source = match_embeddings(embeddings_dir, manifest_path)
    return source.ids, source.vectors()


def prepare(vectors: np.ndarray, metric: str, centre: np.ndarray) -> np.ndarray:
    """What the index stores and what queries must become before search: centred and unit length for cosine."""
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if metric == "cosine":
        x = np.ascontiguousarray(x - centre, dtype=np.float32)
        faiss.normalize_L2(x)
    return x


def _faiss_metric(metric: str) -> int:
    return faiss.METRIC_INNER_PRODUCT if metric == "cosine" else faiss.METRIC_L2


def make_index(kind: str, x: np.ndarray, metric: str, seed: int = 0) -> tuple[faiss.Index, dict]:
    """A FAISS index of one kind ("flat", "hnsw", "ivf") over prepared vectors x, and the parameters it was built
    with; the search-time knob is tuned apart (`tune`)."""
    n, d = x.shape
    if kind == "flat":
        index = faiss.IndexFlat(d, _faiss_metric(metric))
        params: dict = {}
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, HNSW_M, _faiss_metric(metric))
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        params = {"M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION}
    elif kind == "ivf":
        index = _trained_ivf(x[_ivf_training_rows(n, seed)], _ivf_nlist(n), metric)
        params = {"nlist": index.nlist}
    else:
        raise VaepipeError(f"unknown index kind {kind!r}: use auto, flat, hnsw or ivf")
    index.add(x)
    return index, params


def _ivf_training_rows(n: int, seed: int = 0) -> np.ndarray:
    """Rows to train an IVF quantizer on: up to 256 per list, at most IVF_TRAIN_MAX (128 MB at 32-d) however large n."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=min(n, 256 * _ivf_nlist(n), IVF_TRAIN_MAX), replace=False))


def _ivf_nlist(n: int) -> int:
    return max(1, min(int(4 * math.sqrt(n)), n // 39))  # FAISS wants >= 39 training points per list


def _trained_ivf(train: np.ndarray, nlist: int, metric: str) -> faiss.IndexIVFFlat:
    """An empty IVF index with `nlist` lists trained on `train` (prepared vectors)."""
    quantizer = faiss.IndexFlat(train.shape[1], _faiss_metric(metric))
    index = faiss.IndexIVFFlat(quantizer, train.shape[1], nlist, _faiss_metric(metric))  # keeps a reference to quantizer
    index.train(train)
    return index


def _set_knob(index: faiss.Index, kind: str, value: int) -> dict:
    if kind == "hnsw":
        index.hnsw.efSearch = value
        return {"efSearch": value}
    if kind in ("ivf", "ivf-disk"):
        index.nprobe = value
        return {"nprobe": value}
    return {}


def exact_neighbours(queries: np.ndarray, blocks: Iterable[tuple[np.ndarray, np.ndarray]], k: int, metric: str) -> np.ndarray:
    """Index rows of each prepared query's k nearest stored vectors, by brute force over (rows, prepared vectors)
    blocks: the truth recall is measured against, one block in RAM at a time."""
    best_scores = np.zeros((len(queries), 0), np.float32)
    best_rows = np.zeros((len(queries), 0), np.int64)
    for rows, xb in blocks:
        scores, found = faiss.knn(queries, xb, min(k, len(xb)), metric=_faiss_metric(metric))
        best_scores = np.concatenate([best_scores, scores], axis=1)
        best_rows = np.concatenate([best_rows, rows[found]], axis=1)
        order = np.argsort(-best_scores if metric == "cosine" else best_scores, axis=1, kind="stable")[:, :k]
        best_scores = np.take_along_axis(best_scores, order, axis=1)
        best_rows = np.take_along_axis(best_rows, order, axis=1)
    return best_rows


def recall_at_10(index: faiss.Index, queries: np.ndarray, truth: np.ndarray) -> float:
    _, found = index.search(queries, truth.shape[1])
    hits = sum(len(set(f) & set(t)) for f, t in zip(found.tolist(), truth.tolist()))
    return hits / truth.size


def tune(index: faiss.Index, kind: str, queries: np.ndarray, truth: np.ndarray, cfg: IndexConfig) -> tuple[float, dict]:
    """Measure recall@10 of prepared sample queries against their exact neighbours (`truth`); for approximate
    kinds, raise the search knob until the target."""
    if kind == "flat":
        return 1.0, {}
    steps = EF_SEARCH_STEPS if kind == "hnsw" else [s for s in NPROBE_STEPS if s <= index.nlist] or [index.nlist]
    recall, knob = 0.0, {}
    for value in steps:
        knob = _set_knob(index, kind, value)
        recall = recall_at_10(index, queries, truth)
        log.info("index: %s %s -> recall@10 %.4f", kind, knob, recall)
        if recall >= cfg.target_recall:
            break
    return recall, knob


def choose_kind(n: int, cfg: IndexConfig) -> str:
    if cfg.kind != "auto":
        return cfg.kind
    return "flat" if n < cfg.exact_below else "hnsw" if n < cfg.in_ram_below else "ivf-disk"




def build_index(embeddings_dir: Path, manifest_path: Path, index_dir: Path, model_id: str,
                cfg: IndexConfig = IndexConfig()) -> IndexResult:
    """index.faiss over the images' embeddings and, for a colour model, grey.faiss over their grey renderings' (the
    space greyscale queries search), with ids.parquet and index.json, published as one version."""
    t0 = time.monotonic()
    if cfg.metric not in ("cosine", "l2"):
        raise VaepipeError(f"unknown metric {cfg.metric!r}: use cosine or l2")
    if cfg.kind not in ("auto", "flat", "hnsw", "ivf", "ivf-disk"):
        raise VaepipeError(f"unknown index kind {cfg.kind!r}: use auto, flat, hnsw, ivf or ivf-disk")
    source = match_embeddings(embeddings_dir, manifest_path)
    n, dim = source.n, source.dim
    if n == 0:
        raise VaepipeError("no usable images to index: every file in the manifest failed (see manifest.parquet)")
    kind = choose_kind(n, cfg)
    published, index_dir = Path(index_dir), _new_version(Path(index_dir))
    sample = np.sort(np.random.default_rng(0).choice(n, size=min(cfg.recall_sample, n), replace=False))
    spaces = {column: _build_space(source, column, kind, sample, cfg, index_dir / file)
              for column, file in zip(source.spaces, (INDEX_FILE, GREY_INDEX_FILE))}
    write_parquet(source.ids, index_dir / IDS_FILE)
    main = spaces["embedding"]
    meta = {
        "kind": kind, "n": n, "dim": dim, "metric": cfg.metric, **main,
        "recall_sample": len(sample) if kind != "flat" else 0, "model_id": model_id,
        "source_fingerprint": source_fingerprint(model_id, source.ids),
        **({"grey": {"file": GREY_INDEX_FILE, **spaces["grey_embedding"]}} if "grey_embedding" in spaces else {}),
        "config": asdict(cfg), "build_seconds": round(time.monotonic() - t0, 3),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json(meta, index_dir / INDEX_META_FILE)
    _publish(index_dir, published)
    log.info("index: %s over %d x %d (%s), recall@10 %.4f, %s%s", kind, n, dim, cfg.metric, main["recall_at_10"],
             main["params"], f"; grey renderings {spaces['grey_embedding']['recall_at_10']:.4f}" if "grey" in meta else "")
    return IndexResult(published, kind, n, dim, main["recall_at_10"], main["params"])


def _build_space(source: Source, column: str, kind: str, sample: np.ndarray, cfg: IndexConfig, path: Path) -> dict:
    """One FAISS index over one embedding column, written to `path`, its search knob tuned on the sample's rows;
    returns what index.json records of it (params, recall_at_10, centre, and lists_path for ivf-disk)."""
    n, dim = source.n, source.dim
    if kind == "ivf-disk":
        centre = _mean(source, column) if cfg.metric == "cosine" else np.zeros(dim, np.float32)
        index, params = _build_ivf_on_disk(source, column, centre, cfg.metric, path.parent)
        queries = prepare(source.gather(sample, column), cfg.metric, centre)
        blocks: Iterable[tuple[np.ndarray, np.ndarray]] = (
            (rows, prepare(vectors, cfg.metric, centre)) for rows, vectors in source.blocks(column))
    else:
        vectors = source.vectors(column)
        centre = vectors.mean(0) if cfg.metric == "cosine" else np.zeros(dim, np.float32)
        x = prepare(vectors, cfg.metric, centre)
        del vectors
        index, params = make_index(kind, x, cfg.metric)
        queries, blocks = x[sample], [(np.arange(n), x)]
    truth = exact_neighbours(queries, blocks, min(10, n), cfg.metric) if kind != "flat" else None
    recall, knob = tune(index, kind, queries, truth, cfg)
    params.update(knob)
    log.info("index: writing %s", path)
    with atomic_path(path) as tmp:
        faiss.write_index(index, str(tmp))
    return {"params": params, "recall_at_10": recall, "centre": centre.astype(float).tolist(),
            **({"lists_path": str((path.parent / params["lists"]).resolve())} if kind == "ivf-disk" else {})}


# An index is one unit: its files (index.faiss, ids.parquet, index.json, an on-disk index's lists) are written into
# a new hidden folder beside the published path, and the published path is a symlink switched to it by one rename.
# A search resolves the link once and reads every file from the folder it found: a rebuild, killed or running,
# never gives it one version's index with another version's ids.

def _new_version(published: Path) -> Path:
    version = published.parent / f".{published.name}-{time.strftime('%Y%m%d%H%M%S')}-{os.urandom(3).hex()}"
    version.mkdir(parents=True)
    return version


def _publish(version: Path, published: Path) -> None:
    """Point `published` at `version` in one rename; keep the version it pointed at (a search may be opening it)
    and delete older ones and the folders of killed builds."""
    link = published.parent / f".{published.name}.link-{os.urandom(3).hex()}"
    os.symlink(version.name, link)  # relative: the workdir can be moved
    previous = os.readlink(published) if published.is_symlink() else None
    if published.is_dir() and not published.is_symlink():  # an index written before versions: set aside, then gone
        aside = published.parent / f".{published.name}-unversioned-{os.urandom(3).hex()}"
        os.rename(published, aside)
    os.replace(link, published)
    for old in published.parent.glob(f".{published.name}-*"):
        if old.name not in (version.name, previous) and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)


def _mean(source: Source, column: str) -> np.ndarray:
    total = np.zeros(source.dim, np.float64)
    for _, vectors in source.blocks(column):
        total += vectors.sum(0, dtype=np.float64)
    return (total / source.n).astype(np.float32)


def _build_ivf_on_disk(source: Source, column: str, centre: np.ndarray, metric: str, index_dir: Path
                       ) -> tuple[faiss.Index, dict]:
    """IVF built one embedding part at a time: for collections whose vectors do not fit in RAM.

    The quantizer is trained on a sample (at most IVF_TRAIN_MAX vectors); each part's vectors go into their own
    small IVF index on disk, and FAISS merges those lists into one file (lists-*.ivfdata) that searches
    memory-map. RAM holds one part, the sample and the quantizer, never all vectors.
    """
    index = _trained_ivf(prepare(source.gather(_ivf_training_rows(source.n), column), metric, centre),
                         _ivf_nlist(source.n), metric)
    lists = f"lists-{time.strftime('%Y%m%d%H%M%S')}-{os.urandom(3).hex()}.ivfdata"  # a new name: open searches keep theirs
    blocks_dir = Path(tempfile.mkdtemp(prefix=".blocks-", dir=index_dir))
    try:
        block_files = []
        for j, (rows, vectors) in enumerate(source.blocks(column)):
            block = faiss.clone_index(index)
            block.add_with_ids(prepare(vectors, metric, centre), rows.astype(np.int64))
            block_files.append(str(blocks_dir / f"block-{j:05d}.index"))
            faiss.write_index(block, block_files[-1])
            del block
        merge_ondisk(index, block_files, str((index_dir / lists).resolve()))  # the path FAISS records
    finally:
        shutil.rmtree(blocks_dir, ignore_errors=True)
    return index, {"nlist": index.nlist, "lists": lists}


def source_fingerprint(model_id: str, ids: pa.Table) -> str:
    def strings() -> Iterator[str]:  # a slice at a time: Python strings of every path would cost ~200 B an image
        yield model_id
        for column in ("path", "sha256"):
            for start in range(0, ids.num_rows, 65_536):
                yield from ids[column].slice(start, 65_536).to_pylist()

    return fingerprint_of(strings())


INDEX_META_KEYS = ("kind", "n", "dim", "metric", "model_id", "source_fingerprint", "params")


def read_index_meta(index_dir: Path) -> dict:
    """index.json, checked for the keys a search needs: a zero-byte or cut file (a disk that filled, a kill before
    atomic writes) is one VaepipeError that says to rebuild, not a JSONDecodeError traceback."""
    path = Path(index_dir) / INDEX_META_FILE
    if not path.exists():
        raise VaepipeError(f"no complete index in {index_dir} (index.json missing): rebuild with `vaepipe index`")
    try:
        meta = read_json(path)
        missing = [key for key in INDEX_META_KEYS if key not in meta]
    except (OSError, ValueError, TypeError) as e:
        raise VaepipeError(f"{path} is unreadable ({type(e).__name__}): rebuild with `vaepipe index`") from None
    if missing:
        raise VaepipeError(f"{path} lacks {', '.join(missing)}: rebuild with `vaepipe index`")
    return meta


@dataclass
class SearchIndex:
    """A built index opened for search: the one way queries reach FAISS.

    A colour model's index has two spaces with the same rows: `index` over the images and `grey` over their grey
    renderings. A query that is greyscale itself (Embedded.greyscale) is searched in the grey space, where a colour
    original looks as its greyscale copy does; every other query in the images' space."""

    index: faiss.Index
    ids: pa.Table
    meta: dict
    grey: faiss.Index | None = None

    @classmethod
    def open(cls, index_dir: Path, mmap: bool = True) -> SearchIndex:
        """Memory-mapped by default: the vectors (flat, HNSW) or inverted lists (IVF) stay in the file and are
        paged in as searches touch them, so opening costs no RAM up front and an IVF search reads only the lists
        it probes. The HNSW graph itself is always read into RAM (BENCHMARKS.md has the figures)."""
        index_dir = Path(index_dir).resolve()  # one version's folder, whatever a rebuild publishes meanwhile
        meta = read_index_meta(index_dir)
        try:
            index = _read_space(index_dir / INDEX_FILE, meta["kind"], meta, mmap)
            grey = _read_space(index_dir / meta["grey"]["file"], meta["kind"], meta["grey"], mmap) if "grey" in meta else None
            ids = pq.read_table(index_dir / IDS_FILE)
        except Exception as e:  # FAISS raises RuntimeError, Arrow its own, a bad index.json KeyError: all mean damage
            raise VaepipeError(f"index in {index_dir} is unreadable ({e}): rebuild with `vaepipe index`") from None
        sizes = [space.ntotal for space in (index, grey) if space is not None]
        if set(sizes) != {meta["n"]} or ids.num_rows != meta["n"] or index.d != meta["dim"] or \
                (grey is not None) != ("greyscale" in ids.column_names):
            raise VaepipeError(f"index in {index_dir} is inconsistent (index has {sizes} rows, ids "
                               f"{ids.num_rows}, index.json says {meta['n']}): rebuild with `vaepipe index`")
        if source_fingerprint(meta["model_id"], ids) != meta["source_fingerprint"]:
            raise VaepipeError(f"index in {index_dir} does not match its recorded source: rebuild with `vaepipe index`")
        return cls(index, ids, meta, grey)

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    @cached_property
    def contents(self) -> np.ndarray:
        """Each row's content as a number (n,): rows of byte-identical files (one sha256) share one, numbered from 0
        in sha256 order. Numbers, not each row's sha256 as a Python string, which a large folder's duplicate check
        would otherwise make several times over."""
        return pc.rank(self.ids["sha256"], sort_keys="ascending", tiebreaker="dense").to_numpy().astype(np.int64) - 1

    def search(self, queries: Embedded | np.ndarray, k: int, prepared: bool = False
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rows (Q, k) with -1 where fewer were found, distance, similarity). Cosine: distance = 1 - cosine.

        `queries`: what the encoder made of images (greyscale ones are searched among the grey renderings), or
        vectors searched in the images' space; posterior means, or with prepared=True as stored (`stored`).
        """
        n = len(queries)
        rows, scores = np.full((n, k), -1, np.int64), np.zeros((n, k), np.float32)
        for at, space, x in self._routes(queries, prepared):
            scores[at], rows[at] = space.search(x, k)
        if self.meta["metric"] == "cosine":
            return rows, (1.0 - scores).astype(np.float32), scores
        distance = np.sqrt(np.maximum(scores, 0)).astype(np.float32)  # FAISS L2 scores are squared
        return rows, distance, (1.0 / (1.0 + distance)).astype(np.float32)

    def within(self, queries: Embedded | np.ndarray, similarity: float, prepared: bool = False,
               grey_similarity: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Every stored row at least `similarity` alike to each query (greyscale queries: `grey_similarity`, if
        given): (lims, rows), query i's rows being rows[lims[i]:lims[i + 1]] (a FAISS range search, in the space
        `search` would use)."""
        found: list[np.ndarray] = [np.zeros(0, np.int64)] * len(queries)
        for at, space, x in self._routes(queries, prepared):
            least = grey_similarity if space is self.grey and grey_similarity is not None else similarity
            # FAISS keeps scores above the radius for inner products, below it for (squared) L2.
            radius = least if self.meta["metric"] == "cosine" else (1.0 / least - 1.0) ** 2
            lims, _, rows = space.range_search(x, radius)
            for j, i in enumerate(at):
                found[i] = rows[lims[j]:lims[j + 1]]
        lims = np.concatenate([[0], np.cumsum([len(f) for f in found])]).astype(np.int64)
        return lims, np.concatenate(found).astype(np.int64) if found else np.zeros(0, np.int64)

    def stored(self, rows: np.ndarray) -> Embedded:
        """Index rows as stored (prepared), in both spaces, for querying the collection against itself."""
        rows = np.asarray(rows, dtype=np.int64)
        if self.grey is None:
            return Embedded(self.index.reconstruct_batch(rows))
        flags = self.ids["greyscale"].to_numpy(zero_copy_only=False)
        return Embedded(self.index.reconstruct_batch(rows), self.grey.reconstruct_batch(rows), flags[rows])

    def nearest_of_all(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Every row's k nearest as stored (itself, or a file of the same content, among them): rows (n, k), -1
        where fewer were found, and their similarity (n, k)."""
        n = self.meta["n"]
        found, sim = np.full((n, k), -1, np.int64), np.full((n, k), -np.inf, np.float32)
        for start in range(0, n, 4096):
            rows = np.arange(start, min(n, start + 4096))
            found[rows], _, sim[rows] = self.search(self.stored(rows), k, prepared=True)
        return found, sim

    def pair_similarity(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Pairs of index rows (a[i], b[i]) -> the inner product of their stored vectors (cosine for the cosine
        metric), in the grey renderings' space where either image is greyscale, as duplicate pairs are compared."""
        a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
        rows = np.unique(np.concatenate([a, b]))
        stored = self.stored(rows)
        similarity = np.empty(len(a), np.float32)
        # A block of pairs' vectors gathered at a time: a folder of look-alikes has hundreds of thousands of pairs.
        for s in range(0, len(a), PAIR_BLOCK):
            at = np.searchsorted(rows, a[s:s + PAIR_BLOCK]), np.searchsorted(rows, b[s:s + PAIR_BLOCK])
            similarity[s:s + PAIR_BLOCK] = (stored.embedding[at[0]] * stored.embedding[at[1]]).sum(1)
            if stored.greyscale is not None:
                grey = stored.greyscale[at[0]] | stored.greyscale[at[1]]
                similarity[s:s + PAIR_BLOCK][grey] = (stored.grey_embedding[at[0][grey]]
                                                      * stored.grey_embedding[at[1][grey]]).sum(1)
        return similarity

    def stored_vectors(self, rows: np.ndarray) -> np.ndarray:
        """Vectors of index rows as stored (prepared) in the images' space."""
        return self.index.reconstruct_batch(np.asarray(rows, dtype=np.int64))

    def _routes(self, queries: Embedded | np.ndarray, prepared: bool) -> Iterator[tuple[np.ndarray, faiss.Index, np.ndarray]]:
        """(query positions, the space they search, their vectors prepared for it), for each space that has queries."""
        if isinstance(queries, np.ndarray):
            queries = Embedded(queries)
        if queries.embedding.shape[1] != self.dim:
            raise VaepipeError(f"query embeddings have dimension {queries.embedding.shape[1]} but the index has "
                               f"{self.dim}: the index was built with another model; rebuild with `vaepipe index`")
        grey = queries.greyscale if self.grey is not None and queries.greyscale is not None else np.zeros(len(queries), bool)
        for space, meta, vectors, at in ((self.index, self.meta, queries.embedding, np.flatnonzero(~grey)),
                                         (self.grey, self.meta.get("grey"), queries.grey_embedding, np.flatnonzero(grey))):
            if len(at):
                x = vectors[at] if prepared else prepare(vectors[at], self.meta["metric"], np.asarray(meta["centre"], np.float32))
                yield at, space, np.ascontiguousarray(x, dtype=np.float32)


def _read_space(path: Path, kind: str, meta: dict, mmap: bool) -> faiss.Index:
    """One space's FAISS index, read (mapped) for search with its tuned knob."""
    # IVF takes IO_FLAG_MMAP (on-disk inverted lists); flat and HNSW storage take IO_FLAG_MMAP_IFC.
    flags = (faiss.IO_FLAG_MMAP if kind == "ivf" else faiss.IO_FLAG_MMAP_IFC) if mmap else 0
    if kind == "ivf-disk":  # lists always mapped from their file
        # Where it was built, FAISS finds the file by its recorded path; in a moved index dir, beside the
        # index file (IO_FLAG_ONDISK_SAME_DIR, which FAISS announces on stdout, so only then).
        built_here = str((path.parent / meta["params"]["lists"]).resolve()) == meta.get("lists_path")
        flags = 0 if built_here else faiss.IO_FLAG_ONDISK_SAME_DIR
    index = faiss.read_index(str(path), flags)
    _set_knob(index, kind, meta["params"].get("efSearch") or meta["params"].get("nprobe") or 0)
    if kind in ("ivf", "ivf-disk"):
        index.make_direct_map()  # lets `stored` reconstruct rows
    return index
