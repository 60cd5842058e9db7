"""Greyscale copies of colour pictures: each colour image is also embedded as its grey rendering, and a greyscale
query searches those renderings, where its original looks as it does (a colour model only).

Real photographs (the MATE wallpapers) and a real transparent icon (Tango); a small colour model trained for a few
seconds: a greyscale copy and its original's grey rendering are the same picture, so even a little-trained encoder
gives them the same code.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from helpers import SERIAL

from vaepipe.build import build
from vaepipe.config import BuildConfig, IndexConfig, TrainConfig
from vaepipe.embed import PosteriorMean
from vaepipe.embeddings import Embedded
from vaepipe.images import ImageSpec, grey_rendering, load_batch, open_image
from vaepipe.index import SearchIndex, build_index
from vaepipe.model import load_checkpoint
from vaepipe.query import find_duplicates, query_all, search_files
from vaepipe.store import Workdir, embedding_schema

# One file per picture: Elephants_3840x2160.jpg is Elephants.jpg at another size.
MATE = [p for p in sorted(Path("/usr/share/backgrounds/mate").rglob("*.jpg")) if "_" not in p.stem]
ICON = next(iter(sorted(Path("/usr/share/icons/Tango/32x32/apps").glob("*.png"))), None)
SPEC = ImageSpec(64, 3)
QUICK = BuildConfig(train=TrainConfig(epochs=30, batch_size=16, seed=0), embed=SERIAL, index=IndexConfig(kind="flat"))


def _tiles(dest: Path, n_sources: int = 12) -> list[Path]:
    """Four 128 px tiles from each of the first wallpapers, as JPEGs."""
    out = []
    for i, src in enumerate(MATE[:n_sources]):
        img = open_image(src, 10**9).convert("RGB")
        img.thumbnail((512, 512))
        w, h = img.size
        for j, (x, y) in enumerate([(0, 0), (w - 128, 0), (0, h - 128), (w - 128, h - 128)]):
            out.append(dest / f"w{i:02d}-{j}.jpg")
            out[-1].parent.mkdir(parents=True, exist_ok=True)
            img.crop((x, y, x + 128, y + 128)).save(out[-1], quality=90)
    return out


@pytest.fixture(scope="module")
def colour(tmp_path_factory) -> dict:
    """A built colour collection: photo tiles with greyscale copies of two of them inside it, and greyscale copies
    of others as outside queries (one saved as an RGB JPEG: its channels differ by JPEG's chroma noise)."""
    base = tmp_path_factory.mktemp("grey")
    tiles = _tiles(base / "collection")
    inside = {}
    for src in tiles[:2]:
        copy = src.with_name(src.stem + "-grey.jpg")
        Image.open(src).convert("L").save(copy, quality=85)
        inside[copy.name] = src.name
    queries = {}
    for i, src in enumerate(tiles[10:40:5]):
        q = base / "queries" / f"q{i}.jpg"
        q.parent.mkdir(exist_ok=True)
        grey = Image.open(src).convert("L")
        (grey.convert("RGB") if i == 0 else grey).save(q, quality=80)
        queries[q] = src.name
    wd = Workdir(base / "work")
    build(base / "collection", wd, QUICK)
    return {"wd": wd, "inside": inside, "queries": queries, "tiles": tiles, "base": base}


def test_a_grey_rendering_is_the_array_a_greyscale_copy_becomes(tmp_path):
    """Fitted on its own: the general path (a JPEG, an RGBA icon) and the path for PNGs already at the input size."""
    photo, small = tmp_path / "photo.png", tmp_path / "small.png"
    open_image(MATE[0], 10**9).convert("RGB").resize((200, 150)).save(photo)
    open_image(MATE[1], 10**9).convert("RGB").resize((64, 64)).save(small)  # decoded straight into the batch
    sources = [photo, ICON, small, tmp_path / "grey.png"]
    open_image(MATE[2], 10**9).convert("L").resize((90, 70)).save(sources[-1])
    copies = []
    for src in sources:
        copies.append(tmp_path / f"grey-{len(copies)}.png")
        grey_rendering(Image.open(src)).save(copies[-1])
    both, errors = load_batch(sources, SPEC, grey=True)
    assert both.shape == (4, 2, 3, 64, 64) and errors == [""] * 4
    assert np.array_equal(both[:, 0], load_batch(sources, SPEC)[0])  # the images as without renderings
    assert np.array_equal(both[:, 1], load_batch(copies, SPEC)[0])
    assert (both[:, 1, 0] == both[:, 1, 2]).all() and not (both[:3, 0, 0] == both[:3, 0, 2]).all()
    assert np.array_equal(both[3, 0], both[3, 1])  # a grey file is its own grey rendering


def test_the_encoder_tells_greyscale_images_by_their_pixels(colour, tmp_path):
    model = load_checkpoint(colour["wd"].model_file(colour["wd"].read_collection()["model_id"]))
    photo = colour["tiles"][0]
    files = [photo, photo.with_name(photo.stem + "-grey.jpg"), next(iter(colour["queries"]))]
    pixels, _ = load_batch(files, model.config.spec, grey=True)
    embedded = PosteriorMean(model)(torch.from_numpy(pixels))
    assert embedded.greyscale.tolist() == [False, True, True]  # the last: an RGB JPEG of a grey picture
    # A greyscale image is its own grey rendering: one code in both spaces.
    np.testing.assert_allclose(embedded.grey_embedding[1:], embedded.embedding[1:], atol=1e-4)
    assert np.abs(embedded.grey_embedding[0] - embedded.embedding[0]).max() > 1e-3


def test_a_colour_collection_stores_and_indexes_both_renderings(colour):
    wd = colour["wd"]
    mid = wd.read_collection()["model_id"]
    part = pq.read_table(sorted(wd.embeddings_dir(mid).glob("part-*.parquet"))[0])
    assert part.schema.equals(embedding_schema(32, grey=True), check_metadata=False)
    index = SearchIndex.open(wd.index_dir(mid))
    assert index.grey is not None and (wd.index_dir(mid) / "grey.faiss").exists()
    flags = dict(zip(index.ids["path"].to_pylist(), index.ids["greyscale"].to_pylist()))
    assert all(flags[c] for c in colour["inside"]) and not any(flags[o] for o in colour["inside"].values())
    meta = json.loads((wd.index_dir(mid) / "index.json").read_text())
    assert meta["grey"]["recall_at_10"] == 1.0 and len(meta["grey"]["centre"]) == 32


def test_greyscale_copies_find_their_colour_originals(colour):
    wd = colour["wd"]
    found = search_files(wd, list(colour["queries"]), k=3).to_pandas()
    hits = found[found["neighbour_path"] == found["query_path"].map({str(q): o for q, o in colour["queries"].items()})]
    # Every original among the first three, at a copy's similarity; first but for one whose wallpaper's other tiles
    # look much like it to a model trained for seconds.
    assert len(hits) == len(colour["queries"]) and (hits["similarity"] > 0.97).all(), found
    assert (hits["rank"] == 1).sum() >= len(colour["queries"]) - 1, found
    found = found[found["rank"] == 1]
    # In the images' space alone the same queries do not all find them (the colour the copy lost counts there).
    index = SearchIndex.open(wd.index_dir(wd.read_collection()["model_id"]))
    model = load_checkpoint(wd.model_file(wd.read_collection()["model_id"]))
    pixels, _ = load_batch(list(colour["queries"]), model.config.spec, grey=True)
    embedded = PosteriorMean(model)(torch.from_numpy(pixels))
    _, _, sim_images = index.search(embedded.embedding, 1)
    assert sim_images.mean() < found["similarity"].mean()


def test_greyscale_copies_inside_the_collection_are_grouped_with_their_originals(colour):
    wd = colour["wd"]
    groups = find_duplicates(wd).to_pandas()
    group_of = dict(zip(groups["path"], groups["group"]))
    for copy, original in colour["inside"].items():
        assert copy in group_of and group_of[copy] == group_of.get(original), groups
    neighbours = query_all(wd, k=1).neighbours
    first = pq.read_table(neighbours).to_pandas().set_index("query_path")["neighbour_path"]
    assert all(first[c] == o for c, o in colour["inside"].items())


def test_parts_written_without_grey_renderings_are_embedded_again(colour, tmp_path):
    wd = Workdir(tmp_path / "work")
    shutil.copytree(colour["wd"].root, wd.root, symlinks=True)
    mid = wd.read_collection()["model_id"]
    part = sorted(wd.embeddings_dir(mid).glob("part-*.parquet"))[0]
    old = pq.read_table(part).select(["path", "sha256", "model_id", "embedding"])
    pq.write_table(old, part)  # as an earlier vaepipe wrote it
    result = build(colour["base"] / "collection", wd, QUICK)
    assert (wd.embeddings_dir(mid) / "_outdated" / part.name).exists()
    assert result.embedded.n_embedded == old.num_rows
    assert result.summary()["parts set aside (damaged or outdated)"] == 1
    assert SearchIndex.open(wd.index_dir(mid)).grey is not None


def test_a_plain_search_of_vectors_is_the_images_space(colour):
    index = SearchIndex.open(colour["wd"].index_dir(colour["wd"].read_collection()["model_id"]))
    stored = index.stored(np.arange(5))
    as_images = Embedded(stored.embedding, stored.grey_embedding, np.zeros(5, bool))
    assert np.array_equal(index.search(stored.embedding, 3, prepared=True)[0], index.search(as_images, 3, prepared=True)[0])
    as_grey = replace(as_images, greyscale=np.ones(5, bool))
    assert np.array_equal(index.search(as_grey, 3, prepared=True)[0],
                          index.grey.search(np.ascontiguousarray(stored.grey_embedding), 3)[1])


def test_pair_similarity_is_each_pairs_inner_product_in_its_space_whatever_the_block(colour, monkeypatch):
    """Every pair of the collection, gathered three pairs at a time: each pair's similarity is the inner product of
    its stored vectors, in the grey renderings' space where either image is greyscale (two are, inside)."""
    index = SearchIndex.open(colour["wd"].index_dir(colour["wd"].read_collection()["model_id"]))
    n = index.meta["n"]
    a, b = np.triu_indices(n, 1)
    stored = index.stored(np.arange(n))
    grey = stored.greyscale[a] | stored.greyscale[b]
    assert grey.any() and not grey.all()
    space = np.where(grey[:, None], stored.grey_embedding[a] * stored.grey_embedding[b],
                     stored.embedding[a] * stored.embedding[b])
    monkeypatch.setattr("vaepipe.index.PAIR_BLOCK", 3)
    np.testing.assert_allclose(index.pair_similarity(a, b), space.sum(1), rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", ["hnsw", "ivf", "ivf-disk"])
def test_every_index_kind_has_the_grey_space(colour, kind, tmp_path):
    wd = colour["wd"]
    mid = wd.read_collection()["model_id"]
    build_index(wd.embeddings_dir(mid), wd.manifest, tmp_path / kind, mid, IndexConfig(kind=kind))
    index, flat = SearchIndex.open(tmp_path / kind), SearchIndex.open(wd.index_dir(mid))
    assert index.grey is not None and index.grey.ntotal == flat.grey.ntotal
    queries = flat.stored(np.arange(flat.meta["n"]))
    queries.greyscale[:] = True  # every row searched in the grey space
    assert (index.search(queries, 1, prepared=True)[0] == flat.search(queries, 1, prepared=True)[0]).mean() > 0.9
