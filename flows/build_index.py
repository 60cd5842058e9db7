"""build-index: ingest -> train (or adopt a checkpoint, or reuse the collection's model) -> embed -> index."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

from prefect import flow, get_run_logger, task, unmapped
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from flows.common import progress_artifact, retry_unless_expected, summary_artifact
from vaepipe.config import BuildConfig, EmbedConfig, IndexConfig, IngestConfig, TrainConfig
from vaepipe.embed import EmbedResult, embed_shard, plan_shards
from vaepipe.index import IndexResult, build_index as build_faiss_index
from vaepipe.ingest import IngestResult, ingest
from vaepipe.model import checkpoint_config
from vaepipe.store import Workdir
from vaepipe.train import TrainResult, adopt_checkpoint, reusable_model, train

# The library is incremental by content hash, so Prefect's own result caching is not used.


@task(name="ingest", retries=2, retry_delay_seconds=5, retry_condition_fn=retry_unless_expected, cache_policy=NO_CACHE)
def ingest_task(images: str, workdir: str, cfg: IngestConfig) -> IngestResult:
    return ingest(Path(images), Workdir(Path(workdir)).manifest, cfg)


@task(name="train", cache_policy=NO_CACHE)
def train_task(images: str, manifest: Path, workdir: str, cfg: TrainConfig, workers: int) -> TrainResult:
    return train(Path(images), manifest, Workdir(Path(workdir)), cfg, workers=workers)


@task(name="adopt-model", cache_policy=NO_CACHE)
def adopt_task(checkpoint: str, manifest: Path, workdir: str, cfg: TrainConfig) -> TrainResult:
    return adopt_checkpoint(Path(checkpoint), manifest, Workdir(Path(workdir)), cfg)


@task(name="plan-embedding", cache_policy=NO_CACHE)
def plan_task(manifest: Path, model_dir: Path, embeddings_dir: Path, cfg: EmbedConfig) -> tuple[Path, list[int], int, list[Path]]:
    dim = checkpoint_config(Path(model_dir) / "model.pt").latent_dim
    return plan_shards(manifest, embeddings_dir, dim, cfg.part_rows)


@task(name="embed-shard", retries=2, retry_delay_seconds=5, retry_condition_fn=retry_unless_expected, cache_policy=NO_CACHE)
def embed_shard_task(images: str, model_dir: Path, embeddings_dir: Path, plan: Path, number: int, cfg: EmbedConfig
                     ) -> tuple[int, list[tuple[str, str]]]:
    return embed_shard(Path(images), model_dir, embeddings_dir, plan, number, cfg)


@flow(name="embed-shards")
def embed_shards(images: str, model_dir: Path, embeddings_dir: Path, plan: Path, numbers: list[int], cfg: EmbedConfig
                 ) -> list[tuple[int, list[tuple[str, str]]]]:
    """One task per shard of the plan file; its task runner (one at a time, or Dask) is chosen by build_index."""
    futures = embed_shard_task.map(images, model_dir, embeddings_dir, plan, numbers, unmapped(cfg))
    return [f.result() for f in futures]


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


@task(name="index", cache_policy=NO_CACHE)
def index_task(embeddings_dir: Path, manifest: Path, index_dir: Path, model_id: str, cfg: IndexConfig) -> IndexResult:
    return build_faiss_index(embeddings_dir, manifest, index_dir, model_id, cfg)


@flow(name="build-index")
def build_index(images: str, workdir: str, model: str | None = None, retrain: bool = False,
                config: BuildConfig | None = None, dask_address: str | None = None, dask_workers: int = 0,
                replace: bool = False) -> dict:
    """Index the image folder `images` into `workdir`.

    model: a checkpoint to use instead of training. Without it the collection's current model is reused
    (a nightly re-index does not retrain) unless retrain=True or there is none yet.
    dask_address / dask_workers: embed the shards on an existing Dask cluster (tcp://host:8786) or on a
    local one with this many worker processes.
    replace: index `images` into a workdir that holds another folder's collection (refused otherwise); the
    other folder's model is not reused.
    """
    cfg = config or BuildConfig()
    log = get_run_logger()
    wd = Workdir(Path(workdir))
    timings: dict[str, float] = {}

    with wd.lock(), progress_artifact("build-index-progress", "build-index"):  # one build per workdir at a time
        replacing = wd.check_image_root(Path(images), replace)
        t = time.monotonic()
        ingested = ingest_task(images, workdir, cfg.ingest)
        timings["ingest"] = time.monotonic() - t

        t = time.monotonic()
        current = None if model or retrain or replacing else reusable_model(wd, ingested.n_ok, cfg.train)
        if model:
            trained = adopt_task(model, ingested.manifest, workdir, cfg.train)
        elif current:
            log.info("reusing the collection's model %s (pass retrain=True to train a new one)", current.model_id)
            trained = current
        else:
            trained = train_task(images, ingested.manifest, workdir, cfg.train, cfg.embed.workers)
        timings["model"] = time.monotonic() - t

        t = time.monotonic()
        emb_dir = wd.embeddings_dir(trained.model_id)
        plan, numbers, n_done, quarantined = plan_task(ingested.manifest, trained.model_dir, emb_dir, cfg.embed)
        shard_cfg = cfg.embed
        if dask_address or dask_workers:  # Dask workers are daemons (no DataLoader children) and share cores
            shard_cfg = dataclasses.replace(cfg.embed, workers=0, threads=cfg.embed.threads or 1)
        with api_for_dask_workers(dask_address) if dask_address or dask_workers else contextlib.nullcontext():
            results = embed_shards.with_options(task_runner=task_runner(dask_address, dask_workers))(
                images, trained.model_dir, emb_dir, plan, numbers, shard_cfg) if numbers else []
        embedded = EmbedResult(emb_dir, trained.model_id, sum(n for n, _ in results), n_done, quarantined,
                               [f for _, failed in results for f in failed])
        timings["embed"] = time.monotonic() - t

        t = time.monotonic()
        indexed = index_task(embedded.embeddings_dir, ingested.manifest, wd.index_dir(trained.model_id),
                             trained.model_id, cfg.index)
        timings["index"] = time.monotonic() - t
        wd.write_collection(Path(images), trained.model_id)

    last = trained.metrics[-1] if trained.metrics else {}
    summary = {
        "images seen": ingested.n_files,
        "images ok": ingested.n_ok,
        "images failed": ingested.n_error + len(embedded.failed),
        "skipped, not images": ingested.n_skipped,
        "failed by reason": ingested.errors_by_kind,
        "unchanged since last ingest": ingested.n_reused,
        "added": ingested.added,
        "changed": ingested.changed,
        "removed": ingested.removed,
        "kept": ingested.kept,
        "model id": trained.model_id,
        "model": "adopted checkpoint" if model else ("trained" if trained.metrics else "reused"),
        "epochs": len(trained.metrics),
        "val ELBO (nats/image)": last.get("val_elbo", "n/a"),
        "val KL (nats/image)": last.get("val_kl", "n/a"),
        "active units": last.get("val_active_units", "n/a"),
        "embedded now": embedded.n_embedded,
        "embeddings reused": embedded.n_reused,
        "damaged parts set aside": len(embedded.quarantined),
        "index kind": indexed.kind,
        "index params": indexed.params or "exact",
        "indexed vectors": indexed.n,
        "recall@10": indexed.recall_at_10,
        **{f"{stage} seconds": round(s, 2) for stage, s in timings.items()},
        "manifest": str(ingested.manifest),
        "model dir": str(trained.model_dir),
        "embeddings": str(embedded.embeddings_dir),
        "index": str(indexed.index_dir),
    }
    summary_artifact("build-index-summary", "vaepipe build-index", summary)
    return summary
