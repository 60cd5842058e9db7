"""Scheduled re-indexing: only what changed is redone, the answer equals a rebuild, and killed runs resume."""

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import replace

import pyarrow.parquet as pq
import pytest
from PIL import Image

from helpers import FAST_TRAIN, neighbour_rows, run_build_driver, write_fmnist
from vaepipe.config import BuildConfig, EmbedConfig, IngestConfig
from vaepipe.store import Workdir

pytestmark = pytest.mark.usefixtures("prefect_server")

CONFIG = BuildConfig(ingest=IngestConfig(workers=1), train=FAST_TRAIN, embed=EmbedConfig(workers=0))


def test_incremental_reindex_equals_a_rebuild_from_scratch(tmp_path):
    from flows.build_index import build_index

    images = tmp_path / "images"
    paths = write_fmnist(images, n=300)
    first = build_index(str(images), str(tmp_path / "wd"), config=CONFIG)

    # The folder changes: 30 new images, 20 deleted, 10 moved, 5 rewritten, 3 duplicated.
    new = write_fmnist(tmp_path / "incoming", start=300, n=30)
    for p in new:
        dest = images / "new" / p.name
        dest.parent.mkdir(exist_ok=True)
        shutil.move(p, dest)
    for p in paths[:20]:
        p.unlink()
    (images / "moved").mkdir()
    for p in paths[20:30]:
        p.rename(images / "moved" / p.name)
    donors = write_fmnist(tmp_path / "donors", start=400, n=5)
    for p, donor in zip(paths[30:35], donors):
        Image.open(donor).save(p)
    for p in paths[40:43]:
        shutil.copy(p, p.with_name("copy-" + p.name))

    again = build_index(str(images), str(tmp_path / "wd"), config=CONFIG)
    assert again["model"] == "reused" and again["model id"] == first["model id"]
    assert (again["added"], again["changed"], again["removed"], again["kept"]) == (30 + 10 + 3, 5, 20 + 10, 300 - 35)
    assert again["embedded now"] == 30 + 5  # moved and duplicated files were embedded before, by content
    assert again["indexed vectors"] == 300 + 30 - 20 + 3
    assert {"ingest seconds", "model seconds", "embed seconds", "index seconds"} <= again.keys()

    checkpoint = tmp_path / "wd" / "models" / first["model id"] / "model.pt"
    scratch = build_index(str(images), str(tmp_path / "scratch"), model=str(checkpoint), config=CONFIG)
    assert scratch["embedded now"] == 300 + 30 - 20 + 3 - 3  # every distinct content, from nothing
    assert neighbour_rows(tmp_path / "wd") == neighbour_rows(tmp_path / "scratch")


def test_collection_growth_past_the_ratio_retrains_and_keeps_old_artefacts_apart(tmp_path):
    from flows.build_index import build_index

    images = tmp_path / "images"
    write_fmnist(images, n=200)
    grow = replace(CONFIG, train=replace(FAST_TRAIN, retrain_when_grown=0.5))
    first = build_index(str(images), str(tmp_path / "wd"), config=grow)
    write_fmnist(images, start=200, n=50)  # +25%: below the ratio
    assert build_index(str(images), str(tmp_path / "wd"), config=grow)["model"] == "reused"
    write_fmnist(images, start=250, n=100)  # 350 images against 200 trained on: +75%
    grown = build_index(str(images), str(tmp_path / "wd"), config=grow)
    assert grown["model"] == "trained" and grown["model id"] != first["model id"]
    assert grown["embedded now"] == 350  # everything again, with the new model
    wd = Workdir(tmp_path / "wd")
    assert json.loads(wd.collection.read_text())["model_id"] == grown["model id"]
    old = pq.read_table(wd.embeddings_dir(first["model id"]))
    assert set(old["model_id"].to_pylist()) == {first["model id"]}  # old artefacts untouched, not mixed
    assert set(pq.read_table(wd.embeddings_dir(grown["model id"]))["model_id"].to_pylist()) == {grown["model id"]}


def test_a_second_build_on_the_same_workdir_is_refused(tmp_path):
    from prefect.settings import PREFECT_API_URL

    write_fmnist(tmp_path / "images", n=20)
    wd = Workdir(tmp_path / "wd")
    with wd.lock():
        proc = subprocess.run([sys.executable, "-m", "flows.cli", "index", tmp_path / "images", "--workdir", wd.root],
                              capture_output=True, text=True, timeout=300,
                              env={**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()})
        assert proc.returncode == 2 and "in use by another vaepipe build" in proc.stderr
        assert f"pid {os.getpid()}" in proc.stderr
        assert not wd.manifest.exists()
    assert not (wd.root / ".lock").exists()
    with wd.lock():  # free again once released
        pass


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("killed")
    write_fmnist(root / "images", n=300)
    model_id, _ = run_build_driver(root / "images", root / "reference")
    return root, model_id


@pytest.mark.parametrize("stage,marker,resumed", [
    ("ingest", "ingest: checkpoint after 100", r"unchanged since last ingest: [1-9]\d\d\b"),
    ("train", "train: saved training state after epoch 2", "resuming after epoch 2"),
    ("embed", "embed: wrote part-00001", "already embedded"),
    ("index", "index: writing", "embeddings reused: 300"),
])
def test_a_killed_build_resumes_to_the_same_result(reference, stage, marker, resumed):
    root, model_id = reference
    workdir = root / f"killed-in-{stage}"
    run_build_driver(root / "images", workdir, kill_on=marker)
    assert not (workdir / "collection.json").exists()  # never half-published
    resumed_id, log = run_build_driver(root / "images", workdir)
    assert re.search(resumed, log), log
    assert resumed_id == model_id
    assert neighbour_rows(workdir) == neighbour_rows(root / "reference")


def test_a_reindex_that_finds_nothing_changed_never_imports_torch(built, tmp_path):
    """The nightly job on an unchanged folder: ingest, the model reused (read from its record, not its checkpoint),
    nothing to embed, the index as it was; importing torch was most of such a command's time. A new image is
    embedded as ever."""
    import json

    from vaepipe.build import build

    photos = tmp_path / "photos"
    write_fmnist(photos, n=30)
    wd = Workdir(tmp_path / "wd")
    build(photos, wd, CONFIG, model=built.model_dir(json.loads(built.collection.read_text())["model_id"]) / "model.pt")

    def reindex() -> tuple[dict[str, str], bool]:
        proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "flows.cli", "--no-prefect", "index",
                               str(photos), "--workdir", str(wd.root)], capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        summary = dict(line.strip().split(": ", 1) for line in proc.stdout.splitlines() if ": " in line)
        imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
        return summary, "torch" in imported

    summary, torch_imported = reindex()
    assert (summary["model"], summary["embedded now"], summary["images ok"]) == ("reused", "0", "30")
    assert not torch_imported
    # A model directory published before the record existed: read with torch once, then recorded.
    record_file = wd.model_dir(json.loads(wd.collection.read_text())["model_id"]) / "config.json"
    record = json.loads(record_file.read_text())
    record_file.write_text(json.dumps({k: v for k, v in record.items() if k != "checkpoint_sha256"}))
    summary, torch_imported = reindex()
    assert (summary["model"], summary["embedded now"], torch_imported) == ("reused", "0", True)
    assert json.loads(record_file.read_text()) == record
    summary, torch_imported = reindex()
    assert (summary["model"], summary["embedded now"], torch_imported) == ("reused", "0", False)
    first = next(photos.rglob("*.png"))
    Image.open(first).transpose(Image.Transpose.FLIP_TOP_BOTTOM).save(photos / "new.png")
    summary, torch_imported = reindex()
    assert (summary["model"], summary["embedded now"], summary["images ok"]) == ("reused", "1", "31")
    assert torch_imported

