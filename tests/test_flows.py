"""The Prefect flows end to end on a real (temporary) Prefect server: what a user's run leaves behind."""

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from helpers import FAST_TRAIN, write_fmnist, write_mixed
from vaepipe.config import BuildConfig, EmbedConfig, IngestConfig
from vaepipe.errors import VaepipeError
from vaepipe.serve import page_url
from vaepipe.store import MANIFEST_SCHEMA, NEIGHBOURS_SCHEMA, embedding_schema

pytestmark = pytest.mark.usefixtures("prefect_server")

CONFIG = BuildConfig(ingest=IngestConfig(workers=1), train=FAST_TRAIN, embed=EmbedConfig(workers=0))


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    """Fashion-MNIST PNGs plus every other format and three bad files, in nested folders."""
    root = tmp_path_factory.mktemp("photos")
    write_fmnist(root / "fashion", n=400)
    write_mixed(root / "misc")
    return root


@pytest.fixture(scope="module")
def pipeline_run(collection, tmp_path_factory):
    from flows.pipeline import pipeline

    workdir = tmp_path_factory.mktemp("wd")
    summary = pipeline(str(collection), str(workdir), k=5, n_samples=16, config=CONFIG)
    return workdir, summary


def _artifacts() -> dict[str, object]:
    """The latest artifact of each key: its data."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts()
    progress = [a for a in artifacts if a.type == "progress"]
    assert progress and all(a.data == 100.0 for a in progress)  # finished stages end at 100%
    return {a.key: a.data for a in sorted(artifacts, key=lambda a: a.created)}


def test_pipeline_writes_every_artefact(pipeline_run, collection):
    workdir, summary = pipeline_run
    n_files = sum(1 for p in collection.rglob("*") if p.is_file())
    manifest = pq.read_table(workdir / "manifest.parquet")
    assert manifest.schema.equals(MANIFEST_SCHEMA) and manifest.num_rows == n_files
    statuses = manifest.column("status").to_pylist()
    assert statuses.count("error") == 3 == summary["images failed"]
    assert summary["images ok"] == n_files - 3

    mid = summary["model id"]
    emb = pq.read_table(Path(summary["embeddings"]))
    assert emb.schema.equals(embedding_schema(32, grey=True)) and emb.num_rows == len(set(  # a colour model
        r["sha256"] for r in manifest.to_pylist() if r["status"] == "ok"))
    meta = json.loads((Path(summary["index"]) / "index.json").read_text())
    assert meta["n"] == n_files - 3 and meta["model_id"] == mid

    neighbours = pq.read_table(summary["neighbours"])
    assert neighbours.schema.equals(NEIGHBOURS_SCHEMA) and neighbours.num_rows == meta["n"] * 5

    samples = Path(summary["samples"])
    pngs = sorted(samples.glob("*.png"))
    assert len(pngs) == 16 + 4  # samples, their grid, the fitted-latent grid, reconstructions, interpolation
    for p in pngs:
        with Image.open(p) as img:
            img.verify()
    artifacts = _artifacts()
    assert {"build-index-summary", "bulk-query-summary", "generate-samples-summary", "pipeline-summary",
            "bulk-query-top-rows", "build-index-progress", "bulk-query-progress"} <= artifacts.keys()
    assert Path(summary["report"]).exists() and Path(summary["samples page"]).exists()
    # The pages open from the Prefect UI through `vaepipe serve` (browsers do not follow file:// links from it).
    assert f"({page_url(Path(summary['report']), workdir)})" in artifacts["pipeline-summary"]
    assert f"vaepipe serve {workdir.resolve()}" in artifacts["pipeline-summary"]
    assert f"({page_url(Path(summary['samples page']), workdir)})" in artifacts["generate-samples-summary"]


def test_bulk_query_flow_finds_the_original_of_a_copy(pipeline_run, collection, tmp_path):
    from flows.bulk_query import bulk_query

    workdir, _ = pipeline_run
    originals = sorted((collection / "fashion").rglob("*.png"))[::50][:4]
    for i, src in enumerate(originals):
        Image.open(src).convert("RGB").save(tmp_path / f"copy{i}.jpg", quality=90)
    summary = bulk_query(str(workdir), queries=str(tmp_path), k=3)
    df = pq.read_table(summary["neighbours"]).to_pandas()
    top = df[df["rank"] == 1].set_index("query_path")["neighbour_path"].to_dict()
    assert top == {f"copy{i}.jpg": src.relative_to(collection).as_posix() for i, src in enumerate(originals)}


def test_reindex_reuses_the_model_and_an_adopted_checkpoint_skips_training(pipeline_run, collection, tmp_path):
    from flows.build_index import build_index

    workdir, first = pipeline_run
    again = build_index(str(collection), str(workdir), config=CONFIG)
    assert again["model"] == "reused" and again["model id"] == first["model id"]
    assert again["embedded now"] == 0 and again["unchanged since last ingest"] == again["images ok"]

    checkpoint = workdir / "models" / first["model id"] / "model.pt"
    other = tmp_path / "other"
    shutil.copytree(collection / "fashion", other)
    # The collection has colour files, so its model is RGB; a grey-only folder calls for a grey model.
    with pytest.raises(VaepipeError, match="--channels 3 --image-size 28 to use it anyway"):
        build_index(str(other), str(tmp_path / "wd2"), model=str(checkpoint), config=CONFIG)
    assert not (tmp_path / "wd2" / "collection.json").exists()
    rgb = BuildConfig(ingest=CONFIG.ingest, train=replace(FAST_TRAIN, channels=3), embed=CONFIG.embed)
    left_out = sorted(p.relative_to(other).as_posix() for p in (other / "trouser").rglob("*.png"))
    adopted = build_index(str(other), str(tmp_path / "wd2"), model=str(checkpoint), config=rgb, exclude=["trouser/*"])
    assert adopted["model"] == "adopted checkpoint" and adopted["model id"] == first["model id"]
    assert left_out and adopted["epochs"] == 0 and adopted["indexed vectors"] == 400 - len(left_out)
    paths = pq.read_table(tmp_path / "wd2" / "manifest.parquet")["path"].to_pylist()
    assert not set(left_out) & set(paths) and len(paths) == 400 - len(left_out)
