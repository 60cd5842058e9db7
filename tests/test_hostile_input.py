"""Hostile and broken input: every bad file recorded with a reason, nothing lost, nothing let in."""

import json
import multiprocessing
import os
import shutil
import tempfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from helpers import SERIAL, run_cli, write_fmnist
from hostile import write_hostile
from vaepipe.config import IngestConfig
from vaepipe.embed import embed
from vaepipe.embeddings import content_keys, embedded_contents
from vaepipe.index import build_index, load_vectors
from vaepipe.ingest import ingest, inspect_file, scan
from vaepipe.model import VAE, VAEConfig, save_checkpoint
from vaepipe.query import query_folder
from vaepipe.errors import VaepipeError
from vaepipe.store import checked_row_groups, embedding_schema


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*")) if p.is_file()}


def test_every_bad_file_is_a_manifest_row_with_its_reason(tmp_path):
    expect = write_hostile(tmp_path / "root", tmp_path / "outside")
    write_fmnist(tmp_path / "root" / "good", n=50)
    result = ingest(tmp_path / "root", tmp_path / "manifest.parquet", IngestConfig(workers=1))
    rows = {r["path"]: r for r in pq.read_table(tmp_path / "manifest.parquet").to_pylist()}
    for name, kind in expect.items():
        assert name in rows, name
        if kind is None:
            assert rows[name]["status"] == "ok", (name, rows[name]["error"])
        elif kind.startswith("skipped: "):
            assert rows[name]["status"] == "skipped" and rows[name]["error"].startswith(kind[9:]), (name, rows[name])
        else:
            assert rows[name]["status"] == "error" and rows[name]["error"].startswith(kind), (name, rows[name]["error"])
    assert sum(1 for n in rows if n.startswith("good/")) == 50
    # hidden files and the symlinked directory loop are not read at all
    assert not any(".hidden" in n or n.startswith("links/loop") for n in rows)
    skipped = sum(k is not None and k.startswith("skipped: ") for k in expect.values())
    assert result.n_skipped == skipped == 1
    assert result.n_error == sum(k is not None for k in expect.values()) - skipped
    assert result.errors_by_kind["not an image"] == 2 and result.errors_by_kind["corrupt or truncated image"] == 2


def test_the_pixel_limit_is_configurable(tmp_path):
    from PIL import Image
    (tmp_path / "imgs").mkdir()
    Image.new("L", (300, 300)).save(tmp_path / "imgs" / "a.png")
    Image.new("L", (30, 30)).save(tmp_path / "imgs" / "b.png")
    result = ingest(tmp_path / "imgs", tmp_path / "m.parquet", IngestConfig(workers=1, max_pixels=10_000))
    assert result.errors_by_kind == {"decompression bomb": 1}


def test_a_file_that_vanishes_after_the_scan_is_recorded(tmp_path):
    write_fmnist(tmp_path / "imgs", n=3)
    files = scan(tmp_path / "imgs")
    files[0].unlink()
    row = inspect_file(tmp_path / "imgs", str(files[0]), IngestConfig())
    assert row["status"] == "error" and row["error"].startswith("file vanished")


def _ingest_as_nobody(root: str, manifest: str, queue) -> None:
    os.setgid(65534)
    os.setuid(65534)
    result = ingest(Path(root), Path(manifest), IngestConfig(workers=1))
    queue.put(result.errors_by_kind)
    queue.put((result.n_ok, result.removed, result.kept))


def _ingest_as_a_user(root: Path, manifest: Path) -> tuple[dict, tuple[int, int, int]]:
    """ingest's errors by kind and (ok, removed, kept), run as 'nobody' when this is root (root reads everything)."""
    if os.geteuid() != 0:
        r = ingest(root, manifest, IngestConfig(workers=1))
        return r.errors_by_kind, (r.n_ok, r.removed, r.kept)
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_ingest_as_nobody, args=(str(root), str(manifest), queue))
    child.start()
    child.join(60)
    assert child.exitcode == 0
    return queue.get(timeout=5), queue.get(timeout=5)


def test_a_folder_that_cannot_be_listed_keeps_its_rows_rather_than_leave_the_index():
    root = Path(tempfile.mkdtemp(prefix="vaepipe-perm-"))
    try:
        root.chmod(0o777)
        write_fmnist(root / "imgs" / "a", n=3)
        write_fmnist(root / "imgs" / "b", n=2)
        for p in [root / "imgs", *(root / "imgs").rglob("*")]:
            p.chmod(0o777 if p.is_dir() else 0o644)
        assert _ingest_as_a_user(root / "imgs", root / "m.parquet")[1] == (5, 0, 0)
        before = pq.read_table(root / "m.parquet").sort_by("path")
        (root / "imgs" / "b").chmod(0)
        by_kind, (n_ok, removed, kept) = _ingest_as_a_user(root / "imgs", root / "m.parquet")
        assert (n_ok, removed, kept) == (5, 0, 5) and by_kind == {}
        after = pq.read_table(root / "m.parquet")
        assert after.equals(before) and after["path"].to_pylist() == sorted(after["path"].to_pylist())
    finally:
        (root / "imgs" / "b").chmod(0o777)
        shutil.rmtree(root, ignore_errors=True)


def test_unreadable_file_is_recorded_not_fatal():
    # Root reads everything, so the read is made by a forked child that has dropped to 'nobody'.
    root = Path(tempfile.mkdtemp(prefix="vaepipe-perm-"))
    try:
        root.chmod(0o777)
        write_fmnist(root / "imgs", n=3)
        for p in [root / "imgs", *(root / "imgs").rglob("*")]:
            p.chmod(0o777 if p.is_dir() else 0o644)
        locked = next((root / "imgs").rglob("*.png"))
        locked.chmod(0)
        if os.geteuid() == 0:
            ctx = multiprocessing.get_context("fork")
            queue = ctx.Queue()
            child = ctx.Process(target=_ingest_as_nobody, args=(str(root / "imgs"), str(root / "m.parquet"), queue))
            child.start()
            child.join(60)
            assert child.exitcode == 0
            by_kind = queue.get(timeout=5)
        else:
            by_kind = ingest(root / "imgs", root / "m.parquet", IngestConfig(workers=1)).errors_by_kind
        assert by_kind == {"permission denied": 1}
        rows = {r["path"]: r for r in pq.read_table(root / "m.parquet").to_pylist()}
        assert rows[locked.relative_to(root / "imgs").as_posix()]["error"].startswith("permission denied")
        assert sum(r["status"] == "ok" for r in rows.values()) == 2
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.usefixtures("prefect_server")
def test_hostile_folder_end_to_end_nothing_lost(tmp_path):
    from prefect.settings import PREFECT_API_URL

    expect = write_hostile(tmp_path / "root", tmp_path / "outside")
    write_fmnist(tmp_path / "root" / "good", n=200)
    n_skipped = sum(k is not None and k.startswith("skipped: ") for k in expect.values())
    n_bad = sum(k is not None for k in expect.values()) - n_skipped
    wd = tmp_path / "wd"
    proc = run_cli("index", tmp_path / "root", "--workdir", wd, "--epochs", "1", "--workers", "1",
                   env={"PREFECT_API_URL": PREFECT_API_URL.value()}, check=False)
    assert proc.returncode == 0, proc.stderr
    assert f"images failed: {n_bad}" in proc.stdout and f"skipped, not images: {n_skipped}" in proc.stdout
    assert "decompression bomb: 1" in proc.stdout  # failures by reason, in the CLI output
    manifest = pq.read_table(wd / "manifest.parquet").to_pylist()
    ok = {r["path"] for r in manifest if r["status"] == "ok"}
    collection = json.loads((wd / "collection.json").read_text())
    ids = set(pq.read_table(wd / "index" / collection["model_id"] / "ids.parquet")["path"].to_pylist())
    assert ids == ok  # every good image is searchable
    assert len(ok) == 200 + sum(k is None for k in expect.values())


@pytest.mark.usefixtures("prefect_server")
@pytest.mark.parametrize("case", ["empty folder", "only bad files", "k too large", "corrupt checkpoint"])
def test_bad_requests_fail_cleanly_and_change_nothing(built_copy, tmp_path, case):
    from prefect.settings import PREFECT_API_URL

    env = {"PREFECT_API_URL": PREFECT_API_URL.value()}
    before = snapshot(built_copy.root)
    if case == "empty folder":
        (tmp_path / "empty").mkdir()
        proc, message = run_cli("index", tmp_path / "empty", "--workdir", built_copy.root, "--replace", env=env, check=False), "no files in"
    elif case == "only bad files":
        write_hostile(tmp_path / "bad", tmp_path / "outside")
        for p in (tmp_path / "bad" / "odd").rglob("*"):
            p.unlink()
        shutil.rmtree(tmp_path / "bad" / "names")
        (tmp_path / "bad" / "links" / "inside.png").unlink()
        (tmp_path / "bad" / "bad" / "no-permission.png").unlink()  # root could read it
        proc, message = run_cli("index", tmp_path / "bad", "--workdir", built_copy.root, "--replace", env=env, check=False), "no usable images"
    elif case == "k too large":
        proc, message = run_cli("query", built_copy.root, "--all", "-k", "100000", env=env, check=False), "use -k"
    else:
        (tmp_path / "model.pt").write_bytes(b"PK\x03\x04 not really a zip")
        write_fmnist(tmp_path / "imgs", n=5)
        proc, message = run_cli("index", tmp_path / "imgs", "--workdir", built_copy.root, "--replace", "--model", tmp_path / "model.pt", env=env, check=False), "corrupt"
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr + proc.stdout
    assert snapshot(built_copy.root) == before


def test_query_with_a_model_of_another_dimension_is_refused(built_copy, fmnist_dir):
    collection = json.loads(built_copy.collection.read_text())
    save_checkpoint(VAE(VAEConfig(latent_dim=16)), built_copy.model_file(collection["model_id"]))
    queries = sorted(fmnist_dir.rglob("*.png"))[0].parent
    with pytest.raises(VaepipeError, match="dimension 16 but the index has 32.*rebuild"):
        query_folder(built_copy, queries, k=3, cfg=SERIAL)


def test_damaged_embedding_part_is_set_aside_and_rebuilt(built_copy, fmnist_dir):
    mid = json.loads(built_copy.collection.read_text())["model_id"]
    emb_dir = built_copy.embeddings_dir(mid)
    ids_before, vectors_before = load_vectors(emb_dir, built_copy.manifest)
    part = sorted(emb_dir.glob("part-*.parquet"))[0]
    n_rows = pq.read_metadata(part).num_rows
    part.write_bytes(part.read_bytes()[:100])  # as after a full disk
    result = embed(fmnist_dir, built_copy.manifest, built_copy.model_dir(mid), emb_dir, SERIAL)
    assert result.quarantined == [emb_dir / "_damaged" / part.name]
    assert pq.read_table(emb_dir).num_rows == len(ids_before)  # the folder reads whole as a dataset again
    assert result.n_embedded == n_rows
    ids_after, vectors_after = load_vectors(emb_dir, built_copy.manifest)
    assert ids_after.equals(ids_before) and abs(vectors_after - vectors_before).max() < 1e-4
    build_index(emb_dir, built_copy.manifest, built_copy.index_dir(mid), mid)


def test_a_part_of_another_shape_is_set_aside_before_any_of_its_rows_counts(tmp_path):
    import numpy as np
    import pyarrow as pa

    def part(dim: int, shas: list[str]) -> pa.Table:
        vectors = pa.array(np.zeros(len(shas) * dim, np.float32))
        return pa.table({"path": [f"{s}.png" for s in shas], "sha256": shas, "model_id": ["m"] * len(shas),
                         "embedding": pa.FixedSizeListArray.from_arrays(vectors, dim)}, schema=embedding_schema(dim))

    shas = [f"{i:032x}" * 2 for i in range(4)]
    pq.write_table(part(8, shas[:2]), tmp_path / "part-00000.parquet")
    pq.write_table(part(16, shas[2:]), tmp_path / "part-00001.parquet")  # another model's width
    with pytest.raises(ValueError, match="not the expected"):
        list(checked_row_groups(tmp_path / "part-00001.parquet", embedding_schema(8)))
    done, quarantined = embedded_contents(tmp_path, 8)
    assert quarantined == [tmp_path / "_damaged" / "part-00001.parquet"]
    assert done.has(content_keys(pa.array(shas))).tolist() == [True, True, False, False]


def test_damaged_manifest_and_collection_file_are_reported(built_copy, fmnist_dir, caplog):
    built_copy.manifest.write_bytes(b"PAR1 garbage")
    result = ingest(fmnist_dir, built_copy.manifest, IngestConfig(workers=1))
    assert result.n_reused == 0 and result.n_ok == 600 and "unreadable" in caplog.text
    built_copy.collection.write_text("{not json")
    with pytest.raises(VaepipeError, match="run `vaepipe index` again"):
        built_copy.read_collection()


@pytest.mark.parametrize("damage", [b"", b'{"kind": "flat", "n": 3', b"[1, 2]", b'{"kind": "flat"}'])
def test_a_damaged_index_json_is_one_line_that_says_rebuild(built_copy, damage):
    from vaepipe.index import SearchIndex
    from vaepipe.query import preflight

    index_dir = built_copy.index_dir(json.loads(built_copy.collection.read_text())["model_id"])
    (index_dir / "index.json").write_bytes(damage)
    for call in (lambda: SearchIndex.open(index_dir), lambda: preflight(built_copy, 3, exclude_self=True)):
        with pytest.raises(VaepipeError, match="rebuild with `vaepipe index`"):
            call()


def test_a_damaged_model_config_json_does_not_cost_the_model(built_copy, caplog):
    """The checkpoint holds what the model needs; its config.json beside it is a record. A re-index reuses the
    intact model rather than training a new one."""
    from vaepipe.config import TrainConfig
    from vaepipe.model_dir import reusable_model

    mid = json.loads(built_copy.collection.read_text())["model_id"]
    (built_copy.model_dir(mid) / "config.json").write_bytes(b"")
    reused = reusable_model(built_copy, 600, TrainConfig())
    assert reused is not None and reused.model_id == mid and "unreadable" in caplog.text


@pytest.mark.usefixtures("prefect_server")
def test_quiet_prints_no_decoder_warnings_on_a_hostile_folder(built, tmp_path):
    """Under --quiet (cron) only warnings a user can act on are printed: none of Pillow's about odd files."""
    from prefect.settings import PREFECT_API_URL

    write_hostile(tmp_path / "root", tmp_path / "outside")
    write_fmnist(tmp_path / "root" / "good", n=30)
    model = built.model_dir(json.loads(built.collection.read_text())["model_id"]) / "model.pt"
    env = {"PREFECT_API_URL": PREFECT_API_URL.value()}
    outputs = [run_cli("--quiet", "index", tmp_path / "root", "--workdir", tmp_path / "wd", "--model", model,
                       "--channels", "1", "--image-size", "28", env=env, check=False),
               run_cli("--quiet", "query", tmp_path / "wd", "--all", "-k", "3", env=env, check=False),
               run_cli("--quiet", "sample", tmp_path / "wd", "-n", "4", env=env, check=False)]
    for proc in outputs:
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == "" and "Warning" not in proc.stderr and "PIL" not in proc.stderr, proc.stderr
