"""Seeing one image through edited views of another (images.VIEWS), for models trained for copies.

The code is taught to see through everyday edits, but a copy mirrored, turned, cropped, captioned or flattened on
black still lies further from its original than some other pictures do. Doing the edit to one of the two closes most
of that distance and a different picture's much less (BENCHMARKS.md, "Duplicate groups" and "Search through views").
Two uses:
  view_similarity  how alike two images are at best through a view: the duplicate groups' check of close pairs;
  rerank           a search's shortlist for images outside the collection, ordered again through views.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vaepipe.embed import encode_views, iter_encoded_views
from vaepipe.embeddings import Embedded, has_grey_renderings
from vaepipe.images import ONE_SIDED_VIEWS, SIGNATURE_SHAPE, VIEWS
from vaepipe.index import SearchIndex, prepare
from vaepipe.model import VAE
from vaepipe.store import file_path, gathered, kept_rows, release, row_groups, scratch_array, sha256_file, write_parquet

log = logging.getLogger("vaepipe")

# How many of a query's nearest images are looked at again through views: past it, recall@10 had (almost) all the
# originals that views bring to rank 1 on the validation folders.
RERANK_DEPTH = 10
BLOCK = 16384  # pairs scored at a time: a folder of look-alikes has millions of candidate pairs
# Images per cache part (written as they are made) and per row group of a part. A folder's images as one row group
# took several times their size to write and to read, held by Arrow after; parts made whole before written held
# their copies and the scratch pages gathered for them (BENCHMARKS.md, issue 22).
PART_ROWS = 1024


def uses_views(model: VAE, index: SearchIndex) -> bool:
    """Whether search and duplicate groups look through edited views: for models trained for copies, on cosine."""
    return model.config.invariance > 0 and index.meta["metric"] == "cosine"


def view_similarity(views_a: np.ndarray, stored_a: np.ndarray, views_b: np.ndarray, stored_b: np.ndarray,
                    ia: np.ndarray, ib: np.ndarray) -> np.ndarray:
    """Pairs of images (row ia[i] of the a's, row ib[i] of the b's): each image's views (rows, len(VIEWS), d) and
    its vector as stored (rows, d), all prepared for cosine -> the best similarity of a's one-sided views against b as
    stored, b's against a, and of both seen through the same both-sided view, (n,). Gathered a block of pairs at a
    time: a folder of look-alikes has hundreds of thousands of pairs, and their views gathered at once were most of
    the duplicate check's memory."""
    one = len(ONE_SIDED_VIEWS)
    out = np.empty(len(ia), np.float32)
    for s in range(0, len(ia), BLOCK):
        a, b = ia[s:s + BLOCK], ib[s:s + BLOCK]
        va, vb, sa, sb = gathered(views_a, a), gathered(views_b, b), stored_a[a], stored_b[b]
        out[s:s + BLOCK] = np.maximum.reduce([
            (va[:, :one] @ sb[:, :, None]).max((1, 2)),
            (vb[:, :one] @ sa[:, :, None]).max((1, 2)),
            (va[:, one:] * vb[:, one:]).sum(2).max(1) if one < len(VIEWS) else np.full(len(va), -np.inf),
        ])
        release(views_a)  # where they are scratch arrays: what the block read goes back to the file
        release(views_b)
    return out


def prepared_views(index: SearchIndex, views: Embedded, grey: bool, folder: Path | None = None) -> np.ndarray:
    """encode_views' rows as (images, len(VIEWS), d), prepared for the images' space or the grey renderings'; made
    a block at a time into a store.scratch_array under `folder` where given."""
    meta, x = (index.meta["grey"], views.grey_embedding) if grey else (index.meta, views.embedding)
    centre = np.asarray(meta["centre"], np.float32)
    if folder is None:
        return prepare(x, "cosine", centre).reshape(-1, len(VIEWS), index.dim)
    out = scratch_array(x.shape, np.float32, folder)  # type: ignore[union-attr]
    for s in range(0, len(out), BLOCK):
        out[s:s + BLOCK] = prepare(x[s:s + BLOCK], "cosine", centre)  # type: ignore[index]
        release(out)
        release(x)  # type: ignore[arg-type]
    return out.reshape(-1, len(VIEWS), index.dim)


@dataclass
class ViewCache:
    """What the duplicate check and the search computed of collection images beyond their code, kept in `folder`
    (Workdir.views_dir) by sha256: the images' views as the model embeds them (`get`, `put`), and their pixel
    signatures (`get_signatures`, `put_signatures`, images.load_signatures). A nightly re-run of the duplicate groups, or
    the next query folder, decodes only images not looked at before. Keyed by content, so a renamed file is found
    again and a changed one is another key; written in parts that are never rewritten. The cache only saves work: a
    part that cannot be read is ignored (and computed again)."""

    folder: Path

    def _read(self, prefix: str, shas: list[str]) -> Iterator[pa.Table]:
        """Each readable part's rows of these sha256s."""
        wanted = pa.array(sorted(set(shas)), pa.string())
        for part in sorted(self.folder.glob(f"{prefix}-*.parquet")):
            try:  # a row group at a time: a whole part read, then filtered, was three copies of it at once
                for table in row_groups(part):
                    yield table.filter(pc.is_in(table["sha256"], wanted)).combine_chunks()
            except Exception as e:  # damaged or from another version: only work saved is lost
                log.warning("views: cache part %s not read (%s: %s)", part, type(e).__name__, e)
        # Arrow's allocator keeps what the parts' reading freed; on a folder of look-alikes (every image's views
        # read) that stayed held through the rest of the duplicate check.
        pa.default_memory_pool().release_unused()

    def _write(self, prefix: str, columns: dict[str, pa.Array]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        write_parquet(pa.table(columns),
                      self.folder / f"{prefix}-{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:8]}.parquet",
                      row_group_size=PART_ROWS)
        pa.default_memory_pool().release_unused()  # what the encoding freed, given back rather than held

    def get(self, shas: list[str], dim: int, grey: bool) -> Iterator[tuple[list[str], np.ndarray, np.ndarray | None]]:
        """The cached views of these sha256s, a row group at a time: (sha256s, views (rows, len(VIEWS), dim), the
        grey renderings' views alike where `grey` (a colour model's), else None), for the caller to place."""
        for table in self._read("part", shas):
            try:
                views = table["views"].combine_chunks().flatten().to_numpy().reshape(-1, len(VIEWS), dim)
                grey_views = (table["grey_views"].combine_chunks().flatten().to_numpy().reshape(-1, len(VIEWS), dim)
                              if grey else None)
            except Exception as e:  # a part of another model size or version
                log.warning("views: cache part not used (%s: %s)", type(e).__name__, e)
                continue
            yield table["sha256"].to_pylist(), views, grey_views

    def put(self, shas: list[str], views: Embedded) -> None:
        """Add encode_views' rows of the images with these sha256s (in order)."""
        if not shas:
            return
        width = len(VIEWS) * views.embedding.shape[1]
        columns = {"sha256": pa.array(shas, pa.string()),
                   "views": pa.FixedSizeListArray.from_arrays(pa.array(views.embedding.ravel(), pa.float32()), width)}
        if views.grey_embedding is not None:
            columns["grey_views"] = pa.FixedSizeListArray.from_arrays(
                pa.array(views.grey_embedding.ravel(), pa.float32()), width)
        self._write("part", columns)

    def get_signatures(self, shas: list[str]) -> Iterator[tuple[list[str], np.ndarray, np.ndarray]]:
        """The cached signatures of these sha256s, a row group at a time: (sha256s, images.load_signatures'
        signatures as float16, their mean colours), for the caller to place where it keeps them."""
        for table in self._read("detail", shas):
            if "colour" not in table.column_names:  # written before signatures had a colour: made again
                continue
            try:
                # As stored, float16 (exact): a float32 copy of a whole folder's signatures doubled their room.
                sigs = table["signature"].combine_chunks().flatten().to_numpy().reshape(len(table), *SIGNATURE_SHAPE)
                colour = table["colour"].combine_chunks().flatten().to_numpy().reshape(len(table), 3)
            except Exception as e:  # a part of another version
                log.warning("views: cache part not used (%s: %s)", type(e).__name__, e)
                continue
            yield table["sha256"].to_pylist(), sigs, colour

    def put_signatures(self, shas: list[str], sigs: np.ndarray, colour: np.ndarray) -> None:
        """Add images.load_signatures' signatures and colours of the images with these sha256s (in order)."""
        if not shas:
            return
        # float16 holds the signatures' grey levels (quarters from 0 to 255) exactly, in half the room.
        values = pa.array(sigs.astype(np.float16, copy=False).ravel(), pa.float16())
        # The colours as they are (12 bytes an image): rounded, a pair near the hue limit came out otherwise on a
        # nightly re-run than on the first.
        colours = pa.array(colour.astype(np.float32).ravel(), pa.float32())
        self._write("detail", {"sha256": pa.array(shas, pa.string()),
                               "signature": pa.FixedSizeListArray.from_arrays(values, int(np.prod(SIGNATURE_SHAPE))),
                               "colour": pa.FixedSizeListArray.from_arrays(colours, 3)})


def scratch_folder(cache: ViewCache | None) -> Path | None:
    """Where the duplicate check's scratch files (store.scratch_array) go: beside the cache, on the workdir's disk;
    without a cache, the system's temporary folder."""
    return cache.folder if cache is not None else None


def unchanged(path: str, sha256: str) -> bool:
    """Whether a collection file still holds what was indexed: a changed file would be compared as it is now."""
    try:
        return sha256_file(path) == sha256
    except OSError:
        return False


def collection_views(index: SearchIndex, model: VAE, image_root: Path, rows: np.ndarray,
                     cache: ViewCache | None = None) -> tuple[np.ndarray, Embedded]:
    """The views of collection images (index rows): from the cache, else of files unchanged since indexing that
    load now (then added to the cache). Returns the rows that have views, in the order given, and their views as
    encode_views gives them (in store.scratch_arrays in the cache's folder)."""
    paths, shas = index.ids["path"].to_pylist(), index.ids["sha256"].to_pylist()
    n, dim, folder = len(VIEWS), index.dim, scratch_folder(cache)
    # Each image's views go straight to their place, in a file (released as they are written): on a folder of
    # look-alikes nearly every image is in a pair, and memory should not grow with the folder.
    views = scratch_array((len(rows), n, dim), np.float32, folder)
    grey = scratch_array((len(rows), n, dim), np.float32, folder) if has_grey_renderings(model.config) else None
    got = np.zeros(len(rows), bool)
    where: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        where.setdefault(shas[r], []).append(i)
    for found, part, grey_part in cache.get(list(where), dim, grey is not None) if cache is not None else ():
        for j, sha in enumerate(found):
            for i in where.get(sha, ()):
                views[i], got[i] = part[j], True
                if grey is not None:
                    grey[i] = grey_part[j]  # type: ignore[index]
        release(views)
        release(grey)
    todo = [i for i in np.flatnonzero(~got) if unchanged(file_path(image_root, paths[rows[i]]), shas[rows[i]])]
    if len(todo) < (~got).sum():
        log.info("views: %d images changed or gone since they were indexed are not looked at through edited views",
                 (~got).sum() - len(todo))
    new: list[int] = []  # made now, not yet in the cache
    files = [file_path(image_root, paths[rows[i]]) for i in todo]
    for loaded, encoded in iter_encoded_views(model, files):
        at = np.asarray([todo[j] for j in loaded], np.int64)
        views[at], got[at] = encoded.embedding.reshape(-1, n, dim), True
        if grey is not None:
            grey[at] = encoded.grey_embedding.reshape(-1, n, dim)  # type: ignore[union-attr]
        new += at.tolist()
        if cache is not None and len(new) >= PART_ROWS:  # a part at a time: a copy of a part, not of the folder's
            _put_views(cache, [shas[rows[i]] for i in new], views, grey, new)
            new = []
        release(views)
        release(grey)
    if cache is not None and new:
        _put_views(cache, [shas[rows[i]] for i in new], views, grey, new)
    if not got.all():
        views, grey = kept_rows(views, got), None if grey is None else kept_rows(grey, got)
    have = np.asarray(rows, np.int64)[got]
    return have, Embedded(views.reshape(-1, dim), None if grey is None else grey.reshape(-1, dim),
                          None if grey is None else np.zeros(len(have) * n, bool))


def _put_views(cache: ViewCache, shas: list[str], views: np.ndarray, grey: np.ndarray | None, at: list[int]) -> None:
    """Cache the views at rows `at` of collection_views' scratch arrays (images, len(VIEWS), d)."""
    dim = views.shape[-1]
    cache.put(shas, Embedded(views[at].reshape(-1, dim), None if grey is None else grey[at].reshape(-1, dim)))


def seen_similarity(index: SearchIndex, model: VAE, image_root: Path, a: np.ndarray, b: np.ndarray,
                    cache: ViewCache | None = None) -> np.ndarray:
    """Pairs of collection images (index rows a[i], b[i]) -> their view_similarity, in the space they are compared
    in (the grey renderings' where either is greyscale); -inf where either could not be looked at (changed since
    indexing, or unreadable now)."""
    out = np.full(len(a), -np.inf, np.float32)
    if not len(a):
        return out
    rows, views = collection_views(index, model, image_root, np.unique(np.concatenate([a, b])), cache)
    at = np.full(index.meta["n"], -1, np.int64)
    at[rows] = np.arange(len(rows))
    ok = (at[a] >= 0) & (at[b] >= 0)
    grey = np.zeros(len(a), bool)
    if index.grey is not None:
        flags = index.ids["greyscale"].to_numpy(zero_copy_only=False)
        grey = flags[a] | flags[b]
    stored = index.stored(rows)
    for in_grey, as_stored in ((False, stored.embedding), (True, stored.grey_embedding)):
        pick = ok & (grey == in_grey)
        if pick.any():
            v = prepared_views(index, views, in_grey, scratch_folder(cache))
            out[pick] = view_similarity(v, as_stored, v, as_stored, at[a[pick]], at[b[pick]])
    return out


def rerank(index: SearchIndex, model: VAE, image_root: Path, query_files: list[Path], queries: Embedded,
           rows: np.ndarray, similarity: np.ndarray, depth: int | None = None, cache: ViewCache | None = None
           ) -> tuple[np.ndarray, np.ndarray]:
    """A search's results for images outside the collection (rows, similarity: (Q, R) as SearchIndex.search gives
    them) ordered again: each query's first `depth` neighbours get the better of their similarity as stored and
    their view_similarity to the query; the rest keep theirs, which is no higher. Queries
    whose views do not load now, and neighbours changed since indexing, keep their similarity as stored."""
    rows, similarity = rows.copy(), similarity.copy()
    top = rows[:, :RERANK_DEPTH if depth is None else depth]
    candidates = np.unique(top[top >= 0])
    if not len(candidates) or not len(query_files):
        return rows, similarity
    q_loaded, q_views = encode_views(model, query_files)
    c_rows, c_views = collection_views(index, model, image_root, candidates, cache)
    if not q_loaded or not len(c_rows):
        return rows, similarity
    at_q = np.full(len(query_files), -1, np.int64)
    at_q[q_loaded] = np.arange(len(q_loaded))
    at_c = np.full(index.meta["n"], -1, np.int64)
    at_c[c_rows] = np.arange(len(c_rows))
    grey_query = queries.greyscale if queries.greyscale is not None else np.zeros(len(queries), bool)
    q, col = np.nonzero((top >= 0) & (at_q[:, None] >= 0) & (at_c[np.maximum(top, 0)] >= 0))
    stored = index.stored(c_rows)
    for grey in (False, True):
        pick = grey_query[q] == grey
        if not pick.any() or (grey and index.grey is None):
            continue
        meta = index.meta["grey"] if grey else index.meta
        q_as_stored = prepare(queries.grey_embedding[q_loaded] if grey else queries.embedding[q_loaded], "cosine",
                              np.asarray(meta["centre"], np.float32))
        c_as_stored = stored.grey_embedding if grey else stored.embedding
        qi, ci = at_q[q[pick]], at_c[top[q[pick], col[pick]]]
        seen = view_similarity(prepared_views(index, q_views, grey), q_as_stored,
                               prepared_views(index, c_views, grey), c_as_stored, qi, ci)
        similarity[q[pick], col[pick]] = np.maximum(similarity[q[pick], col[pick]], seen)
    # Stable: among equals the order as stored stands; slots with nothing found (-1) stay last.
    order = np.argsort(-np.where(rows < 0, -np.inf, similarity), axis=1, kind="stable")
    return np.take_along_axis(rows, order, 1), np.take_along_axis(similarity, order, 1)
