"""A whole build of a collection, in order: ingest -> model (adopt, reuse or train) -> embed -> index -> publish.

    from vaepipe.build import build
    result = build(Path("photos"), Workdir(Path("work")))   # then vaepipe.query.query_all(Workdir(Path("work")))

The order of the stages, the model-reuse policy and publishing collection.json live here, once. `Stages` says how
each stage runs: by default each is the library call, in this process; the Prefect flow (flows/build_index.py)
passes its tasks, and a task runner of its choice (threads or Dask) for the embedding shards.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from vaepipe.config import BuildConfig, EmbedConfig
from vaepipe.embeddings import EmbeddingPlan, EmbedResult, ShardResult, plan_embedding
from vaepipe.index import IndexResult, build_index
from vaepipe.ingest import IngestResult, ingest
from vaepipe.model_dir import TrainResult, reusable_model
from vaepipe.store import Workdir

log = logging.getLogger("vaepipe")

# (images, model_dir, embeddings_dir, plan file, shard numbers, config) -> each shard's result
ShardRunner = Callable[[Path, Path, Path, Path, list[int], EmbedConfig], list[ShardResult]]


# The stages that run the model import torch when they run, not with this module: a re-index that finds nothing
# changed (ingest, the model reused, nothing to embed, the index as it was) then never imports it.
def _adopt(*args, **kwargs) -> TrainResult:
    from vaepipe.train import adopt_checkpoint
    return adopt_checkpoint(*args, **kwargs)


def _train(*args, **kwargs) -> TrainResult:
    from vaepipe.train import train
    return train(*args, **kwargs)


def _embed_shards(*args, **kwargs) -> list[ShardResult]:
    from vaepipe.embed import embed_shards_here
    return embed_shards_here(*args, **kwargs)


@dataclass
class Stages:
    """How each stage runs; every field takes the library function's arguments and returns its result."""

    ingest: Callable[..., IngestResult] = ingest
    adopt: Callable[..., TrainResult] = _adopt
    train: Callable[..., TrainResult] = _train
    plan: Callable[..., EmbeddingPlan] = plan_embedding
    embed_shards: ShardRunner = _embed_shards
    index: Callable[..., IndexResult] = build_index


@dataclass
class BuildResult:
    ingested: IngestResult
    trained: TrainResult
    model_source: str  # "trained", "adopted checkpoint" or "reused"
    embedded: EmbedResult
    indexed: IndexResult
    seconds: dict[str, float] = field(default_factory=dict)  # per stage: ingest, model, embed, index

    def summary(self) -> dict:
        """What a person reads after a build (the CLI prints it, the flow makes it an artifact)."""
        ingested, trained, embedded, indexed = self.ingested, self.trained, self.embedded, self.indexed
        last = trained.metrics[-1] if trained.metrics else {}
        return {
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
            "model": self.model_source,
            "epochs": len(trained.metrics),
            "val ELBO (nats/image)": last.get("val_elbo", "n/a"),
            "val KL (nats/image)": last.get("val_kl", "n/a"),
            "active units": last.get("val_active_units", "n/a"),
            "embedded now": embedded.n_embedded,
            "embeddings reused": embedded.n_reused,
            "parts set aside (damaged or outdated)": len(embedded.quarantined),
            "index kind": indexed.kind,
            "index params": indexed.params or "exact",
            "indexed vectors": indexed.n,
            "recall@10": indexed.recall_at_10,
            **{f"{stage} seconds": round(s, 2) for stage, s in self.seconds.items()},
            "manifest": str(ingested.manifest),
            "model dir": str(trained.model_dir),
            "embeddings": str(embedded.embeddings_dir),
            "index": str(indexed.index_dir),
        }


def build(images: Path, workdir: Workdir, cfg: BuildConfig = BuildConfig(), model: Path | None = None,
          retrain: bool = False, replace: bool = False, stages: Stages = Stages()) -> BuildResult:
    """Index the image folder `images` into `workdir`; incremental: only what changed is read and embedded again.

    model: a checkpoint to use instead of training. Without it the collection's current model is reused (a nightly
    re-index does not retrain) unless retrain=True or there is none yet.
    replace: index `images` into a workdir that holds another folder's collection (refused otherwise); the other
    folder's model is not reused.
    """
    images = Path(images)
    seconds: dict[str, float] = {}
    with workdir.lock():  # one build per workdir at a time
        replacing = workdir.check_image_root(images, replace)
        t = time.monotonic()
        ingested = stages.ingest(images, workdir.manifest, cfg.ingest)
        seconds["ingest"] = time.monotonic() - t

        t = time.monotonic()
        current = None if model or retrain or replacing else reusable_model(workdir, ingested.n_ok, cfg.train)
        if model:
            trained, source = stages.adopt(Path(model), ingested.manifest, workdir, cfg.train), "adopted checkpoint"
        elif current:
            log.info("reusing the collection's model %s (pass retrain=True to train a new one)", current.model_id)
            trained, source = current, "reused"
        else:
            trained, source = stages.train(images, ingested.manifest, workdir, cfg.train, cfg.embed.workers), "trained"
        seconds["model"] = time.monotonic() - t

        t = time.monotonic()
        emb_dir = workdir.embeddings_dir(trained.model_id)
        plan = stages.plan(ingested.manifest, trained.model_dir, emb_dir, cfg.embed)
        shards = stages.embed_shards(images, trained.model_dir, emb_dir, plan.plan, plan.numbers, cfg.embed
                                     ) if plan.numbers else []
        embedded = EmbedResult.of(emb_dir, trained.model_id, plan, shards)
        seconds["embed"] = time.monotonic() - t

        t = time.monotonic()
        indexed = stages.index(emb_dir, ingested.manifest, workdir.index_dir(trained.model_id), trained.model_id,
                               cfg.index)
        seconds["index"] = time.monotonic() - t
        workdir.write_collection(images, trained.model_id)  # last: queries never see half a build
    return BuildResult(ingested, trained, source, embedded, indexed, seconds)
