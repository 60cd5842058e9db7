"""The README's DuckDB example, run as written (W replaced by a real workdir) on a real run's Parquet files."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb
import pyarrow.parquet as pq

from vaepipe.query import query_all

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
README = Path(__file__).resolve().parent.parent / "README.md"


def test_the_readme_sql_reads_neighbours_groups_embeddings_and_the_manifest(built_copy, fmnist_dir):
    run = query_all(built_copy, k=3)
    section = README.read_text().split("### With DuckDB", 1)[1]
    sql = re.search(r"```sql\n(.*?)```", section, re.S).group(1).replace("'W/", f"'{built_copy.root}/")
    statements = [chunk for chunk in sql.split(";") if "SELECT" in chunk]  # each with its comment lines
    assert len(statements) == 4
    pairs, groups, nearest, latest = [duckdb.sql(statement).fetchall() for statement in statements]
    table = pq.read_table(run.neighbours).to_pandas()
    best = table[table["rank"] == 1]["similarity"].max()
    assert len(pairs) == 5 and abs(pairs[0][2] - best) < 1e-6
    assert len(groups) == pq.read_table(run.duplicates).num_rows
    first = table["query_path"].min()
    product = table[table["query_path"] == first].sort_values("rank")["neighbour_path"].tolist()
    assert len(nearest) == 3 and all(-1 <= cosine <= 1 for _, cosine in nearest)
    assert nearest[0][0] in product  # raw cosine and the product's centred cosine agree on what is near
    newest = sorted((f.stat().st_mtime_ns for f in fmnist_dir.rglob("*.png")), reverse=True)[:3]
    assert len(latest) == 3 and all(mtime.tzinfo is not None for _, mtime in latest)
    # DuckDB keeps microseconds: each row's time is its file's, and they are the three newest
    assert [(mtime - EPOCH) // timedelta(microseconds=1) for _, mtime in latest] == [(fmnist_dir / path).stat().st_mtime_ns // 1000
                                                                     for path, _ in latest] == [ns // 1000 for ns in newest]
