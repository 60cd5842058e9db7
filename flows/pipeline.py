"""pipeline: build-index, then every image against the rest, then samples: the whole job in one run."""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from flows.common import summary_artifact
from flows.build_index import build_index
from flows.bulk_query import bulk_query
from flows.generate_samples import generate_samples
from vaepipe.config import BuildConfig
from vaepipe.pipeline import pipeline_summary


@flow(name="pipeline")
def pipeline(images: str, workdir: str, model: str | None = None, retrain: bool = False, k: int = 10,
             n_samples: int = 64, config: BuildConfig | None = None, dask_address: str | None = None,
             dask_workers: int = 0, replace: bool = False, exclude: list[str] | None = None) -> dict:
    """build-index, then bulk-query of every image against the rest (with duplicate groups), then generate-samples.

    Args:
        images: The folder of images to index (searched recursively).
        workdir: Where the collection's files go.
        model: A checkpoint (model.pt) to use instead of training.
        retrain: Train a new model even if the collection has one.
        k: Neighbours per image.
        n_samples: Number of prior samples to draw.
        config: Every knob of ingest, training, embedding and the index (vaepipe.config.BuildConfig); empty: the defaults.
        dask_address: Embed the shards on this running Dask cluster (tcp://host:8786).
        dask_workers: Embed the shards on a local Dask cluster of this many worker processes (0: no Dask).
        replace: Index images into a workdir that holds another folder's collection (refused otherwise).
        exclude: Globs of paths relative to images to leave out ("*.json", "thumbnails/*"; '*' also matches '/').
    """
    built = build_index(images, workdir, model=model, retrain=retrain, config=config, dask_address=dask_address,
                        dask_workers=dask_workers, replace=replace, exclude=exclude)
    queried = bulk_query(workdir, all_images=True, k=k)
    sampled = generate_samples(workdir, n=n_samples)
    summary = pipeline_summary(built, queried, sampled)
    summary_artifact("pipeline-summary", "vaepipe pipeline", summary, link=Path(queried["report"]))
    return summary
