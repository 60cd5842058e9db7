"""Seeing one image through edited views of another (vaepipe.views), on real files with a real (untrained) model:
the duplicate groups' check of close pairs, and search's second look at a shortlist."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import flat_index
from vaepipe.duplicates import candidate_pairs, view_checked_pairs
from vaepipe.embeddings import Embedded
from vaepipe.images import load_array
from vaepipe.model import VAE, VAEConfig
from vaepipe.store import sha256_file
from vaepipe.images import VIEWS
from vaepipe.views import ViewCache, collection_views, rerank


@pytest.fixture
def pictures(tmp_path) -> dict:
    """Six random block pictures in a collection folder, and outside it a copy of the first with a dark band over
    its bottom eighth: one picture in the "top" view (the top 85 %), another as stored. A model trained for copies
    (invariance > 0), untrained: what it makes of an image is a fixed function of the pixels."""
    rng = np.random.default_rng(0)
    images = tmp_path / "images"
    images.mkdir()
    blocks = [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1) for _ in range(6)]
    names = [f"p{i}.png" for i in range(len(blocks))]
    for name, pic in zip(names, blocks):
        Image.fromarray(pic).save(images / name)
    banded = blocks[0].copy()
    banded[56:] = (20, 20, 20)
    torch.manual_seed(0)
    model = VAE(VAEConfig(image_size=32, channels=3, latent_dim=8, invariance=0.03, background=255)).eval()
    return {"images": images, "names": names, "blocks": blocks, "banded": banded, "model": model}


def _embed(model: VAE, files: list[Path]) -> np.ndarray:
    with torch.no_grad():
        x = torch.stack([torch.from_numpy(load_array(f, model.config.spec)) for f in files]).float() / 255
        return model.embed(x).numpy()


def test_edited_views_pair_a_copy_and_leave_a_file_changed_since_indexing_alone(pictures):
    """view_checked_pairs: the banded copy inside the collection pairs with its original through the "top" view;
    once it is replaced by another picture after indexing, its stored code no longer says what the file holds, and
    it is not checked (nor paired) through views."""
    images, model = pictures["images"], pictures["model"]
    Image.fromarray(pictures["banded"]).save(images / "p6.png")
    names = pictures["names"] + ["p6.png"]
    index = flat_index(_embed(model, [images / n for n in names]), names, [sha256_file(images / n) for n in names])

    def pairs() -> set[tuple[str, str]]:
        a, b = view_checked_pairs(index, candidate_pairs(index, model, images), threshold=0.999)
        return {(names[i], names[j]) for i, j in zip(a, b)}

    assert ("p0.png", "p6.png") in pairs()
    Image.fromarray(pictures["blocks"][3]).save(images / "p6.png")  # p6 now holds another picture: its code is stale
    assert not any("p6.png" in pair for pair in pairs())
    for name in names:  # every file gone: nothing to check, nothing paired, no error
        (images / name).unlink()
    assert pairs() == set()


def test_rerank_brings_the_original_seen_through_a_view_to_the_top(pictures, tmp_path):
    """A query outside the collection (the banded copy) whose shortlist puts another picture first: seen through
    the views, its original comes first, at a similarity near 1; a file gone since indexing keeps its similarity
    as stored, and so does everything for a query whose file cannot be read now."""
    images, model, names = pictures["images"], pictures["model"], pictures["names"]
    index = flat_index(_embed(model, [images / n for n in names]), names, [sha256_file(images / n) for n in names])
    query = tmp_path / "query.png"
    Image.fromarray(pictures["banded"]).save(query)
    queries = Embedded(_embed(model, [query]))
    # The shortlist as a search might have given it: p3 first, the original p0 second, then p5; -1: nothing more.
    shortlist, similarity = np.array([[3, 0, 5, -1]]), np.array([[0.9, 0.5, 0.4, 0.0]], np.float32)

    rows, sim = rerank(index, model, images, [query], queries, shortlist, similarity)
    assert rows[0, 0] == 0 and sim[0, 0] > 0.99, (rows, sim)
    assert sorted(rows[0, :3]) == [0, 3, 5] and rows[0, 3] == -1  # the same neighbours; nothing found stays last
    assert (np.diff(sim[0, :3]) <= 0).all()  # in order of the similarity given
    assert sim[0, list(rows[0]).index(3)] >= 0.9  # never less alike than as stored

    (images / "p0.png").unlink()  # the original gone since indexing: not looked at through views
    rows, sim = rerank(index, model, images, [query], queries, shortlist, similarity)
    assert rows[0, 0] != 0 and sim[0, list(rows[0]).index(0)] == pytest.approx(0.5)

    query.unlink()  # the query unreadable now: the shortlist as it was
    rows, sim = rerank(index, model, images, [query], queries, shortlist, similarity)
    assert rows.tolist() == shortlist.tolist() and np.allclose(sim, similarity)


def _by_row(rows: np.ndarray, views: Embedded) -> dict[int, np.ndarray]:
    n = len(VIEWS)
    return {int(r): np.concatenate([views.embedding[i * n:(i + 1) * n], views.grey_embedding[i * n:(i + 1) * n]])
            for i, r in enumerate(rows)}


def test_views_are_kept_by_content_and_a_damaged_cache_only_costs_time(pictures, tmp_path, caplog):
    """collection_views with a ViewCache: the second look needs no file (they are all moved away), and gives the
    same views; a cache part that cannot be read is said in the log and the views are computed again."""
    images, model, names = pictures["images"], pictures["model"], pictures["names"]
    index = flat_index(_embed(model, [images / n for n in names]), names, [sha256_file(images / n) for n in names])
    cache = ViewCache(tmp_path / "views")
    rows, views = collection_views(index, model, images, np.arange(6), cache)
    first = _by_row(rows, views)
    assert sorted(first) == list(range(6)) and len(list(cache.folder.glob("part-*.parquet"))) == 1

    (images / "away").mkdir()
    for name in names:
        (images / name).rename(images / "away" / name)
    rows, views = collection_views(index, model, images, np.arange(6), cache)
    again = _by_row(rows, views)
    assert sorted(again) == list(range(6)) and all(np.array_equal(first[r], again[r]) for r in first)
    assert collection_views(index, model, images, np.arange(6))[0].size == 0  # without the cache: nothing to load

    for name in names:
        (images / "away" / name).rename(images / name)
    next(cache.folder.glob("part-*.parquet")).write_bytes(b"PAR1 not a parquet file")
    rows, views = collection_views(index, model, images, np.arange(6), cache)
    assert "cache part" in caplog.text
    computed = _by_row(rows, views)
    assert sorted(computed) == list(range(6)) and all(np.allclose(first[r], computed[r], atol=1e-5) for r in first)


def test_a_cache_part_is_written_in_row_groups_and_read_back_a_group_at_a_time(pictures, tmp_path, monkeypatch):
    """A part holds its images in row groups of views.PART_ROWS (one row group of a large folder took several
    times its size to write and to read); images asked for from different row groups come back, and only they."""
    import pyarrow.parquet as pq
    from vaepipe import views as views_module

    monkeypatch.setattr(views_module, "PART_ROWS", 4)
    images, model, names = pictures["images"], pictures["model"], pictures["names"]
    shas = [sha256_file(images / n) for n in names]
    index = flat_index(_embed(model, [images / n for n in names]), names, shas)
    cache = ViewCache(tmp_path / "views")
    rows, views = collection_views(index, model, images, np.arange(6), cache)
    first = _by_row(rows, views)
    part = next(cache.folder.glob("part-*.parquet"))
    assert pq.ParquetFile(part).num_row_groups == 2
    parts = list(cache.get([shas[1], shas[5]], index.dim, grey=True))
    assert len(parts) == 2  # one from each row group
    found = {sha: (views[j], grey[j]) for found_shas, views, grey in parts for j, sha in enumerate(found_shas)}
    assert sorted(found) == sorted([shas[1], shas[5]])
    assert all(np.array_equal(np.concatenate(found[shas[r]]), first[r]) for r in (1, 5))


def test_views_of_a_larger_folder_are_cached_a_part_at_a_time_and_read_back_each_in_its_place(pictures, tmp_path,
                                                                                               monkeypatch):
    """70 pictures (two decode batches of 64): with parts of 4 images a part is written after each batch, not once
    the folder is done; every image's views come back from the cache the same, whatever order the rows are asked in."""
    from vaepipe import views as views_module

    monkeypatch.setattr(views_module, "PART_ROWS", 4)
    rng = np.random.default_rng(1)
    images, model = tmp_path / "many", pictures["model"]
    images.mkdir()
    names = [f"q{i:02d}.png" for i in range(70)]
    for name in names:
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)).save(images / name)
    index = flat_index(_embed(model, [images / n for n in names]), names, [sha256_file(images / n) for n in names])
    cache = ViewCache(tmp_path / "views")
    rows, views = collection_views(index, model, images, np.arange(70), cache)
    first = _by_row(rows, views)
    assert sorted(first) == list(range(70)) and len(list(cache.folder.glob("part-*.parquet"))) == 2
    order = rng.permutation(70)
    rows, views = collection_views(index, model, tmp_path / "moved", order, cache)  # only the cache can answer
    again = _by_row(rows, views)
    assert list(rows) == list(order) and all(np.array_equal(first[r], again[r]) for r in first)
