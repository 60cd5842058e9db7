"""bulk-query: neighbours for a folder of query images, a list of collection paths, or all against all."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
from prefect import flow, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from flows.common import progress_artifact, retry_unless_expected, summary_artifact
from vaepipe.config import EmbedConfig
from vaepipe.query import QueryResult, query_all, query_folder, query_list
from vaepipe.errors import VaepipeError
from vaepipe.store import Workdir


@task(name="query", retries=1, retry_delay_seconds=5, retry_condition_fn=retry_unless_expected, cache_policy=NO_CACHE)
def query_task(workdir: str, queries: str | None, list_file: str | None, all_images: bool, k: int,
               duplicates: bool, threshold: float | None, cfg: EmbedConfig) -> QueryResult:
    wd = Workdir(Path(workdir))
    if sum([queries is not None, list_file is not None, all_images]) != 1:
        raise VaepipeError("say what to query with exactly one of: queries (a folder), list_file, all_images=True")
    if queries is not None:
        return query_folder(wd, Path(queries), k, cfg)
    if list_file is not None:
        return query_list(wd, Path(list_file), k)
    return query_all(wd, k, duplicates=duplicates, threshold=threshold)


@flow(name="bulk-query")
def bulk_query(workdir: str, queries: str | None = None, list_file: str | None = None, all_images: bool = False,
               k: int = 10, duplicates: bool = True, threshold: float | None = None,
               embed: EmbedConfig | None = None) -> dict:
    """Neighbour table, report.html and (for all_images) duplicate groups in workdir/runs/<run_id>/.

    Args:
        workdir: A workdir that build-index built.
        queries: A folder of query images outside the collection (not added to the index).
        list_file: A text file of collection paths, one per line, whose neighbours to find.
        all_images: Every indexed image against the rest (near-duplicate hunting); also writes duplicate groups.
        k: Neighbours per query.
        duplicates: With all_images, also find duplicate groups.
        threshold: With all_images, the similarity from which two images are near duplicates; empty: 0.97 for
            models trained for copies (photos, art, icons), else calibrated on JPEG re-saves.
        embed: How query images are embedded (vaepipe.config.EmbedConfig); empty: the defaults.
    """
    with progress_artifact("bulk-query-progress", "bulk-query"):
        result = query_task(workdir, queries, list_file, all_images, k, duplicates, threshold, embed or EmbedConfig())
    top = next(pq.ParquetFile(result.neighbours).iter_batches(batch_size=50), None)  # not the whole table for 50 rows
    top = top.to_pylist() if top is not None else []
    create_table_artifact(key="bulk-query-top-rows", table=top, description="first 50 rows of neighbours.parquet")
    summary = {
        "queries": result.n_queries,
        "skipped": len(result.skipped),
        "k": result.k,
        "rows written": result.n_rows,
        "seconds": round(result.seconds, 2),
        "neighbours": str(result.neighbours),
        "report": str(result.report),
    }
    if result.duplicates:
        summary["duplicate groups"] = result.n_duplicate_groups
        summary["duplicates"] = str(result.duplicates)
    summary_artifact("bulk-query-summary", "vaepipe bulk-query", summary, link=result.report)
    return summary
