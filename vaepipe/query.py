"""Stage 5: bulk query jobs -> runs/<run_id>/neighbours.parquet.

Three ways to say what to look for:
  query_folder  images outside the collection, embedded with the collection's model (not added to the index);
  query_list    a text file naming collection images (paths relative to the collection root), self excluded;
  query_all     every indexed image against the rest, self excluded (near-duplicate hunting).
Searches run in batches, and rows stream to Parquet, so 1M queries need neither 1M calls nor 1M rows in RAM.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vaepipe.config import EmbedConfig, IngestConfig
from vaepipe.duplicates import calibrate_threshold, check_threshold, duplicate_groups
from vaepipe.embed import encode_files
from vaepipe.index import SearchIndex, read_index_meta
from vaepipe.ingest import inspect_file, scan
from vaepipe.model import default_device, load_checkpoint
from vaepipe.progress import Progress
from vaepipe.report import write_query_report
from vaepipe.errors import VaepipeError
from vaepipe.store import NEIGHBOURS_SCHEMA, Workdir, atomic_path, file_path, new_run_id, write_json, write_parquet

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
    seconds: float = 0.0
    report: Path | None = None
    duplicates: Path | None = None  # duplicates.parquet, for --all runs
    n_duplicate_groups: int = 0


SKIPS_SHOWN = 10  # skipped queries logged one by one; run.json has them all


def open_index(workdir: Workdir) -> tuple[dict, SearchIndex]:
    collection = workdir.read_collection()
    index = SearchIndex.open(workdir.index_dir(collection["model_id"]))
    if index.meta["model_id"] != collection["model_id"]:
        raise VaepipeError(f"index was built for model {index.meta['model_id']} but the collection uses model "
                           f"{collection['model_id']}: rebuild with `vaepipe index`")
    return collection, index


def preflight(workdir: Workdir, k: int, exclude_self: bool) -> None:
    """The checks a query can make from the small JSON files alone, before any work starts."""
    collection = workdir.read_collection()
    _check_k(k, read_index_meta(workdir.index_dir(collection["model_id"]))["n"] - (1 if exclude_self else 0))


def _check_k(k: int, available: int) -> None:
    if k <= 0:
        raise VaepipeError(f"k must be at least 1, got {k}")
    if k > available:
        raise VaepipeError(f"k={k} is more than the {available} images that can be returned; use -k {available} or less")


def query_folder(workdir: Workdir, query_dir: Path, k: int = 10, cfg: EmbedConfig = EmbedConfig()) -> QueryResult:
    t0 = time.monotonic()
    collection, index = open_index(workdir)
    _check_k(k, index.meta["n"])
    query_dir = Path(query_dir).resolve()
    files = scan(query_dir)
    if not files:
        raise VaepipeError(f"no files in query folder {query_dir}")
    model = load_checkpoint(workdir.model_dir(collection["model_id"]) / "model.pt", default_device())
    if model.config.latent_dim != index.dim:
        raise VaepipeError(f"the model embeds in dimension {model.config.latent_dim} but the index has {index.dim}: "
                           "the index was built with another model; rebuild with `vaepipe index`")
    # Vetted as the collection's files are (ingest.inspect_file): a FIFO, a symlink loop or a name that is not UTF-8
    # is a skipped query with its reason, not a hang or a crash.
    rows = [inspect_file(query_dir, str(f), IngestConfig()) for f in files]
    skipped = [(r["path"], r["error"]) for r in rows if r["status"] != "ok"]
    rows = [r for r in rows if r["status"] == "ok"]
    vectors = np.zeros((len(rows), index.dim), np.float32)
    good = np.zeros(len(rows), bool)
    for idx, mu, errors in encode_files(model, [file_path(query_dir, r["path"]) for r in rows], cfg.batch_size, cfg.workers):
        vectors[idx], good[idx] = mu, True
        skipped += [(rows[i]["path"], reason) for i, reason in errors]
    names = [r["path"] for r, g in zip(rows, good) if g]
    shas = [r["sha256"] for r, g in zip(rows, good) if g]
    vectors = vectors[good]
    return _run(workdir, "folder", index, names, shas, lambda s: (vectors[s], False), None, k, skipped, t0,
                {"queries": str(query_dir)}, query_root=query_dir)


def query_list(workdir: Workdir, list_file: Path, k: int = 10) -> QueryResult:
    """Neighbours of collection images named in a text file, one per line: relative to the collection root, or
    absolute inside it. Lines that name nothing indexed (or are not UTF-8) are skipped with their reasons."""
    t0 = time.monotonic()
    collection, index = open_index(workdir)
    _check_k(k, index.meta["n"] - 1)
    root = Path(collection["image_root"])
    row_of = {p: i for i, p in enumerate(index.ids["path"].to_pylist())}
    rows: list[int] = []
    skipped: list[tuple[str, str]] = []
    with open(list_file, "rb") as f:  # line by line: a list of a million paths is not read whole
        for number, raw in enumerate(f, start=1):
            try:
                name = raw.decode("utf-8").strip()
            except UnicodeDecodeError:
                skipped.append((f"line {number}", "not valid UTF-8"))
                continue
            if not name or name.startswith("#"):
                continue
            rel = Path(name)
            if rel.is_absolute() and rel.is_relative_to(root) and ".." not in rel.parts:
                rel = rel.relative_to(root)
            if rel.is_absolute() or ".." in rel.parts:
                skipped.append((name, "refused: paths must be inside the collection root, without '..'"))
            elif rel.as_posix() not in row_of:
                skipped.append((name, "not in the index (not in the collection, or not a usable image)"))
            else:
                rows.append(row_of[rel.as_posix()])
    if not rows:
        raise VaepipeError(f"none of the paths in {list_file} is an indexed image of the collection")
    return _query_rows(workdir, "list", index, np.asarray(rows), k, skipped, t0, {"list": str(list_file)})


def query_all(workdir: Workdir, k: int = 10, duplicates: bool = True, threshold: float | None = None) -> QueryResult:
    """Every image against the rest; with `duplicates`, also duplicates.parquet (see vaepipe.duplicates)."""
    t0 = time.monotonic()
    collection, index = open_index(workdir)
    _check_k(k, index.meta["n"] - 1)
    params: dict = {}
    if threshold is not None:
        check_threshold(threshold)
    if duplicates and threshold is None:
        model = load_checkpoint(workdir.model_dir(collection["model_id"]) / "model.pt", default_device())
        calibration = calibrate_threshold(model, index, Path(collection["image_root"]))
        threshold = calibration.threshold
        params["duplicate_calibration"] = calibration.to_dict()
        if calibration.sampled:
            log.info("duplicates: threshold %.4f (%s); %d images re-saved as JPEG keep a similarity of median %s, "
                     "5th percentile %s", threshold, calibration.rule, calibration.sampled,
                     calibration.resave_similarity.get("0.5"), calibration.resave_similarity.get("0.05"))
        else:
            log.info("duplicates: threshold %.4f (%s)", threshold, calibration.rule)
    if duplicates:
        params["duplicate_threshold"] = threshold
    return _query_rows(workdir, "all", index, np.arange(index.meta["n"]), k, [], t0, params)


def _query_rows(workdir: Workdir, kind: str, index: SearchIndex, rows: np.ndarray, k: int,
                skipped: list[tuple[str, str]], t0: float, params: dict) -> QueryResult:
    paths, shas = index.ids["path"].to_pylist(), index.ids["sha256"].to_pylist()
    return _run(workdir, kind, index, [paths[r] for r in rows], [shas[r] for r in rows],
                lambda s: (index.stored_vectors(rows[s]), True), rows, k, skipped, t0, params)


def _run(workdir: Workdir, kind: str, index: SearchIndex, names: list[str], shas: list[str],
         vectors_of: Callable[[slice], tuple[np.ndarray, bool]], self_rows: np.ndarray | None, k: int,
         skipped: list[tuple[str, str]], t0: float, params: dict, query_root: Path | None = None) -> QueryResult:
    run_id = new_run_id(kind)
    # Written in a hidden folder and renamed when whole: a failed or killed run (and Prefect's retry of it) leaves
    # no run folder that looks finished; the next build deletes what it left (Workdir.remove_stale_temporaries).
    final_dir = workdir.run_dir(run_id)
    run_dir = final_dir.with_name(f".{run_id}.partial")
    out = run_dir / "neighbours.parquet"
    image_root = Path(workdir.read_collection()["image_root"])
    about = {"run_id": run_id, "model_id": index.meta["model_id"], "kind": kind, "image_root": str(image_root),
             "k": str(k)}
    n_rows = _search_and_write(index, out, names, shas, vectors_of, self_rows, k, about)
    result = QueryResult(run_dir, out, len(names), n_rows, k, skipped, time.monotonic() - t0)
    groups = None
    if "duplicate_threshold" in params:
        groups = duplicate_groups(index, params["duplicate_threshold"], image_root)
        result.duplicates = write_parquet(groups, run_dir / "duplicates.parquet")
        result.n_duplicate_groups = len(set(groups["group"].to_pylist()))
    summary = {"run": run_id, "queries": f"{len(names):,} ({kind})", "k": k, "collection size": f"{index.meta['n']:,}",
               "model id": index.meta["model_id"], "index": f"{index.meta['kind']} {index.meta['params'] or ''}".strip(),
               "measured recall@10": index.meta["recall_at_10"], "metric": index.meta["metric"],
               "run time": f"{result.seconds:.1f} s", "skipped queries": len(skipped)}
    if groups is not None:
        summary["duplicate groups"] = f"{result.n_duplicate_groups:,} (similarity >= {params['duplicate_threshold']:.4f})"
    result.report = write_query_report(run_dir, out, image_root, query_root or image_root, summary, groups)
    result.seconds = time.monotonic() - t0
    write_json({"run_id": run_id, "kind": kind, "k": k, **params, "model_id": index.meta["model_id"],
                "index": {x: index.meta[x] for x in ("kind", "params", "n", "metric", "recall_at_10", "source_fingerprint")},
                **{x: v for x, v in asdict(result).items() if x not in ("run_dir", "neighbours", "report", "duplicates")}},
               run_dir / "run.json")
    os.rename(run_dir, final_dir)
    result.run_dir, result.neighbours = final_dir, final_dir / out.name
    result.report = final_dir / result.report.name
    if result.duplicates is not None:
        result.duplicates = final_dir / result.duplicates.name
    out = result.neighbours
    for name, reason in skipped[:SKIPS_SHOWN]:
        log.warning("query: skipped %s: %s", name, reason)
    if len(skipped) > SKIPS_SHOWN:
        log.warning("query: skipped %d more queries (%s lists every one with its reason)", len(skipped) - SKIPS_SHOWN,
                    final_dir / "run.json")
    log.info("query: %d queries, %d neighbour rows -> %s (%.1fs)", len(names), n_rows, out, result.seconds)
    return result


def _search_and_write(index: SearchIndex, out: Path, names: list[str], shas: list[str],
                      vectors_of: Callable[[slice], tuple[np.ndarray, bool]], self_rows: np.ndarray | None,
                      k: int, about: dict[str, str]) -> int:
    """Search in batches and write neighbours.parquet; `about` (run, model, image root) goes into its columns
    run_id and model_id and into the file's metadata (vaepipe.*)."""
    ids_path = np.asarray(index.ids["path"].to_pylist(), dtype=object)
    ids_sha = np.asarray(index.ids["sha256"].to_pylist(), dtype=object)
    names_a, shas_a = np.asarray(names, dtype=object), np.asarray(shas, dtype=object)
    extra = 1 if self_rows is not None else 0
    progress = Progress("query", len(names), unit="queries")
    n_rows = 0
    metadata = {f"vaepipe.{key}": value for key, value in about.items()}
    with atomic_path(out) as tmp, pq.ParquetWriter(tmp, NEIGHBOURS_SCHEMA.with_metadata(metadata)) as writer:
        for start in range(0, len(names), SEARCH_BATCH):
            s = slice(start, min(start + SEARCH_BATCH, len(names)))
            vectors, prepared = vectors_of(s)
            rows, dist, sim = index.search(vectors, k + extra, prepared=prepared)
            keep = rows >= 0
            if self_rows is not None:
                keep &= rows != self_rows[s][:, None]
            keep &= np.cumsum(keep, axis=1) <= k  # the first k that are not the query itself
            q, col = np.nonzero(keep)
            rank = (np.cumsum(keep, axis=1) * keep)[q, col]
            nb = rows[q, col]
            q += start
            writer.write_table(pa.table({
                "query_path": pa.array(names_a[q], pa.string()),
                "query_sha256": pa.array(shas_a[q], pa.string()),
                "rank": pa.array(rank, pa.int32()),
                "neighbour_path": pa.array(ids_path[nb], pa.string()),
                "neighbour_sha256": pa.array(ids_sha[nb], pa.string()),
                "distance": pa.array(dist[keep], pa.float32()),
                "similarity": pa.array(sim[keep], pa.float32()),
                "run_id": pa.array([about["run_id"]] * len(q), pa.string()),
                "model_id": pa.array([about["model_id"]] * len(q), pa.string()),
            }, schema=NEIGHBOURS_SCHEMA))
            n_rows += len(q)
            progress.update(s.stop - s.start)
    progress.close()
    return n_rows
