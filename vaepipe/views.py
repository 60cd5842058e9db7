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
from pathlib import Path

import numpy as np

from vaepipe.embed import Embedded, encode_views
from vaepipe.images import ONE_SIDED_VIEWS, VIEWS
from vaepipe.index import SearchIndex, prepare
from vaepipe.model import VAE
from vaepipe.store import file_path, sha256_file

log = logging.getLogger("vaepipe")

# How many of a query's nearest images are looked at again through views: past it, recall@10 had (almost) all the
# originals that views bring to rank 1 on the validation folders.
RERANK_DEPTH = 10
BLOCK = 65536  # pairs scored at a time: a folder of look-alikes has millions of candidate pairs


def uses_views(model: VAE, index: SearchIndex) -> bool:
    """Whether search and duplicate groups look through edited views: for models trained for copies, on cosine."""
    return model.config.invariance > 0 and index.meta["metric"] == "cosine"


def view_similarity(views_a: np.ndarray, stored_a: np.ndarray, views_b: np.ndarray, stored_b: np.ndarray
                    ) -> np.ndarray:
    """Pairs (a[i], b[i]): each one's views (n, len(VIEWS), d) and the vector as stored (n, d), all prepared for
    cosine -> the best similarity of a's one-sided views against b as stored, b's against a, and of both seen
    through the same both-sided view, (n,)."""
    one = len(ONE_SIDED_VIEWS)
    out = np.empty(len(views_a), np.float32)
    for s in range(0, len(views_a), BLOCK):
        va, vb, sa, sb = (x[s:s + BLOCK] for x in (views_a, views_b, stored_a, stored_b))
        out[s:s + BLOCK] = np.maximum.reduce([
            (va[:, :one] @ sb[:, :, None]).max((1, 2)),
            (vb[:, :one] @ sa[:, :, None]).max((1, 2)),
            (va[:, one:] * vb[:, one:]).sum(2).max(1) if one < len(VIEWS) else np.full(len(va), -np.inf),
        ])
    return out


def prepared_views(index: SearchIndex, views: Embedded, grey: bool) -> np.ndarray:
    """encode_views' rows as (images, len(VIEWS), d), prepared for the images' space or the grey renderings'."""
    meta, x = (index.meta["grey"], views.grey_embedding) if grey else (index.meta, views.embedding)
    return prepare(x, "cosine", np.asarray(meta["centre"], np.float32)).reshape(-1, len(VIEWS), index.dim)


def unchanged(path: Path, sha256: str) -> bool:
    """Whether a collection file still holds what was indexed: a changed file would be compared as it is now."""
    try:
        return sha256_file(path) == sha256
    except OSError:
        return False


def collection_views(index: SearchIndex, model: VAE, image_root: Path, rows: np.ndarray
                     ) -> tuple[np.ndarray, Embedded]:
    """The views of collection images (index rows) that are unchanged since indexing and load now:
    (their rows, encode_views' Embedded for them)."""
    paths, shas = index.ids["path"].to_pylist(), index.ids["sha256"].to_pylist()
    same = np.asarray([unchanged(file_path(image_root, paths[r]), shas[r]) for r in rows], bool)
    if not same.all():
        log.info("views: %d images changed or gone since they were indexed are not looked at through edited views",
                 (~same).sum())
    rows = rows[same]
    loaded, views = encode_views(model, [file_path(image_root, paths[r]) for r in rows])
    return rows[loaded], views


def rerank(index: SearchIndex, model: VAE, image_root: Path, query_files: list[Path], queries: Embedded,
           rows: np.ndarray, similarity: np.ndarray, depth: int | None = None) -> tuple[np.ndarray, np.ndarray]:
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
    c_rows, c_views = collection_views(index, model, image_root, candidates)
    if not q_loaded or not len(c_rows):
        return rows, similarity
    at_q = np.full(len(query_files), -1, np.int64)
    at_q[q_loaded] = np.arange(len(q_loaded))
    at_c = np.full(index.meta["n"], -1, np.int64)
    at_c[c_rows] = np.arange(len(c_rows))
    grey_query = queries.greyscale if queries.greyscale is not None else np.zeros(len(queries), bool)
    q, col = np.nonzero((top >= 0) & (at_q[:, None] >= 0) & (at_c[np.maximum(top, 0)] >= 0))
    for grey in (False, True):
        pick = grey_query[q] == grey
        if not pick.any() or (grey and index.grey is None):
            continue
        meta = index.meta["grey"] if grey else index.meta
        q_as_stored = prepare(queries.grey_embedding[q_loaded] if grey else queries.embedding[q_loaded], "cosine",
                              np.asarray(meta["centre"], np.float32))
        c_as_stored = index.stored(c_rows)
        c_as_stored = c_as_stored.grey_embedding if grey else c_as_stored.embedding
        qi, ci = at_q[q[pick]], at_c[top[q[pick], col[pick]]]
        seen = view_similarity(prepared_views(index, q_views, grey)[qi], q_as_stored[qi],
                               prepared_views(index, c_views, grey)[ci], c_as_stored[ci])
        similarity[q[pick], col[pick]] = np.maximum(similarity[q[pick], col[pick]], seen)
    # Stable: among equals the order as stored stands; slots with nothing found (-1) stay last.
    order = np.argsort(-np.where(rows < 0, -np.inf, similarity), axis=1, kind="stable")
    return np.take_along_axis(rows, order, 1), np.take_along_axis(similarity, order, 1)
