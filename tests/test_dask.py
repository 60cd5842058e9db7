"""The embedding stage as shard tasks on a real local Dask cluster gives the same collection as one process."""

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import FAST_TRAIN, write_fmnist
from vaepipe.config import BuildConfig, EmbedConfig, IngestConfig
from vaepipe.index import load_vectors
from vaepipe.query import query_all
from vaepipe.store import Workdir

pytestmark = pytest.mark.usefixtures("prefect_server")


def test_dask_cluster_of_two_workers_matches_a_single_process(tmp_path):
    from flows.build_index import build_index

    images = tmp_path / "images"
    write_fmnist(images, n=300)
    config = BuildConfig(ingest=IngestConfig(workers=1), train=FAST_TRAIN, embed=EmbedConfig(workers=0, part_rows=64))
    single = build_index(str(images), str(tmp_path / "single"), config=config)
    checkpoint = tmp_path / "single" / "models" / single["model id"] / "model.pt"
    dask = build_index(str(images), str(tmp_path / "dask"), model=str(checkpoint), config=config, dask_workers=2)

    assert dask["model id"] == single["model id"] and dask["embedded now"] == 300
    parts = sorted((tmp_path / "dask" / "embeddings" / dask["model id"]).glob("part-*.parquet"))
    assert len(parts) == 5 and sum(pq.read_metadata(p).num_rows for p in parts) == 300  # one part per shard
    a = Workdir(tmp_path / "single")
    b = Workdir(tmp_path / "dask")
    ids_a, vec_a = load_vectors(a.embeddings_dir(single["model id"]), a.manifest)
    ids_b, vec_b = load_vectors(b.embeddings_dir(dask["model id"]), b.manifest)
    assert ids_a.equals(ids_b) and np.abs(vec_a - vec_b).max() < 1e-4
    # Same neighbours, up to the order of near-ties: vectors agree to float rounding (other thread counts), not
    # bit for bit, so where two runs list different images at a rank, those images are equally similar.
    one, other = (pq.read_table(query_all(w, k=5, duplicates=False).neighbours).to_pandas() for w in (a, b))
    both = one.merge(other, on=["query_path", "rank"], suffixes=("_a", "_b"))
    assert len(both) == len(one) == len(other) == 1500
    assert (both["neighbour_path_a"] == both["neighbour_path_b"]).mean() > 0.97
    assert np.abs(both["similarity_a"] - both["similarity_b"]).max() < 1e-3
