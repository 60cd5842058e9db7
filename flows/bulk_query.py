"""bulk-query: neighbours for a folder of query images, a list of collection paths, or all against all."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
from prefect import flow, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from flows.common import progress_artifact, retry_unless_expected, summary_artifact
from vaepipe.config import EmbedConfig
from vaepipe.query import QueryResult, run_query
from vaepipe.store import Workdir


@task(name="query", retries=1, retry_delay_seconds=5, retry_condition_fn=retry_unless_expected, cache_policy=NO_CACHE)
def query_task(workdir: str, queries: str | None, list_file: str | None, all_images: bool, k: int,
               duplicates: bool, threshold: float | None, cfg: EmbedConfig) -> QueryResult:
    return run_query(Workdir(Path(workdir)), Path(queries) if queries else None, Path(list_file) if list_file else None,
                     all_images, k, duplicates, threshold, cfg)


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
    summary = result.summary()
    summary_artifact("bulk-query-summary", "vaepipe bulk-query", summary, link=result.report)
    return summary
