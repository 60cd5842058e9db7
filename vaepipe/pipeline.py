"""The whole job in one call: build the collection, every image against the rest (with duplicate groups), samples.

The `pipeline` flow runs the same three steps as Prefect subflows; `vaepipe pipeline --no-prefect` and notebooks run
them here, in this process.
"""

from __future__ import annotations

from pathlib import Path

from vaepipe.build import build
from vaepipe.config import BuildConfig
from vaepipe.generate import generate_for
from vaepipe.query import query_all
from vaepipe.store import Workdir


def pipeline_summary(built: dict, queried: dict, sampled: dict) -> dict:
    """The figures of the three steps' summaries that a person reads after the whole job."""
    return {
        "images ok": built["images ok"],
        "images failed": built["images failed"],
        "model id": built["model id"],
        "val ELBO (nats/image)": built["val ELBO (nats/image)"],
        "index kind": built["index kind"],
        "recall@10": built["recall@10"],
        "manifest": built["manifest"],
        "embeddings": built["embeddings"],
        "index": built["index"],
        "neighbours": queried["neighbours"],
        "report": queried["report"],
        "duplicate groups": queried.get("duplicate groups", 0),
        "samples": sampled["samples dir"],
        "samples page": sampled["page"],
    }


def run_pipeline(images: Path, workdir: Workdir, cfg: BuildConfig = BuildConfig(), model: Path | None = None,
                 retrain: bool = False, replace: bool = False, k: int = 10, n_samples: int = 64) -> dict:
    """build, query_all, generate_for, in order; the summary of the three."""
    built = build(images, workdir, cfg, model, retrain, replace).summary()
    queried = query_all(workdir, k).summary()
    sampled = generate_for(workdir, n=n_samples).summary()
    return pipeline_summary(built, queried, sampled)
