"""generate-samples: prior samples, reconstructions and an interpolation strip from the collection's model."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.common import summary_artifact
from vaepipe.generate import GenerateResult, generate_for
from vaepipe.store import Workdir


@task(name="generate", cache_policy=NO_CACHE)
def generate_task(workdir: str, n: int, seed: int, between: tuple[str, str] | None) -> GenerateResult:
    return generate_for(Workdir(Path(workdir)), n=n, seed=seed, between=between)


@flow(name="generate-samples")
def generate_samples(workdir: str, n: int = 64, seed: int = 0, between: tuple[str, str] | None = None) -> dict:
    """Prior samples, reconstructions and an interpolation as PNGs, with a page, in workdir/samples/<run_id>/.

    Args:
        workdir: A workdir that build-index built.
        n: Number of prior samples.
        seed: Random seed of the samples.
        between: Two collection paths to interpolate between; empty: two images the run picks.
    """
    result = generate_task(workdir, n, seed, between)
    summary = result.summary()
    summary_artifact("generate-samples-summary", "vaepipe generate-samples", summary, link=result.page)
    return summary
