"""Embeddings are the model's posterior means in Parquet; the FAISS index maps back to the manifest."""

import json
import shutil
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from helpers import SERIAL, clustered_vectors, flat_index, write_fmnist, write_vector_collection
from vaepipe.config import EmbedConfig, IndexConfig, IngestConfig
from vaepipe.embed import embed
from vaepipe.embeddings import plan_shards
from vaepipe.batches import to_float
from vaepipe.images import load_array
from vaepipe.index import SearchIndex, build_index, load_vectors, prepare
from vaepipe.ingest import ingest, read_ok
from vaepipe.model import load_checkpoint
from vaepipe.errors import VaepipeError
from vaepipe.store import embedding_schema


def _mid(wd):
    return json.loads(wd.collection.read_text())["model_id"]


def test_embeddings_are_posterior_means_with_the_documented_schema(built, fmnist_dir):
    mid = _mid(built)
    parts = sorted(built.embeddings_dir(mid).glob("part-*.parquet"))
    table = pa.concat_tables([pq.read_table(p) for p in parts])
    assert table.schema.equals(embedding_schema(32))
    assert table.num_rows == len(set(read_ok(built.manifest)["sha256"].to_pylist()))
    assert set(table["model_id"].to_pylist()) == {mid}
    model = load_checkpoint(built.model_file(mid))
    row = table.slice(7, 1).to_pylist()[0]
    x = to_float(torch.from_numpy(load_array(fmnist_dir / row["path"], model.config.spec))[None])
    with torch.no_grad():
        mu = model.encode(x)[0][0].numpy()
    assert np.allclose(row["embedding"], mu, atol=1e-4)
    # plain pandas reads it, with one vector per row
    df = pq.read_table(parts[0]).to_pandas()
    assert len(df.iloc[0]["embedding"]) == 32


def test_embedding_again_only_embeds_what_is_new(built_copy, fmnist_dir):
    mid = _mid(built_copy)
    result = embed(fmnist_dir, built_copy.manifest, built_copy.model_dir(mid), built_copy.embeddings_dir(mid), SERIAL)
    assert result.n_embedded == 0 and result.n_reused > 0


def test_index_maps_rows_to_manifest_and_records_what_it_is(built):
    mid = _mid(built)
    d = built.index_dir(mid)
    meta = json.loads((d / "index.json").read_text())
    assert meta["kind"] == "flat" and meta["metric"] == "cosine" and meta["recall_at_10"] == 1.0
    assert meta["model_id"] == mid and meta["dim"] == 32
    ids = pq.read_table(d / "ids.parquet")
    manifest_ok = read_ok(built.manifest)
    assert ids.num_rows == meta["n"] == manifest_ok.num_rows
    assert set(zip(ids["path"].to_pylist(), ids["sha256"].to_pylist())) == set(
        zip(manifest_ok["path"].to_pylist(), manifest_ok["sha256"].to_pylist()))
    index = faiss.read_index(str(d / "index.faiss"))  # plain FAISS opens it
    assert index.ntotal == meta["n"]


def test_cosine_search_matches_brute_force(built):
    mid = _mid(built)
    ids, vectors = load_vectors(built.embeddings_dir(mid), built.manifest)
    index = SearchIndex.open(built.index_dir(mid))
    rows, dist, sim = index.search(vectors[:20], 5)
    centred = vectors - vectors.mean(0)
    unit = centred / np.linalg.norm(centred, axis=1, keepdims=True)
    cos = unit[:20] @ unit.T
    assert np.array_equal(rows[:, 0], np.arange(20))  # each vector's nearest is itself
    assert np.allclose(sim, np.sort(cos, axis=1)[:, ::-1][:, :5], atol=1e-4)
    assert np.allclose(dist, 1 - sim)


@pytest.mark.parametrize("kind", ["hnsw", "ivf", "ivf-disk"])
def test_approximate_index_reaches_target_recall(tmp_path, kind):
    vectors = clustered_vectors()
    parts, manifest = write_vector_collection(tmp_path, vectors, n_parts=4 if kind == "ivf-disk" else 1)
    result = build_index(parts, manifest, tmp_path / "index", "m", IndexConfig(kind=kind, target_recall=0.95))
    assert result.kind == kind and result.recall_at_10 >= 0.95 and result.n == len(vectors)
    # re-measure independently through the opened index
    index = SearchIndex.open(tmp_path / "index")
    q = vectors[:300]
    rows, _, _ = index.search(q, 10)
    rows = np.array([int(p[:-4]) for p in index.ids["path"].to_pylist()])[rows]  # index rows -> our numbering
    x = prepare(vectors, "cosine", vectors.mean(0))
    exact = np.argsort(-(x[:300] @ x.T), axis=1)[:, :10]
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(rows.tolist(), exact.tolist())])
    assert recall >= 0.9
    # memory-mapped (the default) and read into RAM answer the same
    in_ram = SearchIndex.open(tmp_path / "index", mmap=False)
    assert np.array_equal(in_ram.search(q, 10)[0], index.search(q, 10)[0])
    assert np.array_equal(in_ram.stored_vectors(np.arange(50)), index.stored_vectors(np.arange(50)))
    # auto picks exact below the threshold, HNSW above, IVF on disk above that
    assert build_index(parts, manifest, tmp_path / "i2", "m", IndexConfig(exact_below=10_000)).kind == "flat"
    assert build_index(parts, manifest, tmp_path / "i3", "m", IndexConfig(exact_below=1_000)).kind == "hnsw"
    assert build_index(parts, manifest, tmp_path / "i4", "m", IndexConfig(exact_below=1_000, in_ram_below=5_000)).kind == "ivf-disk"


def test_index_built_part_by_part_on_disk_holds_every_row_and_survives_a_rebuild(tmp_path):
    vectors = clustered_vectors(n=5000)
    parts, manifest = write_vector_collection(tmp_path, vectors, n_parts=5)
    cfg = IndexConfig(kind="ivf-disk")
    build_index(parts, manifest, tmp_path / "index", "m", cfg)
    first_lists = sorted((tmp_path / "index").glob("lists-*.ivfdata"))
    assert len(first_lists) == 1 and not list((tmp_path / "index").glob(".blocks-*"))  # block files cleaned up
    index = SearchIndex.open(tmp_path / "index")
    # every row is stored once, as the in-RAM path stores it
    _, in_ram = load_vectors(parts, manifest)
    assert index.index.ntotal == len(vectors)
    assert np.allclose(index.stored_vectors(np.arange(len(vectors))), prepare(in_ram, "cosine", in_ram.mean(0)), atol=1e-5)
    # an open search keeps working while a rebuild replaces the lists file, and the rebuild cleans up the old one
    before = index.search(vectors[:50], 10)[0]
    build_index(parts, manifest, tmp_path / "index", "m", cfg)
    assert sorted((tmp_path / "index").glob("lists-*.ivfdata")) != first_lists
    assert len(list((tmp_path / "index").glob("lists-*.ivfdata"))) == 1
    assert np.array_equal(index.search(vectors[:50], 10)[0], before)
    # the index can be moved: its lists file is found beside it
    (tmp_path / "index").rename(tmp_path / "moved")
    assert np.array_equal(SearchIndex.open(tmp_path / "moved").search(vectors[:50], 10)[0], before)


def test_a_published_index_is_one_unit_that_a_rebuild_switches_whole(tmp_path):
    """index.faiss, ids.parquet and index.json of one build are read together: a rebuild (finished, killed, or
    running while a search opens the index) never pairs one build's index with another's ids."""
    import os

    vectors = clustered_vectors(n=600)
    parts, manifest = write_vector_collection(tmp_path, vectors)
    index_dir = tmp_path / "index"
    (index_dir).mkdir()  # an index from before versions: a plain folder, replaced by the first build
    (index_dir / "index.json").write_text("{}")
    build_index(parts, manifest, index_dir, "m", IndexConfig(kind="flat"))
    assert index_dir.is_symlink() and not list(tmp_path.glob(".index-unversioned-*"))
    old = SearchIndex.open(index_dir)
    before = old.search(vectors[:20], 5)[0]

    # A rebuild over other images: the open index keeps answering from its own files, a new open sees the new ones.
    other = tmp_path / "other"
    other.mkdir()
    parts2, manifest2 = write_vector_collection(other, vectors[::-1][:400])
    build_index(parts2, manifest2, index_dir, "m", IndexConfig(kind="flat"))
    assert np.array_equal(old.search(vectors[:20], 5)[0], before) and old.meta["n"] == 600
    assert SearchIndex.open(index_dir).meta["n"] == 400

    # A killed build leaves a half-written version: not seen by searches, removed by the next publish.
    killed = tmp_path / ".index-19990101000000-dead00"
    killed.mkdir()
    (killed / "index.faiss").write_bytes(b"half")
    assert SearchIndex.open(index_dir).meta["n"] == 400
    build_index(parts, manifest, index_dir, "m", IndexConfig(kind="flat"))
    versions = sorted(p.name for p in tmp_path.glob(".index-*"))
    assert not killed.exists() and len(versions) == 2  # the published one and the one before it
    assert os.readlink(index_dir) in versions and SearchIndex.open(index_dir).meta["n"] == 600


def test_opening_an_index_built_in_place_prints_nothing(tmp_path, capfd):
    parts, manifest = write_vector_collection(tmp_path, clustered_vectors(n=3000), n_parts=3)
    build_index(parts, manifest, tmp_path / "index", "m", IndexConfig(kind="ivf-disk"))
    capfd.readouterr()
    SearchIndex.open(tmp_path / "index").search(clustered_vectors(n=3000)[:5], 3)
    assert capfd.readouterr().out == ""  # stdout is the CLI's: FAISS's note on relocated lists stays out of it


def test_damaged_index_is_refused(built_copy):
    d = built_copy.index_dir(_mid(built_copy))
    data = (d / "index.faiss").read_bytes()
    (d / "index.faiss").write_bytes(data[: len(data) // 3])
    with pytest.raises(VaepipeError, match="rebuild"):
        SearchIndex.open(d)
    (d / "index.json").unlink()
    with pytest.raises(VaepipeError, match="index.json missing"):
        SearchIndex.open(d)


def test_encoding_in_the_decoding_workers_gives_this_process_s_means_and_restores_torch_threads(built, fmnist_dir, tmp_path):
    import torch

    from vaepipe.embed import encode_files, encoder_threads

    before = torch.get_num_threads()
    with encoder_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    mid = json.loads(built.collection.read_text())["model_id"]
    model = load_checkpoint(built.model_file(mid))
    (tmp_path / "bad.png").write_text("not an image")
    paths = sorted(Path(fmnist_dir).rglob("*.png"))[:300]
    paths.insert(77, tmp_path / "bad.png")

    def means(workers: int) -> tuple[list[int], np.ndarray, list[int]]:
        done = list(encode_files(model, paths, batch_size=128, workers=workers))
        return ([i for idx, _, _ in done for i in idx], np.concatenate([e.embedding for _, e, _ in done]),
                [i for _, _, failed in done for i, _ in failed])

    in_workers, here = means(2), means(0)
    assert in_workers[0] == here[0] == [i for i in range(len(paths)) if i != 77]
    assert in_workers[2] == here[2] == [77]
    np.testing.assert_allclose(in_workers[1], here[1], rtol=0, atol=1e-5)
    assert torch.get_num_threads() == before


def test_planning_embeds_each_content_once_across_manifest_row_groups(built_copy, tmp_path):
    mid = _mid(built_copy)
    images, manifest, emb = tmp_path / "imgs", tmp_path / "m.parquet", tmp_path / "emb"
    paths = write_fmnist(images, n=12)
    for p in paths[:4]:  # copies that sort after every original: their first copy is in an earlier row group
        shutil.copy(p, images / f"zz-copy-{p.name}")
    ingest(images, manifest, IngestConfig(workers=1, checkpoint_every=3))
    assert pq.ParquetFile(manifest).num_row_groups == 6
    rows = read_ok(manifest).to_pylist()
    first_of_each = [r["path"] for i, r in enumerate(rows) if r["sha256"] not in {s["sha256"] for s in rows[:i]}]
    assert len(first_of_each) == 12

    plan = plan_shards(manifest, emb, 32, shard_rows=5)
    planned = pq.read_table(plan.plan)
    assert planned["path"].to_pylist() == first_of_each and plan.n_done == 0
    assert plan.numbers == [0, 1, 2] and planned["shard"].to_pylist() == [i // 5 for i in range(12)]

    assert embed(images, manifest, built_copy.model_dir(mid), emb, EmbedConfig(workers=0, part_rows=5)).n_embedded == 12
    shutil.copy(paths[5], images / "zz-copy-again.png")  # a content embedded already, under a new name
    new = write_fmnist(images, start=50, n=1)[0]
    ingest(images, manifest, IngestConfig(workers=1, checkpoint_every=3))
    plan = plan_shards(manifest, emb, 32, shard_rows=5)
    assert pq.read_table(plan.plan)["path"].to_pylist() == [new.relative_to(images).as_posix()]
    assert plan.numbers == [3] and plan.n_done == 12


def test_contents_answers_like_a_set_across_many_small_batches():
    import hashlib

    from vaepipe.embeddings import Contents, content_keys

    rng = np.random.default_rng(0)
    shas = [hashlib.sha256(bytes([i % 251, i // 251])).hexdigest() for i in range(3_000)]
    contents, seen = Contents(), set()
    for _ in range(60):  # batches of 1-200 with repeats inside and across them: runs get merged many times
        batch = [shas[i] for i in rng.integers(0, len(shas), rng.integers(1, 200))]
        keys = content_keys(pa.array(batch))
        assert contents.has(keys).tolist() == [s in seen for s in batch]
        contents.add(keys)
        seen.update(batch)
        assert len(contents) == len(seen)
    assert len(contents.runs) < 12 and all((run[1:] > run[:-1]).all() for run in contents.runs)  # sorted, no repeats


def test_workers_default_to_one_per_core_this_process_may_use():
    import os
    import subprocess
    import sys

    code = "from vaepipe.config import EmbedConfig, IngestConfig; print(EmbedConfig().workers, IngestConfig().workers)"
    one_core = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                              preexec_fn=lambda: os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}))
    assert one_core.stdout.split() == ["1", "1"]
    from vaepipe.config import EmbedConfig, IngestConfig

    assert EmbedConfig().workers == IngestConfig().workers == len(os.sched_getaffinity(0))


def test_batches_for_a_gpu_grow_for_small_images_while_every_worker_gets_four():
    from vaepipe.embed import gpu_batch_size
    from vaepipe.images import ImageSpec

    grey28, colour64 = ImageSpec(28, 1), ImageSpec(64, 3)
    assert gpu_batch_size(256, colour64, 1_000_000, 16) == 256  # photos: 3 MB a batch already
    assert gpu_batch_size(256, grey28, 1_000_000, 16) == 1024  # at most 4x the configured batch
    part = gpu_batch_size(256, grey28, 50_000, 16)
    assert 256 < part < 1024 and 50_000 // part >= 4 * 16  # grown, but still 4 batches for each of 16 workers
    assert gpu_batch_size(256, grey28, 10_000, 16) == 256  # never below the configured batch


def test_embeddings_carry_the_weights_own_model_id_whatever_the_folder_is_called(built_copy, tmp_path):
    mid = _mid(built_copy)
    renamed = tmp_path / "a-copy-of-the-model"
    shutil.copytree(built_copy.model_dir(mid), renamed)
    images, manifest, emb = tmp_path / "imgs", tmp_path / "m.parquet", tmp_path / "emb"
    write_fmnist(images, n=6)
    ingest(images, manifest, IngestConfig(workers=1))
    result = embed(images, manifest, renamed, emb, EmbedConfig(workers=0))
    ids = set(pq.read_table(sorted(emb.glob("part-*.parquet"))[0], columns=["model_id"])["model_id"].to_pylist())
    assert result.model_id == mid and ids == {mid}


def test_contents_number_the_rows_by_their_files_content_in_sha256_order_however_the_ids_are_chunked():
    """Byte-identical files (one sha256) share a number; numbers run from 0 in sha256 order, as np.unique's would."""
    shas = ["c" * 64, "a" * 64, "c" * 64, "b" * 64, "a" * 64, "d" * 64]
    index = flat_index(np.eye(6), [f"{i}.png" for i in range(6)], shas)
    assert index.contents.tolist() == np.unique(shas, return_inverse=True)[1].tolist() == [2, 0, 2, 1, 0, 3]
    chunked = pa.concat_tables([index.ids.slice(0, 2), index.ids.slice(2)])
    assert chunked["sha256"].num_chunks == 2
    assert SearchIndex(index.index, chunked, index.meta).contents.tolist() == index.contents.tolist()
