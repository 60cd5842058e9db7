"""build-index: vaepipe.build.build (ingest -> train, adopt or reuse a model -> embed -> index), each stage a task."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

from prefect import flow, get_run_logger, task, unmapped
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from flows.common import progress_artifact, retry_unless_expected, summary_artifact
from vaepipe.build import ShardRunner, Stages, build
from vaepipe.config import BuildConfig, EmbedConfig
from vaepipe.embed import embed_shard
from vaepipe.embeddings import ShardResult, plan_embedding
from vaepipe.index import build_index as build_faiss_index
from vaepipe.ingest import ingest
from vaepipe.store import Workdir
from vaepipe.train import adopt_checkpoint, train

# Each stage of vaepipe.build.build as a Prefect task (the library is incremental by content hash, so Prefect's own
# result caching is not used); build() decides their order and the model policy.
ingest_task = task(ingest, name="ingest", retries=2, retry_delay_seconds=5, retry_condition_fn=retry_unless_expected,
                   cache_policy=NO_CACHE)
train_task = task(train, name="train", cache_policy=NO_CACHE)
adopt_task = task(adopt_checkpoint, name="adopt-model", cache_policy=NO_CACHE)
plan_task = task(plan_embedding, name="plan-embedding", cache_policy=NO_CACHE)
embed_shard_task = task(embed_shard, name="embed-shard", retries=2, retry_delay_seconds=5,
                        retry_condition_fn=retry_unless_expected, cache_policy=NO_CACHE)
index_task = task(build_faiss_index, name="index", cache_policy=NO_CACHE)


@flow(name="embed-shards")
def embed_shards(images: Path, model_dir: Path, embeddings_dir: Path, plan: Path, numbers: list[int], cfg: EmbedConfig
                 ) -> list[ShardResult]:
    """One task per shard of the plan file; its task runner (one at a time, or Dask) is chosen by build_index."""
    futures = embed_shard_task.map(images, model_dir, embeddings_dir, plan, numbers, unmapped(cfg))
    return [f.result() for f in futures]


def shard_runner(dask_address: str | None, dask_workers: int) -> ShardRunner:
    """The embed-shards subflow on its task runner (see task_runner)."""
    dask = bool(dask_address or dask_workers)

    def run(images: Path, model_dir: Path, embeddings_dir: Path, plan: Path, numbers: list[int], cfg: EmbedConfig
            ) -> list[ShardResult]:
        if dask:  # Dask workers are daemons (no DataLoader children) and share cores
            cfg = dataclasses.replace(cfg, workers=0, threads=cfg.threads or 1)
        with api_for_dask_workers(dask_address) if dask else contextlib.nullcontext():
            return embed_shards.with_options(task_runner=task_runner(dask_address, dask_workers))(
                images, model_dir, embeddings_dir, plan, numbers, cfg)

    return run


def task_runner(dask_address: str | None, dask_workers: int):
    """Shards run one at a time here, or on a Dask cluster: an existing one by address, or a local one."""
    if not dask_address and not dask_workers:
        return ThreadPoolTaskRunner(max_workers=1)
    from prefect_dask import DaskTaskRunner

    if dask_address:
        return DaskTaskRunner(address=dask_address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": dask_workers, "threads_per_worker": 1, "processes": True})


@contextlib.contextmanager
def api_for_dask_workers(dask_address: str | None) -> Iterator[None]:
    """Point the Dask workers' task runs at the API this flow reports to.

    prefect-dask hands each task this process's Prefect settings, so a worker reports wherever this process does,
    whatever its own environment says. Without PREFECT_API_URL among them (a flow called from Python against
    Prefect's temporary server), every worker process started a temporary server of its own, ~4 s, and shards
    then ran ~35% slower beside it (BENCHMARKS.md, Dask), and their runs were not in this flow's server.
    """
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    url = PREFECT_API_URL.value()
    if not url:
        with get_client(sync_client=True) as client:
            url = str(client.api_url).rstrip("/")
    if dask_address and on_loopback(url) and not on_loopback(dask_address):
        get_run_logger().warning(
            "the Dask workers at %s report to the Prefect API at %s, which only this machine can reach: set "
            "PREFECT_API_URL to a Prefect server they can reach (README, Past one machine)", dask_address, url)
    with temporary_settings(updates={PREFECT_API_URL: url}):
        yield


def on_loopback(url: str) -> bool:
    """Whether a URL (http://..., tcp://...) names this machine only."""
    host = urlsplit(url).hostname or ""
    return host == "localhost" or host.startswith("127.") or host == "::1"


@flow(name="build-index")
def build_index(images: str, workdir: str, model: str | None = None, retrain: bool = False,
                config: BuildConfig | None = None, dask_address: str | None = None, dask_workers: int = 0,
                replace: bool = False, exclude: list[str] | None = None) -> dict:
    """Index the image folder `images` into `workdir` (vaepipe.build.build, each stage a task).

    Args:
        images: The folder of images to index (searched recursively).
        workdir: Where the collection's files go (manifest, models, embeddings, index, runs).
        model: A checkpoint (model.pt) to use instead of training. Without it the collection's current model
            is reused (a nightly re-index does not retrain) unless retrain is set or there is none yet.
        retrain: Train a new model even if the collection has one.
        config: Every knob of ingest, training, embedding and the index (vaepipe.config.BuildConfig); empty:
            the defaults, the recipe measured in BENCHMARKS.md.
        dask_address: Embed the shards on this running Dask cluster (tcp://host:8786).
        dask_workers: Embed the shards on a local Dask cluster of this many worker processes (0: no Dask).
        replace: Index images into a workdir that holds another folder's collection (refused otherwise); the
            other folder's model is not reused.
        exclude: Globs of paths relative to images to leave out, as if they were not there ("*.json",
            "thumbnails/*"; '*' also matches '/'); added to config's.
    """
    stages = Stages(ingest=ingest_task, adopt=adopt_task, train=train_task, plan=plan_task,
                    embed_shards=shard_runner(dask_address, dask_workers), index=index_task)
    with progress_artifact("build-index-progress", "build-index"):
        result = build(Path(images), Workdir(Path(workdir)), (config or BuildConfig()).excluding(exclude or []),
                       Path(model) if model else None,
                       retrain, replace, stages)
    summary = result.summary()
    summary_artifact("build-index-summary", "vaepipe build-index", summary)
    return summary
