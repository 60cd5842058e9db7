"""Stage 5: search the index, as data (search_files, search_collection) or as bulk jobs (runs/<run_id>/).

Search as data, for a notebook or a script: the rows come back as a `Neighbours` (an Arrow table with the columns
of neighbours.parquet, `.to_pandas()`), nothing is written:
  search_files       image files outside the collection (one, a list, or a folder), embedded with its model;
  search_collection  collection images by path, or every one (paths=None), self excluded;
  find_duplicates    the duplicate groups (the table of duplicates.parquet).
Bulk jobs write a run folder (neighbours.parquet, run.json, report.html; duplicates.parquet for --all):
  query_folder  images outside the collection (not added to the index);
  query_list    a text file naming collection images (paths relative to the collection root), self excluded;
  query_all     every indexed image against the rest, self excluded (near-duplicate hunting).
Both search in batches (_neighbour_batches); bulk jobs stream each batch to Parquet, so 1M queries need neither
1M calls nor 1M rows in RAM.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from vaepipe import detail, same_size
from vaepipe.config import EmbedConfig, IngestConfig
from vaepipe.duplicates import (CANDIDATE_SIMILARITY, MARGIN, ONLY_COPY_SIMILARITY, calibrate_threshold, check_threshold,
                                duplicate_groups, grey_threshold)
from vaepipe.images import VIEWS
from vaepipe.embed import encode_files
from vaepipe.embeddings import Embedded
from vaepipe.index import SearchIndex, read_index_meta
from vaepipe.ingest import inspect_file, scan
from vaepipe.model import VAE, default_device, load_checkpoint
from vaepipe.progress import Progress
from vaepipe.report import write_query_report
from vaepipe.errors import VaepipeError
from vaepipe.views import RERANK_DEPTH, ViewCache, rerank, uses_views
from vaepipe.store import (DUPLICATES_FILE, NEIGHBOURS_FILE, NEIGHBOURS_SCHEMA, REPORT_FILE, RUN_FILE, Workdir,
                           atomic_path, file_path, image_sizes, new_run_id, trim_heap, write_json, write_parquet)

log = logging.getLogger("vaepipe")

SEARCH_BATCH = 4096


@dataclass
class QueryResult:
    run_dir: Path
    neighbours: Path
    n_queries: int
    n_rows: int
    k: int
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (query, reason)
    seconds: float = 0.0  # search and duplicate groups: the run time the report shows
    report_seconds: float = 0.0  # writing the report (thumbnails, pages) after that
    report: Path | None = None
    duplicates: Path | None = None  # duplicates.parquet, for --all runs
    n_duplicate_groups: int = 0

    def summary(self) -> dict:
        """What a person reads after a bulk query (the CLI prints it, the flow makes it an artifact)."""
        out = {"queries": self.n_queries, "skipped": len(self.skipped), "k": self.k, "rows written": self.n_rows,
               "seconds": round(self.seconds, 2), "report seconds": round(self.report_seconds, 2),
               "neighbours": str(self.neighbours), "report": str(self.report)}
        if self.duplicates:
            out["duplicate groups"] = self.n_duplicate_groups
            out["duplicates"] = str(self.duplicates)
        return out


@dataclass
class Neighbours:
    """Search results as data: one row per (query, neighbour) with the columns of neighbours.parquet
    (store.NEIGHBOURS_SCHEMA; run_id is empty, as no run wrote them), and the queries that could not be searched,
    with the reason (an unreadable file, a path not in the index)."""
    table: pa.Table
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def to_pandas(self) -> pd.DataFrame:
        return self.table.to_pandas()


@dataclass
class _Queries:
    """What a search runs over: each query's name and sha256, its vectors by slice (and whether they are already
    prepared for the index, as stored rows are), its own index row to leave out (collection images), and how to
    order a batch's shortlist again (images outside the collection, for a model trained for copies: views.rerank)."""
    names: list[str]
    shas: list[str]
    vectors_of: Callable[[slice], tuple[Embedded, bool]]
    self_rows: np.ndarray | None = None
    reorder: Callable[[slice, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None


SKIPS_SHOWN = 10  # skipped queries logged one by one; run.json has them all


@dataclass
class OpenCollection:
    """A built collection as search sees it: the folder its paths are relative to, and its current model's index."""
    image_root: Path
    index: SearchIndex


def open_index(workdir: Workdir) -> OpenCollection:
    collection = workdir.read_collection()
    index = SearchIndex.open(workdir.index_dir(collection["model_id"]))
    if index.meta["model_id"] != collection["model_id"]:
        raise VaepipeError(f"index was built for model {index.meta['model_id']} but the collection uses model "
                           f"{collection['model_id']}: rebuild with `vaepipe index`")
    return OpenCollection(Path(collection["image_root"]), index)


def preflight(workdir: Workdir, k: int, exclude_self: bool) -> None:
    """The checks a query can make from the small JSON files alone, before any work starts."""
    collection = workdir.read_collection()
    _check_k(k, read_index_meta(workdir.index_dir(collection["model_id"]))["n"] - (1 if exclude_self else 0))


def _check_k(k: int, available: int) -> None:
    if k <= 0:
        raise VaepipeError(f"k must be at least 1, got {k}")
    if available == 0:
        raise VaepipeError("the collection has no other image to return (an image is not its own neighbour)")
    if k > available:
        raise VaepipeError(f"k={k} is more than the {available} images that can be returned; use -k {available} or less")


def query_folder(workdir: Workdir, query_dir: Path, k: int = 10, cfg: EmbedConfig = EmbedConfig()) -> QueryResult:
    t0 = time.monotonic()
    opened = open_index(workdir)
    image_root, index = opened.image_root, opened.index
    _check_k(k, index.meta["n"])
    query_dir = Path(query_dir).resolve()
    files = scan(query_dir)
    if not files:
        raise VaepipeError(f"no files in query folder {query_dir}")
    model = _model(workdir, index)
    queries, skipped = _outside(workdir, image_root, index, model, [(query_dir, f) for f in files], cfg)
    params: dict = {"queries": str(query_dir)}
    if queries.reorder is not None:
        params["search_views"] = {"views": list(VIEWS), "neighbours looked at again": RERANK_DEPTH}
    return _run(workdir, "folder", index, queries, k, skipped, t0, params, image_root,
                query_root=query_dir)


def search_files(workdir: Workdir, files: Path | Sequence[Path], k: int = 10, cfg: EmbedConfig = EmbedConfig()
                 ) -> Neighbours:
    """Neighbours in the collection of image files outside it: one file, a list of files, or a folder (every file
    under it). query_path is each file as given (in a folder: relative to it). Files that cannot be read are
    skipped with the reason; none at all readable is a VaepipeError. For a model trained for copies, each file's
    first views.RERANK_DEPTH neighbours are ordered again through edited views (views.rerank), and their
    similarity is the better of as stored and through a view."""
    opened = open_index(workdir)
    image_root, index = opened.image_root, opened.index
    _check_k(k, index.meta["n"])
    model = _model(workdir, index)
    if isinstance(files, (str, os.PathLike)) and Path(files).is_dir():
        root = Path(files).resolve()
        items = [(root, f) for f in scan(root)]
        if not items:
            raise VaepipeError(f"no files in folder {root}")
        queries, skipped = _outside(workdir, image_root, index, model, items, cfg)
    else:
        given = [Path(files)] if isinstance(files, (str, os.PathLike)) else [Path(f) for f in files]
        # Each file vetted where it is (a link the caller named is followed), named as the caller named it.
        queries, skipped = _outside(workdir, image_root, index, model, [(f.resolve().parent, f.resolve()) for f in given],
                                    cfg, names=[str(f) for f in given])
    if not queries.names:
        raise VaepipeError("no query image could be read: " + "; ".join(f"{n}: {r}" for n, r in skipped[:3]))
    return _collect(index, queries, k, skipped)


def search_collection(workdir: Workdir, paths: Sequence[str] | None = None, k: int = 10) -> Neighbours:
    """Neighbours of collection images (paths relative to the collection root, as in neighbours.parquet), or of
    every image (paths=None), each without itself. Paths not in the index are skipped with the reason."""
    opened = open_index(workdir)
    image_root, index = opened.image_root, opened.index
    _check_k(k, index.meta["n"] - 1)
    if paths is None:
        rows, skipped = np.arange(index.meta["n"]), []
    else:
        rows_l, skipped = _rows_of(index, image_root, paths)
        rows = np.asarray(rows_l, dtype=np.int64)
    return _collect(index, _collection_queries(index, rows), k, skipped)


def _outside(workdir: Workdir, image_root: Path, index: SearchIndex, model: VAE, items: list[tuple[Path, Path]],
             cfg: EmbedConfig, names: list[str] | None = None) -> tuple[_Queries, list[tuple[str, str]]]:
    """Files outside the collection, (folder, file) pairs, embedded with its model, as queries (named relative to
    each folder unless names are given; for a model trained for copies, each batch's shortlist ordered again
    through edited views), and the files skipped with the reason."""
    if model.config.latent_dim != index.dim:
        raise VaepipeError(f"the model embeds in dimension {model.config.latent_dim} but the index has {index.dim}: "
                           "the index was built with another model; rebuild with `vaepipe index`")
    # Vetted as the collection's files are (ingest.inspect_file): a FIFO, a symlink loop or a name that is not UTF-8
    # is a skipped query with its reason, not a hang or a crash.
    rows = [inspect_file(root, str(f), IngestConfig()) for root, f in items]
    names = names or [r["path"] for r in rows]
    skipped = [(n, r["error"]) for n, r in zip(names, rows) if r["status"] != "ok"]
    ok = [i for i, r in enumerate(rows) if r["status"] == "ok"]
    workers = cfg.workers if len(ok) > cfg.batch_size else 0  # starting decoding processes costs more than a batch
    paths = [file_path(items[i][0], rows[i]["path"]) for i in ok]
    done, batches = [], []
    for idx, embedded, errors in encode_files(model, paths, cfg.batch_size, workers):
        done += idx  # in order: batches come back in the order of `paths`
        batches.append(embedded)
        skipped += [(names[ok[j]], reason) for j, reason in errors]
    embedded = Embedded.concat(batches, index.dim)
    files = [paths[j] for j in done]
    reorder = None
    if uses_views(model, index):

        def reorder(s: slice, rows: np.ndarray, similarity: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return rerank(index, model, image_root, files[s], embedded.take(s), rows, similarity,
                          cache=_view_cache(workdir, index))
    return _Queries([names[ok[j]] for j in done], [rows[ok[j]]["sha256"] for j in done],
                    lambda s: (embedded.take(s), False), reorder=reorder), skipped


def _rows_of(index: SearchIndex, root: Path, names: Sequence[str]) -> tuple[list[int], list[tuple[str, str]]]:
    """Index rows of collection images named relative to the root (or absolute inside it); the rest skipped."""
    row_of = {p: i for i, p in enumerate(index.ids["path"].to_pylist())}
    rows: list[int] = []
    skipped: list[tuple[str, str]] = []
    for name in names:
        rel = Path(name)
        if rel.is_absolute() and rel.is_relative_to(root) and ".." not in rel.parts:
            rel = rel.relative_to(root)
        if rel.is_absolute() or ".." in rel.parts:
            skipped.append((name, "refused: paths must be inside the collection root, without '..'"))
        elif rel.as_posix() not in row_of:
            skipped.append((name, "not in the index (not in the collection, or not a usable image)"))
        else:
            rows.append(row_of[rel.as_posix()])
    return rows, skipped


def query_list(workdir: Workdir, list_file: Path, k: int = 10) -> QueryResult:
    """Neighbours of collection images named in a text file, one per line: relative to the collection root, or
    absolute inside it. Lines that name nothing indexed (or are not UTF-8) are skipped with their reasons."""
    t0 = time.monotonic()
    opened = open_index(workdir)
    image_root, index = opened.image_root, opened.index
    _check_k(k, index.meta["n"] - 1)
    names: list[str] = []
    skipped: list[tuple[str, str]] = []
    with open(list_file, "rb") as f:  # line by line: a list of a million paths is not read whole
        for number, raw in enumerate(f, start=1):
            try:
                name = raw.decode("utf-8").strip()
            except UnicodeDecodeError:
                skipped.append((f"line {number}", "not valid UTF-8"))
                continue
            if name and not name.startswith("#"):
                names.append(name)
    rows, not_indexed = _rows_of(index, image_root, names)
    skipped += not_indexed
    if not rows:
        raise VaepipeError(f"none of the paths in {list_file} is an indexed image of the collection")
    return _query_rows(workdir, "list", index, np.asarray(rows), k, skipped, t0, {"list": str(list_file)},
                       image_root)


def run_query(workdir: Workdir, queries: Path | None = None, list_file: Path | None = None, all_images: bool = False,
              k: int = 10, duplicates: bool = True, threshold: float | None = None,
              cfg: EmbedConfig = EmbedConfig()) -> QueryResult:
    """The bulk job of exactly one kind: a folder of query images, a list of collection paths, or all images."""
    if sum([queries is not None, list_file is not None, all_images]) != 1:
        raise VaepipeError("say what to query with exactly one of: queries (a folder), list_file, all_images=True")
    if queries is not None:
        return query_folder(workdir, Path(queries), k, cfg)
    if list_file is not None:
        return query_list(workdir, Path(list_file), k)
    return query_all(workdir, k, duplicates=duplicates, threshold=threshold)


def query_all(workdir: Workdir, k: int = 10, duplicates: bool = True, threshold: float | None = None) -> QueryResult:
    """Every image against the rest; with `duplicates`, also duplicates.parquet (see vaepipe.duplicates)."""
    t0 = time.monotonic()
    opened = open_index(workdir)
    image_root, index = opened.image_root, opened.index
    _check_k(k, index.meta["n"] - 1)
    params: dict = {}
    if threshold is not None:
        check_threshold(threshold)  # before the search, not after it
    groups = None
    if duplicates:
        groups, params = _groups(workdir, image_root, index, threshold)
    return _query_rows(workdir, "all", index, np.arange(index.meta["n"]), k, [], t0, params,
                       image_root, groups)


def find_duplicates(workdir: Workdir, threshold: float | None = None) -> pa.Table:
    """The collection's duplicate groups as data (duplicates.duplicate_groups: group, kind, path, sha256), nothing
    written; threshold None: the one `query --all` would use (duplicates.calibrate_threshold)."""
    opened = open_index(workdir)
    image_root, index = opened.image_root, opened.index
    return _groups(workdir, image_root, index, threshold)[0]


def _groups(workdir: Workdir, image_root: Path, index: SearchIndex, threshold: float | None
            ) -> tuple[pa.Table, dict]:
    """The duplicate groups at the given threshold or the calibrated one, and the parameters that made them (for
    run.json)."""
    model = _model(workdir, index)
    threshold, calibration = _duplicate_threshold(model, image_root, index, threshold)
    params: dict = {"duplicate_threshold": threshold}
    if index.grey is not None:
        params["duplicate_threshold_greyscale"] = grey_threshold(threshold)
    if calibration is not None:
        params["duplicate_calibration"] = calibration
    if uses_views(model, index):
        params["duplicate_views"] = {"views": list(VIEWS), "pairs from similarity": CANDIDATE_SIMILARITY,
                                     "similarity in a view": grey_threshold(threshold),
                                     "only copy similarity": ONLY_COPY_SIMILARITY, "only copy margin": MARGIN,
                                     "fine detail": {"nearest": detail.NEIGHBOURS,
                                                     "from similarity": detail.CANDIDATE_SIMILARITY,
                                                     "least": detail.FINE_LEAST, "margin": detail.FINE_MARGIN},
                                     "turned or zoomed": {"turns": list(detail.TURNS),
                                                          "zooms": [round(z, 3) for z in detail.ZOOMS],
                                                          "least": detail.TURNED_LEAST,
                                                          "margin": detail.TURNED_MARGIN},
                                     "near-plain": {"grey std below": detail.PLAIN_STD,
                                                    "of one colour below": detail.FLAT_STD,
                                                    "kept from correlation": detail.PLAIN_LEAST},
                                     "opaque pictures kept from correlation": detail.PIXELS_LEAST,
                                     "small pictures of one size": {"up to side": same_size.SMALL_SIDE,
                                                                    "compared at most": same_size.COMPARED_SIDE,
                                                                    "least": same_size.LEAST,
                                                                    "left by a tone curve": same_size.CURVE_LEFT,
                                                                    "JPEG files compared with the other saved as they were": True,
                                                                    "windows or resizes of pictures at most this much "
                                                                    "larger": 1 / same_size.WINDOW_SHARE,
                                                                    "resized only from pictures following at least":
                                                                        same_size.RESIZED_ROUGHLY},
                                     "two drawings of one size": {"shapes alike": same_size.SHAPE_ALIKE,
                                                                  "one outline": same_size.OUTLINE_ALIKE,
                                                                  "left by a tone curve over the top three "
                                                                  "quarters": same_size.DRAWN_APART}}
    groups = duplicate_groups(index, threshold, image_root, model, _view_cache(workdir, index),
                              image_sizes(workdir.manifest, index.ids["path"]))
    trim_heap()  # the check's blocks of arrays, freed, would stay with the process through the search and report
    return groups, params


def _duplicate_threshold(model: VAE, image_root: Path, index: SearchIndex, threshold: float | None
                         ) -> tuple[float, dict | None]:
    """The similarity above which two images are near duplicates: the one given (checked), else calibrated for the
    collection's model, with the calibration's record."""
    if threshold is not None:
        check_threshold(threshold)
        return threshold, None
    calibration = calibrate_threshold(model, index, image_root)
    if calibration.sampled:
        log.info("duplicates: threshold %.4f (%s); %d images re-saved as JPEG keep a similarity of median %s, "
                 "5th percentile %s", calibration.threshold, calibration.rule, calibration.sampled,
                 calibration.resave_similarity.get("0.5"), calibration.resave_similarity.get("0.05"))
    else:
        log.info("duplicates: threshold %.4f (%s)", calibration.threshold, calibration.rule)
    return calibration.threshold, calibration.to_dict()


def _model(workdir: Workdir, index: SearchIndex) -> VAE:
    return load_checkpoint(workdir.model_file(index.meta["model_id"]), default_device())


def _view_cache(workdir: Workdir, index: SearchIndex) -> ViewCache:
    return ViewCache(workdir.views_dir(index.meta["model_id"]))


def _collection_queries(index: SearchIndex, rows: np.ndarray) -> _Queries:
    """Collection images (index rows) as queries: their vectors as stored, each without itself."""
    paths, shas = index.ids["path"].to_pylist(), index.ids["sha256"].to_pylist()
    return _Queries([paths[r] for r in rows], [shas[r] for r in rows], lambda s: (index.stored(rows[s]), True), rows)


def _query_rows(workdir: Workdir, kind: str, index: SearchIndex, rows: np.ndarray, k: int,
                skipped: list[tuple[str, str]], t0: float, params: dict, image_root: Path,
                groups: pa.Table | None = None) -> QueryResult:
    return _run(workdir, kind, index, _collection_queries(index, rows), k, skipped, t0, params, image_root,
                groups=groups)


def _run(workdir: Workdir, kind: str, index: SearchIndex, queries: _Queries, k: int,
         skipped: list[tuple[str, str]], t0: float, params: dict, image_root: Path, query_root: Path | None = None,
         groups: pa.Table | None = None) -> QueryResult:
    """A bulk job's run folder: the neighbour rows, the duplicate groups found before them (query_all), the report
    and run.json, each written by its own step; the folder is published (renamed into place) when whole."""
    run_id = new_run_id(kind)
    # Written in a hidden folder and renamed when whole: a failed or killed run (and Prefect's retry of it) leaves
    # no run folder that looks finished; the next build deletes what it left (Workdir.remove_stale_temporaries).
    final_dir = workdir.run_dir(run_id)
    run_dir = final_dir.with_name(f".{run_id}.partial")
    about = {"run_id": run_id, "model_id": index.meta["model_id"], "kind": kind, "image_root": str(image_root),
             "k": str(k)}
    out = run_dir / NEIGHBOURS_FILE
    n_rows = _search_and_write(index, out, queries, k, about)
    trim_heap()
    result = QueryResult(run_dir, out, len(queries.names), n_rows, k, skipped)
    if groups is not None:
        result.duplicates = write_parquet(groups, run_dir / DUPLICATES_FILE)
        result.n_duplicate_groups = len(set(groups["group"].to_pylist()))
    # The run's time up to its report: what the report shows and the CLI prints; writing the report is apart.
    result.seconds = time.monotonic() - t0
    t_report = time.monotonic()
    result.report = write_query_report(run_dir, out, image_root, query_root or image_root,
                                       _report_summary(run_id, kind, index, result, params), groups,
                                       thumbs_cache=workdir.thumbs_dir)
    result.report_seconds = time.monotonic() - t_report
    trim_heap()
    write_json({"run_id": run_id, "kind": kind, "k": k, **params, "model_id": index.meta["model_id"],
                "index": {x: index.meta[x] for x in ("kind", "params", "n", "metric", "recall_at_10", "source_fingerprint")},
                **{x: v for x, v in asdict(result).items() if x not in ("run_dir", "neighbours", "report", "duplicates")}},
               run_dir / RUN_FILE)
    os.rename(run_dir, final_dir)
    result.run_dir, result.neighbours, result.report = final_dir, final_dir / NEIGHBOURS_FILE, final_dir / REPORT_FILE
    if result.duplicates is not None:
        result.duplicates = final_dir / DUPLICATES_FILE
    for name, reason in skipped[:SKIPS_SHOWN]:
        log.warning("query: skipped %s: %s", name, reason)
    if len(skipped) > SKIPS_SHOWN:
        log.warning("query: skipped %d more queries (%s lists every one with its reason)", len(skipped) - SKIPS_SHOWN,
                    final_dir / RUN_FILE)
    log.info("query: %d queries, %d neighbour rows -> %s (%.2f s, report %.2f s)", result.n_queries, n_rows,
             result.neighbours, result.seconds, result.report_seconds)
    return result


def _report_summary(run_id: str, kind: str, index: SearchIndex, result: QueryResult, params: dict) -> dict[str, object]:
    """The table at the top of the report: what was searched, with what, and how the groups were made."""
    summary: dict[str, object] = {
        "run": run_id, "queries": f"{result.n_queries:,} ({kind})", "k": result.k, "collection size": f"{index.meta['n']:,}",
        "model id": index.meta["model_id"], "index": f"{index.meta['kind']} {index.meta['params'] or ''}".strip(),
        "measured recall@10": index.meta["recall_at_10"], "metric": index.meta["metric"],
        "run time": f"{result.seconds:.2f} s (search and groups; the report is written after)",
        "skipped queries": len(result.skipped)}
    if "search_views" in params:
        summary["ordered"] = (f"the first {params['search_views']['neighbours looked at again']} neighbours of each "
                              "query looked at again through edited views (mirrored, turned, cropped, flattened on black)")
    if result.duplicates is not None:
        threshold = params["duplicate_threshold"]
        summary["duplicate groups"] = f"{result.n_duplicate_groups:,} (similarity >= {threshold:.4f}" + (
            f"; greyscale images to grey renderings >= {grey_threshold(threshold):.4f}" if index.grey is not None else "") + (
            "; also through edited views, a picture with its only copy, and pixels' second opinion)"
            if "duplicate_views" in params else ")")
    return summary


def _collect(index: SearchIndex, queries: _Queries, k: int, skipped: list[tuple[str, str]]) -> Neighbours:
    batches = list(_neighbour_batches(index, queries, k, run_id=""))
    return Neighbours(pa.concat_tables(batches) if batches else NEIGHBOURS_SCHEMA.empty_table(), skipped)


def _search_and_write(index: SearchIndex, out: Path, queries: _Queries, k: int, about: dict[str, str]) -> int:
    """Stream the search's batches to neighbours.parquet; `about` (run, model, image root) goes into its columns
    run_id and model_id and into the file's metadata (vaepipe.*)."""
    n_rows = 0
    metadata = {f"vaepipe.{key}": value for key, value in about.items()}
    with atomic_path(out) as tmp, pq.ParquetWriter(tmp, NEIGHBOURS_SCHEMA.with_metadata(metadata)) as writer:
        for batch in _neighbour_batches(index, queries, k, about["run_id"]):
            writer.write_table(batch)
            n_rows += batch.num_rows
    return n_rows


def _neighbour_batches(index: SearchIndex, queries: _Queries, k: int, run_id: str) -> Iterator[pa.Table]:
    """Search SEARCH_BATCH queries at a time: the k nearest of each (without itself, for collection images) as
    NEIGHBOURS_SCHEMA rows; greyscale queries search the grey renderings (SearchIndex.search). With a reorder, the
    first RERANK_DEPTH are searched at least and ordered again before the first k are kept."""
    names, shas, self_rows = queries.names, queries.shas, queries.self_rows
    ids_path = np.asarray(index.ids["path"].to_pylist(), dtype=object)
    ids_sha = np.asarray(index.ids["sha256"].to_pylist(), dtype=object)
    names_a, shas_a = np.asarray(names, dtype=object), np.asarray(shas, dtype=object)
    extra = 1 if self_rows is not None else 0
    progress = Progress("query", len(names), unit="queries")
    for start in range(0, len(names), SEARCH_BATCH):
        s = slice(start, min(start + SEARCH_BATCH, len(names)))
        vectors, prepared = queries.vectors_of(s)
        rows, dist, sim = index.search(vectors, max(k, RERANK_DEPTH) if queries.reorder else k + extra, prepared=prepared)
        if queries.reorder is not None:
            rows, sim = queries.reorder(s, rows, sim)
            dist = (1.0 - sim).astype(np.float32)  # reordered only on cosine
        keep = rows >= 0
        if self_rows is not None:
            keep &= rows != self_rows[s][:, None]
        keep &= np.cumsum(keep, axis=1) <= k  # the first k that are not the query itself
        q, col = np.nonzero(keep)
        rank = (np.cumsum(keep, axis=1) * keep)[q, col]
        nb = rows[q, col]
        q += start
        yield pa.table({
            "query_path": pa.array(names_a[q], pa.string()),
            "query_sha256": pa.array(shas_a[q], pa.string()),
            "rank": pa.array(rank, pa.int32()),
            "neighbour_path": pa.array(ids_path[nb], pa.string()),
            "neighbour_sha256": pa.array(ids_sha[nb], pa.string()),
            "distance": pa.array(dist[keep], pa.float32()),
            "similarity": pa.array(sim[keep], pa.float32()),
            "run_id": pa.array([run_id] * len(q), pa.string()),
            "model_id": pa.array([index.meta["model_id"]] * len(q), pa.string()),
        }, schema=NEIGHBOURS_SCHEMA)
        progress.update(s.stop - s.start)
    progress.close()
