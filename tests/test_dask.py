"""The embedding stage as shard tasks on real Dask clusters gives the same collection as one process."""

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from helpers import FAST_TRAIN, free_port, stop_group, write_fmnist
from vaepipe.config import BuildConfig, EmbedConfig, IngestConfig
from vaepipe.index import load_vectors
from vaepipe.query import query_all
from vaepipe.store import Workdir

pytestmark = pytest.mark.usefixtures("prefect_server")
CONFIG = BuildConfig(ingest=IngestConfig(workers=1), train=FAST_TRAIN, embed=EmbedConfig(workers=0, part_rows=64))
N_IMAGES = 300


@pytest.fixture(scope="module")
def single(tmp_path_factory, prefect_server) -> tuple[Path, Path, dict]:
    """(images, workdir, summary) of a build in one process, the reference for every cluster."""
    from flows.build_index import build_index

    root = tmp_path_factory.mktemp("dask-single")
    write_fmnist(root / "images", n=N_IMAGES)
    summary = build_index(str(root / "images"), str(root / "single"), config=CONFIG)
    return root / "images", root / "single", summary


@pytest.fixture
def external_cluster(tmp_path):
    """A cluster this process did not start: `dask scheduler` and `dask worker` (2 processes, 1 thread each)."""
    from distributed import Client

    address = f"tcp://127.0.0.1:{free_port()}"
    log = open(tmp_path / "dask.log", "w")
    procs = [subprocess.Popen([sys.executable, "-m", "dask", *args], stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
             for args in (["scheduler", "--host", "127.0.0.1", "--port", address.rsplit(":", 1)[1], "--no-dashboard"],
                          ["worker", address, "--nworkers", "2", "--nthreads", "1", "--no-dashboard"])]
    try:
        deadline = time.monotonic() + 120
        while True:  # the scheduler may not listen yet
            try:
                with Client(address, timeout=5) as client:
                    client.wait_for_workers(2, timeout=max(1, deadline - time.monotonic()))
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        yield address
    finally:
        for proc in reversed(procs):  # workers first, then their scheduler
            stop_group(proc, timeout=30)
        log.close()


def _assert_same_collection(single: tuple[Path, Path, dict], workdir: Path, summary: dict) -> None:
    _, single_dir, reference = single
    assert summary["model id"] == reference["model id"] and summary["embedded now"] == N_IMAGES
    parts = sorted((workdir / "embeddings" / summary["model id"]).glob("part-*.parquet"))
    assert len(parts) == 5 and sum(pq.read_metadata(p).num_rows for p in parts) == N_IMAGES  # one part per shard
    a, b = Workdir(single_dir), Workdir(workdir)
    ids_a, vec_a = load_vectors(a.embeddings_dir(reference["model id"]), a.manifest)
    ids_b, vec_b = load_vectors(b.embeddings_dir(summary["model id"]), b.manifest)
    assert ids_a.equals(ids_b) and np.abs(vec_a - vec_b).max() < 1e-4
    # Same neighbours, up to the order of near-ties: vectors agree to float rounding (other thread counts), not
    # bit for bit, so where two runs list different images at a rank, those images are equally similar.
    one, other = (pq.read_table(query_all(w, k=5, duplicates=False).neighbours).to_pandas() for w in (a, b))
    both = one.merge(other, on=["query_path", "rank"], suffixes=("_a", "_b"))
    assert len(both) == len(one) == len(other) == 5 * N_IMAGES
    assert (both["neighbour_path_a"] == both["neighbour_path_b"]).mean() > 0.97
    assert np.abs(both["similarity_a"] - both["similarity_b"]).max() < 1e-3


def test_dask_cluster_of_two_workers_matches_a_single_process(single, tmp_path):
    from flows.build_index import build_index

    images, single_dir, reference = single
    checkpoint = single_dir / "models" / reference["model id"] / "model.pt"
    summary = build_index(str(images), str(tmp_path / "dask"), model=str(checkpoint), config=CONFIG, dask_workers=2)
    _assert_same_collection(single, tmp_path / "dask", summary)


def test_an_existing_cluster_by_address_runs_the_shards_and_matches_a_single_process(single, external_cluster, tmp_path):
    from distributed import Client

    from flows.build_index import build_index

    images, single_dir, reference = single
    checkpoint = single_dir / "models" / reference["model id"] / "model.pt"
    summary = build_index(str(images), str(tmp_path / "dask"), model=str(checkpoint), config=CONFIG,
                          dask_address=external_cluster)
    _assert_same_collection(single, tmp_path / "dask", summary)
    with Client(external_cluster) as client:  # the shards ran in the cluster's processes, not in this one
        prefixes = client.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.task_prefixes))
        ran_a_shard = client.run(lambda: "vaepipe.embed" in sys.modules and "flows.common" in sys.modules)
    assert "embed_shard" in prefixes  # the embed-shard task (vaepipe.embed.embed_shard)
    assert len(ran_a_shard) == 2 and any(ran_a_shard.values())


def test_workers_report_to_the_flow_s_temporary_server_when_no_api_is_set(single, tmp_path):
    """Called from Python with no PREFECT_API_URL, the flow runs against Prefect's temporary server; the Dask
    workers must report there too, not each start a server of their own."""
    images, single_dir, reference = single
    checkpoint = single_dir / "models" / reference["model id"] / "model.pt"
    script = ("import sys; from flows.build_index import build_index; from vaepipe.config import BuildConfig, EmbedConfig\n"
              "if __name__ == '__main__':\n"
              "    s = build_index(sys.argv[1], sys.argv[2], model=sys.argv[3], dask_workers=2,\n"
              "                    config=BuildConfig(embed=EmbedConfig(part_rows=64)))\n"
              "    print('EMBEDDED', s['embedded now'])\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(tmp_path / "home"), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    (tmp_path / "run.py").write_text(script)
    out = subprocess.run([sys.executable, str(tmp_path / "run.py"), str(images), str(tmp_path / "wd"), str(checkpoint)],
                         env=env, capture_output=True, text=True, timeout=600)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-3000:]
    assert f"EMBEDDED {N_IMAGES}" in log
    assert log.count("Task run 'embed-shard-") >= 5  # every shard ran as a Prefect task run
    assert log.count("Starting temporary server") == 1, log[-3000:]


def test_a_cluster_elsewhere_is_warned_about_an_api_only_this_machine_reaches(caplog):
    from prefect import flow

    from flows.build_index import api_for_dask_workers, on_loopback

    @flow
    def enter(address: str) -> None:
        with api_for_dask_workers(address):
            pass

    warning = "only this machine can reach"
    enter("tcp://127.0.0.1:8786")  # the test server is on 127.0.0.1 too: fine for a local cluster
    assert warning not in caplog.text
    enter("tcp://10.0.0.5:8786")
    assert warning in caplog.text
    assert on_loopback("http://localhost:4200/api") and on_loopback("tcp://[::1]:8786")
    assert not on_loopback("http://prefect.internal:4200/api")
