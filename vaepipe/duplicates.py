"""Duplicate groups of a collection: which images are copies of which.

  exact: files with the same sha256 (byte-identical content at several paths);
  near:  images at least `threshold` alike (and, with the model's views, pairs the checks below find), made into
         groups by `near_groups`: each group an image and the images paired with it directly, so that look-alikes do
         not chain into groups of hundreds. The pairs come from a range search over the whole index, not from a query
         run's neighbour lists, so the groups do not depend on -k.

The default threshold depends on what the model was trained for (`calibrate_threshold`). A model trained for
invariance to everyday edits (trimmed inputs, the default for photos, art and icons) puts copies at a similarity that
does not depend much on the collection: COPY_THRESHOLD, chosen on the validation folders of benchmarks/copies.py for
pair precision. A plain VAE (small framed images) was not taught what a copy is; its threshold is the similarity that
95% of sampled images keep to a JPEG re-save of themselves, measured on the collection.
"""

from __future__ import annotations

import heapq
import io
import logging
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from PIL import Image

from vaepipe.config import IngestConfig
from vaepipe.detail import (FINE_LEAST, FINE_MARGIN, NEIGHBOURS, OPAQUE_FINE_LEAST, TURNED_LEAST, TURNED_MARGIN,
                            Signatures, nearest_pairs)
from vaepipe.batches import to_float
from vaepipe.images import flatten, open_image, to_array
from vaepipe.index import SearchIndex, prepare
from vaepipe.model import VAE, exact_cudnn
from vaepipe.errors import VaepipeError
from vaepipe.same_size import Pictures, TwoDrawings, same_size_pairs, smaller_copy_pairs
from vaepipe.store import file_path
from vaepipe.views import ViewCache, seen_similarity, uses_views

log = logging.getLogger("vaepipe")

DUPLICATES_SCHEMA = pa.schema([("group", pa.int32()), ("kind", pa.string()), ("path", pa.string()), ("sha256", pa.string())])


COPY_THRESHOLD = 0.97
# Pairs at least this alike are looked at again through edited views (view_checked_pairs); below it, pairs were not
# copies on the validation folders, and every image in a candidate pair costs its views' decoding and encoding.
CANDIDATE_SIMILARITY = 0.8
# How alike two images must be, and how much less alike than each other the next most alike image of both, for them
# to be one picture and its only copy (only_copy_pairs); chosen on the validation folders for pair precision.
ONLY_COPY_SIMILARITY = 0.9
MARGIN = 0.15


@dataclass
class Calibration:
    """A duplicate threshold and what it was chosen from (recorded in run.json)."""

    threshold: float
    rule: str  # how the threshold was chosen
    sampled: int  # collection images re-saved
    resave_similarity: dict[str, float]  # quantiles of original-to-re-saved-copy similarity

    def to_dict(self) -> dict:
        return asdict(self)


QUANTILES = (0.01, 0.05, 0.1, 0.25, 0.5)


def _resaved(img: Image.Image, background: int) -> Image.Image:
    """The mildest copy: the picture flattened onto the background grey (as JPEG has no transparency) and re-saved as
    a JPEG of quality 85."""
    buf = io.BytesIO()
    flatten(img, background).save(buf, format="JPEG", quality=85)
    return Image.open(io.BytesIO(buf.getvalue()))


@torch.no_grad()
@exact_cudnn()
def calibrate_threshold(model: VAE, index: SearchIndex, image_root: Path, n: int = 256, seed: int = 0) -> Calibration:
    if model.config.invariance > 0:  # nothing to measure: re-saving n images would only cost their decoding
        return Calibration(COPY_THRESHOLD, "fixed for models trained for copies", 0, {})
    paths = index.ids["path"].to_pylist()
    rng = np.random.default_rng(seed)
    spec, rows, copies = model.config.spec, [], []
    for i in sorted(rng.choice(len(paths), size=min(n, len(paths)), replace=False)):
        try:
            copies.append(to_array(_resaved(open_image(file_path(image_root, paths[i]), IngestConfig().max_pixels), spec.background), spec))
            rows.append(i)
        except Exception:  # changed or gone since it was indexed; Pillow raises anything
            continue
    sims = np.ones(0, np.float32)
    if rows:
        device = next(model.parameters()).device
        x = to_float(torch.from_numpy(np.stack(copies)))
        mu = torch.cat([model.eval().embed(b.to(device)).cpu() for b in x.split(256)]).numpy()
        centre = np.asarray(index.meta["centre"], np.float32)
        sims = (prepare(mu, index.meta["metric"], centre) * index.stored_vectors(np.asarray(rows))).sum(1)
    quantiles = {f"{p:g}": round(float(np.quantile(sims, p)), 4) for p in QUANTILES} if len(sims) else {}
    threshold = quantiles.get("0.05", 0.99)
    return Calibration(threshold, "5th percentile of JPEG re-saves", len(rows), quantiles)


def check_threshold(threshold: float) -> None:
    """A similarity threshold is a number from -1 to 1 (cosine); anything else is a clear error, not NaN in run.json."""
    if not (math.isfinite(threshold) and -1.0 <= threshold <= 1.0):
        raise VaepipeError(f"the duplicate threshold is a similarity from -1 to 1, got {threshold}")


def grey_threshold(threshold: float) -> float:
    """The similarity a greyscale image needs to a grey rendering to be its copy: half as far from 1 as `threshold`.

    Without colour, pictures are more alike: at the images' threshold greyscale images joined different pictures,
    and each such pair joins two groups; half as far from 1, the pairs they added on the validation folders were all
    copies (BENCHMARKS.md, "Greyscale copies")."""
    return 1.0 - (1.0 - threshold) / 2


def near_pairs(index: SearchIndex, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Index rows (a, b), a < b, of every pair of images with similarity >= threshold (for a greyscale image, to the
    others' grey renderings: >= grey_threshold), and of other content."""
    n = index.meta["n"]
    content = index.contents
    batch = int(np.clip(10_000_000 // max(n, 1), 1, 4096))  # a batch's results stay bounded even if all match
    a_rows, b_rows = [], []
    for start in range(0, n, batch):
        rows = np.arange(start, min(n, start + batch))
        lims, found = index.within(index.stored(rows), threshold, prepared=True, grey_similarity=grey_threshold(threshold))
        q = np.repeat(rows, np.diff(lims))
        keep = (found > q) & (content[found] != content[q])
        a_rows.append(q[keep])
        b_rows.append(found[keep])
    return np.concatenate(a_rows), np.concatenate(b_rows)


@dataclass
class CandidatePairs:
    """Pairs of index rows (a[i] < b[i]) at least CANDIDATE_SIMILARITY alike as stored: their similarity as stored
    and at best through edited views (views.seen_similarity; -inf where not looked at), each in the space the pair
    is compared in (the grey renderings' where either image is greyscale)."""

    a: np.ndarray
    b: np.ndarray
    stored: np.ndarray
    seen: np.ndarray


def candidate_pairs(index: SearchIndex, model: VAE | None = None, image_root: Path | None = None,
                    cache: ViewCache | None = None) -> CandidatePairs:
    """The pairs the duplicate check looks at again; through views only with a model and the image root."""
    a, b = near_pairs(index, CANDIDATE_SIMILARITY)
    seen = (seen_similarity(index, model, image_root, a, b, cache) if model is not None and image_root is not None
            else np.full(len(a), -np.inf, np.float32))
    return CandidatePairs(a, b, index.pair_similarity(a, b), seen)


def ratio_test(n: int, a: np.ndarray, b: np.ndarray, alike: np.ndarray, least: float, margin: float,
               second: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of index rows (a[i] < b[i]) and how alike each pair is -> the pairs (a, b) that are each other's most
    alike, at least `least`, while the next most alike image of each (among the pairs, or `second` (n,) where that is
    more) is at least `margin` less alike: a picture and its one copy, told apart by how much closer they are to each
    other than to anything else (a ratio test, as in matching local features)."""
    if not len(a):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    me = np.concatenate([a, b])
    other = np.concatenate([b, a])
    value = np.concatenate([alike, alike])
    order = np.lexsort((-value, me))  # each image's pairs, most alike first
    me, other, value = me[order], other[order], value[order]
    first = np.ones(len(me), bool)
    first[1:] = me[1:] != me[:-1]
    partner, best = np.full(n, -1), np.full(n, -np.inf)
    nearest_other = np.full(n, -np.inf) if second is None else second.astype(np.float64)
    partner[me[first]], best[me[first]] = other[first], value[first]
    after = np.flatnonzero(first) + 1
    after = after[after < len(me)]
    after = after[me[after] == me[after - 1]]
    nearest_other[me[after]] = np.maximum(nearest_other[me[after]], value[after])
    i = np.arange(n)
    with np.errstate(invalid="ignore"):  # -inf less -inf (an image with nothing to compare) is nan: not clear
        clear = (best >= least) & (best - nearest_other >= margin) & (partner >= 0)
    p = np.maximum(partner, 0)
    keep = clear & (i < partner) & (partner[p] == i) & clear[p]
    return i[keep], partner[keep]


def only_copy_pairs(index: SearchIndex, candidates: CandidatePairs, nearest: tuple[np.ndarray, np.ndarray],
                    least: float = ONLY_COPY_SIMILARITY, margin: float = MARGIN) -> tuple[np.ndarray, np.ndarray]:
    """Index rows (a, b), a < b, of candidate pairs that pass the ratio test (`ratio_test`) on how alike they are:
    the better of as stored and through edited views; the next nearest as stored (from `nearest`:
    SearchIndex.nearest_of_all, at least 3 columns) counts too. Not one similarity for
    every collection: a copy saved as a small JPEG, turned, or with a caption over it, often lands below the
    threshold but still far nearer its original than any other picture (BENCHMARKS.md, "Duplicate groups")."""
    n = index.meta["n"]
    if n < 3 or not len(candidates.a):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    # The next nearest as stored: a look-alike below CANDIDATE_SIMILARITY is not among the candidates.
    found, sim = nearest[0][:, :3], nearest[1][:, :3]
    others = np.where(found != np.arange(n)[:, None], sim, -np.inf)  # itself is among its 3 nearest (or an identical file)
    second = np.sort(others, axis=1)[:, -2]
    return ratio_test(n, candidates.a, candidates.b, np.maximum(candidates.stored, candidates.seen), least, margin,
                      second)


def group_copy_pairs(index: SearchIndex, candidates: CandidatePairs, nearest: tuple[np.ndarray, np.ndarray],
                     alike: Pairs, signatures: Signatures, least: float = ONLY_COPY_SIMILARITY,
                     margin: float = MARGIN) -> Pairs:
    """Index rows (a, b), a < b, of candidate pairs that pass only_copy_pairs' ratio test between groups instead of
    images, where either picture has transparency. The groups are the pictures already found alike (`alike`) and
    byte-identical files; two groups are as alike as their most alike candidate pair (as stored or through views,
    the better), and that pair joins them when it passes; the nearest as stored (from `nearest`) of each member
    outside both groups counts as a rival too. An icon theme draws one picture at several sizes, alike to each other:
    a copy of one size is about as near all of them, and to the ratio test between images they were each other's
    rivals (BENCHMARKS.md, "Duplicate groups"). Photographs are left out: their groups are look-alikes (crops of
    one wallpaper), and a picture about as near several of them is not anyone's copy."""
    n = index.meta["n"]
    none = (np.zeros(0, np.int64), np.zeros(0, np.int64))
    if n < 3 or not len(candidates.a):
        return none
    content = index.contents
    order = np.argsort(content, kind="stable")
    same = content[order[1:]] == content[order[:-1]]  # byte-identical files, each linked to the one before
    group = _components(n, np.concatenate([alike[0], order[1:][same]]), np.concatenate([alike[1], order[:-1][same]]))
    ga, gb = group[candidates.a], group[candidates.b]
    between = np.flatnonzero(ga != gb)
    if not len(between):  # every candidate pair within a group already
        return none
    value = np.maximum(candidates.stored, candidates.seen)[between]
    lo, hi = np.minimum(ga, gb)[between], np.maximum(ga, gb)[between]
    best = np.lexsort((-value, hi, lo))  # each pair of groups' most alike pair first
    first = best[np.r_[True, (lo[best][1:] != lo[best][:-1]) | (hi[best][1:] != hi[best][:-1])]]
    u, v = ratio_test(n, lo[first], hi[first], value[first], least, margin)
    if not len(u):
        return none
    pair_of = {(x, y): i for x, y, i in zip(lo[first].tolist(), hi[first].tolist(), between[first].tolist())}
    found, sim = nearest
    members = np.argsort(group, kind="stable")
    start = np.searchsorted(group[members], np.arange(n))
    end = np.searchsorted(group[members], np.arange(n), side="right")
    out: list[int] = []
    for x, y in zip(u.tolist(), v.tolist()):
        i = pair_of[(x, y)]
        if signatures.opaque[candidates.a[i]] and signatures.opaque[candidates.b[i]]:
            continue
        rows = np.concatenate([members[start[x]:end[x]], members[start[y]:end[y]]])
        near_rows, near_sim = found[rows], sim[rows]
        outside = (near_rows >= 0) & ~np.isin(group[np.maximum(near_rows, 0)], (x, y))
        if max(candidates.stored[i], candidates.seen[i]) - near_sim[outside].max(initial=-np.inf) >= margin:
            out.append(i)
    keep = np.asarray(out, np.int64)
    return candidates.a[keep], candidates.b[keep]


def fine_detail_pairs(index: SearchIndex, nearest: tuple[np.ndarray, np.ndarray], signatures: Signatures
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Index rows (a, b), a < b, of images and their nearest as stored (`nearest`: detail.nearest_pairs) that pass the ratio
    test on the correlation of their fine detail: a darker, captioned or half-size copy of a small icon, which the
    code puts no nearer its original than the icon's look-alikes, is clearly nearest in its edges (BENCHMARKS.md,
    "Duplicate groups")."""
    a, b = nearest
    alike = signatures.correlation(a, b, fine_detail=True)
    a, b = ratio_test(index.meta["n"], a, b, alike, FINE_LEAST, FINE_MARGIN)
    # Where either has transparency, the match must hold away from it: the edge of a turned photograph's corners
    # matches every other photograph turned as much.
    check = np.flatnonzero(~(signatures.opaque[a] & signatures.opaque[b]))
    keep = np.ones(len(a), bool)
    keep[check] = ~(signatures.fine_where_opaque(a[check], b[check]) < OPAQUE_FINE_LEAST)  # nan: nothing to compare
    return a[keep], b[keep]


def _nearest_other(index: SearchIndex, nearest: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Each image's nearest as stored of other content (from `nearest`: SearchIndex.nearest_of_all), -1 if none."""
    found, content = nearest[0], index.contents
    other = (found >= 0) & (content[np.maximum(found, 0)] != content[:, None])
    return np.where(other.any(1), found[np.arange(len(found)), other.argmax(1)], -1)


def turned_pairs(index: SearchIndex, nearest: tuple[np.ndarray, np.ndarray], near: Pairs, signatures: Signatures,
                 known: Pairs) -> Pairs:
    """Index rows (a, b), a < b, of images that are each other's nearest as stored, not among the `known` pairs,
    whose pixels match when one is turned and zoomed to fit the other (detail.warped_correlation, the better of
    either warped) at least TURNED_LEAST, and TURNED_MARGIN better than each one's match with its other near images
    (`near`: detail.nearest_pairs): the ratio test once more. A turned or cropped copy's pixels as they are follow
    its original's no better than a look-alike's, and the code puts it near, not clearly nearest (BENCHMARKS.md,
    "Duplicate groups")."""
    n = index.meta["n"]
    i, partner = np.arange(n), _nearest_other(index, nearest)
    p = np.maximum(partner, 0)
    mutual = (partner >= 0) & (partner[p] == i) & (signatures.at >= 0) & (signatures.at[p] >= 0)
    # A pair as one number (a * n + b, a < b), to leave out the pairs other rules found.
    found = np.isin(np.minimum(i, p) * n + np.maximum(i, p), np.minimum(*known) * n + np.maximum(*known))
    who = np.flatnonzero(mutual & ~found)
    if not len(who):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    # Each image's partner first, then its other near images (its rivals), one row each.
    me, other = np.concatenate([near[0], near[1]]), np.concatenate([near[1], near[0]])
    keep = np.isin(me, who) & (other != partner[me]) & (signatures.at[other] >= 0)
    me, other = me[keep], other[keep]
    order = np.argsort(me, kind="stable")
    me, other = me[order], other[order]
    row = np.searchsorted(who, me)
    first_of_row = np.searchsorted(me, who)
    rank = np.arange(len(me)) - first_of_row[row]
    table = np.full((len(who), 1 + (rank.max() + 1 if len(rank) else 0)), -1, np.int64)
    table[:, 0] = signatures.at[partner[who]]
    table[row, 1 + rank] = signatures.at[other]
    match = signatures.warped_correlation(signatures.at[who], table)
    best = np.full(n, -np.inf, np.float32)
    best[who] = match[:, 0]
    best[who] = np.maximum(best[who], best[partner[who]])  # the better of either warped to fit the other
    rival = match[:, 1:].max(1, initial=-np.inf)
    clear = np.zeros(n, bool)
    clear[who] = (best[who] >= TURNED_LEAST) & (best[who] - rival >= TURNED_MARGIN)
    pairs = who[clear[who] & clear[partner[who]] & (who < partner[who])]
    return pairs, partner[pairs]


def view_checked_pairs(index: SearchIndex, candidates: CandidatePairs, threshold: float
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Index rows (a, b), a < b, of the candidate pairs whose similarity through an edited view reaches
    grey_threshold(threshold), half as far from 1 as the threshold (where either image is greyscale, half as far
    again, in the grey renderings' space)."""
    a, b = candidates.a, candidates.b
    # Half as far from 1 as the threshold: a view also brings look-alikes closer (tiles of one wallpaper, mirrored
    # or cropped, are tiles of one wallpaper), and at the threshold itself the groups of a folder of photographs
    # grew by chains of them (BENCHMARKS.md, "Duplicate groups").
    viewed = grey_threshold(threshold)
    least = np.full(len(a), viewed)
    if index.grey is not None:
        flags = index.ids["greyscale"].to_numpy(zero_copy_only=False)
        least[flags[a] | flags[b]] = grey_threshold(viewed)
    keep = candidates.seen >= least
    log.info("duplicates: %d of %d pairs above %.2f reach %.4f in a view", keep.sum(), len(a), CANDIDATE_SIMILARITY,
             viewed)
    return a[keep], b[keep]


Pairs = tuple[np.ndarray, np.ndarray]  # index rows (a[i], b[i])


def _joined(pairs: list[Pairs]) -> Pairs:
    return (np.concatenate([p[0] for p in pairs]), np.concatenate([p[1] for p in pairs])) if pairs else \
        (np.zeros(0, np.int64), np.zeros(0, np.int64))


Apart = Callable[[np.ndarray, np.ndarray], np.ndarray]  # pairs of index rows (a[i], b[i]) -> which are not copies


def _checked_in_pixels(index: SearchIndex, image_root: Path, candidates: CandidatePairs, alike: list[Pairs],
                       sure: list[Pairs], nearest: tuple[np.ndarray, np.ndarray], cache: ViewCache | None,
                       sizes: np.ndarray | None) -> tuple[Pairs, Pairs, Apart]:
    """The pairs the code found alike, and the sure pairs (the code's ratio test's) with those group_copy_pairs,
    fine_detail_pairs, same_size.same_size_pairs and same_size.smaller_copy_pairs (with `sizes`) and turned_pairs add, each less pairs of near-plain
    look-alikes (detail.Signatures.plain_look_alikes) and of pictures the pixels say are not copies (`apart`: of other
    colours, Signatures.other_colours; opaque pictures whose pixels differ, Signatures.pixels_differ; with `sizes`,
    two drawings of one size, same_size.TwoDrawings); and `apart`, for the groups' stars."""
    near = nearest_pairs(index, nearest)
    rows = np.unique(np.concatenate([r for p in [*alike, *sure, near, (candidates.a, candidates.b)] for r in p]))
    signatures = Signatures.of(index, image_root, rows, cache)
    grouped = group_copy_pairs(index, candidates, nearest, _joined(alike), signatures)
    fine = fine_detail_pairs(index, near, signatures)
    pictures = Pictures(index, image_root, sizes) if sizes is not None else None  # small pictures, loaded once
    same_size = (_joined([same_size_pairs(index, image_root, sizes), smaller_copy_pairs(pictures, nearest)])
                 if pictures is not None else _joined([]))
    turned = turned_pairs(index, nearest, near, signatures, _joined([*alike, *sure, grouped, fine, same_size]))
    drawings = TwoDrawings(pictures, ~signatures.opaque) if pictures is not None else None
    left_apart = {"colours": 0, "pixels": 0, "drawings": 0}

    def apart(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        out = signatures.other_colours(a, b)
        left_apart["colours"] += out.sum()
        for kind, check in (("pixels", signatures.pixels_differ), ("drawings", drawings.apart if drawings else None)):
            if check is not None:
                found = np.zeros(len(a), bool)
                found[~out] = check(a[~out], b[~out])
                left_apart[kind] += found.sum()
                out |= found
        return out

    checked, plain = [], 0
    for a, b in (_joined(alike), _joined([*sure, grouped, fine, same_size, turned])):
        look_alikes = signatures.plain_look_alikes(a, b)
        keep = ~look_alikes
        keep[keep] = ~apart(a[keep], b[keep])
        plain += look_alikes.sum()
        checked.append((a[keep], b[keep]))
    log.info("duplicates: %d pairs joined as a copy of a group, %d by their fine detail, %d as small pictures pixel "
             "for pixel and %d by their pixels turned or zoomed; %d pairs of near-plain pictures whose pixels differ, %d of "
             "pictures of other colours, %d of opaque pictures whose pixels differ and %d of two drawings of one "
             "size left apart", len(grouped[0]), len(fine[0]), len(same_size[0]), len(turned[0]), plain,
             left_apart["colours"], left_apart["pixels"], left_apart["drawings"])
    return checked[0], checked[1], apart


def _components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Nodes 0..n-1 joined by edges (a[i], b[i]) -> each node's component, named by one of its nodes."""
    parent = np.arange(n)

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for x, y in zip(a.tolist(), b.tolist()):
        parent[find(x)] = find(y)
    return np.asarray([find(x) for x in range(n)], np.int64)


ONE_CALL_PAIRS = 1_000_000  # near_groups asks apart() about at most this many pairs at once before the stars


def near_groups(n: int, pairs: Pairs, sure: Pairs, apart: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None
                ) -> np.ndarray:
    """Images 0..n-1 and the pairs found alike -> each image's group (named by one of its images).

    The `sure` pairs (an image and its one clear copy: the ratio tests) are joined first. Then, most-paired first, an
    image and the images paired with it directly that are in no group yet make a group (greedy star clustering).
    Connected components would be simpler, but on a folder of crops of one wallpaper each crop is alike to a few
    others and the components grew to hundreds of pictures (BENCHMARKS.md, "Duplicate groups"); a copy of a copy
    still joins its original's group through the image they are both paired with.
    `apart(a, b)`: which pairs of images (a[i], b[i]) cannot be in one group (copies of one picture can all be
    together), asked for every pair of images of the nodes that could join one star (a centre and one node passed
    the checks as a pair; a node is the images the sure pairs joined); a node with an image apart from one already in
    its star is left for another group."""
    node = _components(n, *sure)
    a, b = node[pairs[0]], node[pairs[1]]
    members = np.argsort(node, kind="stable")  # each node's images together: members[start[x]:end[x]] for a node x
    start, end = np.searchsorted(node[members], node, "left"), np.searchsorted(node[members], node, "right")
    neighbours: dict[int, set[int]] = {}
    for x, y in zip(a.tolist(), b.tolist()):
        if x != y:
            neighbours.setdefault(x, set()).add(y)
            neighbours.setdefault(y, set()).add(x)
    kept_apart: dict[tuple[int, int], bool] = {}

    def ask(candidates: list[list[int]]) -> None:
        """apart() of every pair of nodes within each sorted list not asked before, in one call: two nodes are apart
        where any image of one is apart from any image of the other. A half-size copy joined to its original by a
        sure pair says nothing of whether the original and a third picture are two drawings."""
        todo = sorted({(y, z) for c in candidates for i, y in enumerate(c) for z in c[i + 1:]} - kept_apart.keys())
        if not todo:
            return
        ya, za = np.asarray(todo, np.int64).T
        count = (end[ya] - start[ya]) * (end[za] - start[za])
        which = np.repeat(np.arange(len(todo)), count)  # each node pair's image pairs, one row each
        k = np.arange(len(which)) - np.repeat(np.cumsum(count) - count, count)
        width = (end[za] - start[za])[which]
        ia, ib = members[start[ya][which] + k // width], members[start[za][which] + k % width]
        found = np.zeros(len(todo), bool)
        np.logical_or.at(found, which, apart(ia, ib))
        kept_apart.update(zip(todo, found.tolist()))

    # Each call costs milliseconds (thousands of stars on a large folder), so every pair that could meet in a star
    # (two images paired with one) is asked at once, unless that is too many: all-alike pictures make it cubic.
    if apart is not None and sum(len(v) * (len(v) - 1) // 2 for v in neighbours.values()) <= ONE_CALL_PAIRS:
        ask([sorted(v) for v in neighbours.values()])
    centre: dict[int, int] = {}
    # Most unassigned neighbours first; a node's count only falls, so a popped count that is stale goes back in.
    queue = [(-len(v), x) for x, v in neighbours.items()]
    heapq.heapify(queue)
    while queue:
        count, x = heapq.heappop(queue)
        if x in centre:
            continue
        free = [y for y in neighbours[x] if y not in centre]
        if len(free) < -count:
            heapq.heappush(queue, (-len(free), x))
            continue
        centre[x] = x
        free.sort()
        if apart is not None and len(free) > 1:
            ask([free])
        members: list[int] = []
        for y in free:
            if not any(kept_apart.get((m, y), False) for m in members):  # members come before y: free is sorted
                centre[y] = x
                members.append(y)
    return np.asarray([centre.get(x, x) for x in node.tolist()], np.int64)


def _one_file(root: Path, paths: list[str]) -> bool:
    try:
        first = os.stat(file_path(root, paths[0]))
        return all(os.path.samestat(first, os.stat(file_path(root, p))) for p in paths[1:])
    except OSError:
        return False


def duplicate_groups(index: SearchIndex, threshold: float, image_root: Path | None = None, model: VAE | None = None,
                     cache: ViewCache | None = None, sizes: np.ndarray | None = None) -> pa.Table:
    """Exact groups (same sha256) first, then near groups; each group's files in path order, biggest groups first,
    then the closest (the mean similarity of the pairs within it).
    With image_root, an exact group whose paths are all one file on disk (hard or symbolic links) is of kind
    "links": nothing to clean up there, and not a copy someone made. With image_root and the collection's model
    (if trained for copies: views.uses_views), near pairs also come from view_checked_pairs, only_copy_pairs,
    fine_detail_pairs, turned_pairs and, with `sizes` (each index row's (width, height) as ingested:
    store.image_sizes), same_size.same_size_pairs and same_size.smaller_copy_pairs; pairs whose pixels say they are not copies are left apart
    (_checked_in_pixels)."""
    alike = [near_pairs(index, threshold)]
    sure: list[Pairs] = []  # an image and its one clear copy (the ratio tests)
    apart_rows: Apart | None = None
    if image_root is not None and model is not None and uses_views(model, index):
        candidates = candidate_pairs(index, model, image_root, cache)
        alike.append(view_checked_pairs(index, candidates, threshold))
        nearest = index.nearest_of_all(NEIGHBOURS + 1)  # one search serves both ratio tests
        sure.append(only_copy_pairs(index, candidates, nearest))
        checked_alike, checked_sure, apart_rows = _checked_in_pixels(index, image_root, candidates, alike, sure,
                                                                     nearest, cache, sizes)
        alike, sure = [checked_alike], [checked_sure]
    a_rows, b_rows = _joined(alike + sure)
    # Groups of contents, not of files: byte-identical files are one image here (and an exact group of their own).
    node = index.contents
    n_nodes = int(node.max()) + 1 if len(node) else 0
    sure_a, sure_b = _joined(sure)
    apart = None
    if apart_rows is not None:
        # Copies of one picture can all be together: a star's pictures pass the checks with each other, not only
        # with its centre. A star of plain tiles of blue, cyan and teal joined them through the one in the middle, and
        # a star of neighbouring crops of one wallpaper joined crops whose pixels do not follow each other.
        row_of = np.empty(n_nodes, np.int64)
        row_of[node] = np.arange(len(node))

        def apart(a: np.ndarray, b: np.ndarray) -> np.ndarray:
            return apart_rows(row_of[a], row_of[b])
    group = near_groups(n_nodes, (node[a_rows], node[b_rows]), (node[sure_a], node[sure_b]), apart)
    # Only the rows in a group are read as Python strings: the others are most of a large folder.
    group_of_row = group[node]
    in_exact = np.bincount(node, minlength=n_nodes)[node] > 1  # another file of the same content
    in_near = np.bincount(group, minlength=n_nodes)[group_of_row] > 1  # its group has other content
    grouped = np.flatnonzero(in_exact | in_near)
    paths = dict(zip(grouped.tolist(), index.ids["path"].take(grouped).to_pylist()))
    sha_of = dict(zip(paths.values(), index.ids["sha256"].take(grouped).to_pylist()))
    exact_paths: dict[int, list[str]] = {}
    near_paths: dict[int, list[str]] = {}
    for r in np.flatnonzero(in_exact).tolist():
        exact_paths.setdefault(int(node[r]), []).append(paths[r])
    for r in np.flatnonzero(in_near).tolist():
        near_paths.setdefault(int(group_of_row[r]), []).append(paths[r])
    # How close a near group is: the mean similarity as stored of the pairs within it (its surest first).
    joined: dict[int, list[float]] = {}
    inside = group[node[a_rows]] == group[node[b_rows]]
    for a, sim in zip(a_rows[inside], index.pair_similarity(a_rows[inside], b_rows[inside]) if inside.any() else []):
        joined.setdefault(int(group[node[a]]), []).append(float(sim))
    exact = [(sorted(p), 1.0) for p in exact_paths.values()]
    near = [(sorted(p), float(np.mean(joined[g]))) for g, p in near_paths.items()]
    ordered = [("links" if kind == "exact" and image_root is not None and _one_file(image_root, members) else kind,
                members) for kind, groups in (("exact", exact), ("near", near))
               for members, _ in sorted(groups, key=lambda g: (-len(g[0]), -g[1], g[0][0]))]
    rows = [{"group": gid, "kind": kind, "path": p, "sha256": sha_of[p]}
            for gid, (kind, members) in enumerate(ordered, start=1) for p in members]
    log.info("duplicates: %d exact and %d near groups at similarity >= %.4f (greyscale images: %.4f)", len(exact),
             len(near), threshold, grey_threshold(threshold))
    return pa.Table.from_pylist(rows, schema=DUPLICATES_SCHEMA)
