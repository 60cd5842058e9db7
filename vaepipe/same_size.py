"""Small pictures of one size compared pixel for pixel: the duplicate check's opinion on copies of icons.

An icon theme draws each icon again at 16, 22, 24, 32, 48 and 64 px, and a copy of one (re-saved as JPEG,
brightened, greyed, flattened) keeps its size. Scaled to the model's input and to the signatures'
32 px, such a copy follows its original no better than the icon's other sizes and its look-alikes do; on their
own grid, pixel for pixel, it follows its original clearly best (BENCHMARKS.md, "Duplicate groups").

So images of one size, up to SMALL_SIDE on their longer side, are compared with every other image of that size
(`nearest_of_size`): the correlation of their RGB pixels (brightness and contrast drop out), transparent pixels on
black and on white, the better. An image and the one it follows best are a pair (`same_size_pairs`) when that is at
least LEAST and clearly better than the image's next best: 1 - best at most RATIO times 1 - next (a ratio test on
distances, so that an exact copy of a document icon stands out from the other document icons, which follow it at
0.9 and up), and where the two differ the difference is spread over the picture, not in one spot (`spot_difference`
at most SPOT): two icons of one design (Tango's document-save and document-save-as, with a cursor in the label) follow
each other closely everywhere but there. Compared whole only: by their top three quarters (a caption band), two
icons of one arrow, one with a bar under it, are the same picture.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vaepipe.images import flatten, is_svg, open_image
from vaepipe.index import SearchIndex
from vaepipe.store import file_path
from vaepipe.views import unchanged

log = logging.getLogger("vaepipe")

SMALL_SIDE = 64
# Chosen on the three validation draws of the mixed folder and on every icon theme installed here, looked at
# (BENCHMARKS.md, "Duplicate groups"): looser, more copies of the draws are found (JPEG and brightened copies of 16 to
# 48 px icons) and a theme's own siblings pair up (battery levels, zoom in and out, volume low and medium).
LEAST = 0.97
RATIO = 0.2
SPOT = 0.3  # the most mean difference of z-scored pixels over any 3 x 3 pixels
BACKGROUNDS = (0, 255)
BLOCK = 512  # images compared at once with all of their size (a BLOCK x n matrix of correlations)


def load_on_backgrounds(path: str | Path, max_pixels: int = 64_000_000) -> np.ndarray:
    """A picture at its own size as RGB, transparency on each of BACKGROUNDS: uint8 (2, height, width, 3)."""
    img = open_image(path, max_pixels)
    return np.stack([np.asarray(flatten(img, bg).convert("RGB")) for bg in BACKGROUNDS])


def _z(planes: np.ndarray, bg: int) -> np.ndarray:
    """(m, 2, h, w, 3) uint8 -> (m, d) float32 rows of z-scores on that background, over sqrt(d): a dot product is a
    correlation. A picture of one colour is all zeros (it follows nothing)."""
    x = planes[:, bg].reshape(len(planes), -1).astype(np.float32)
    x -= x.mean(1, keepdims=True)
    std = x.std(1, keepdims=True)
    return np.divide(x, std * np.sqrt(x.shape[1]), out=np.zeros_like(x), where=std > 0)


@dataclass
class Nearest:
    """Each picture of one size: the one it follows best (an index into the pictures, -1 if none), that correlation
    (-1 if none), the next best (-1 if none), and on which of BACKGROUNDS (its index) it follows the best."""

    best: np.ndarray
    score: np.ndarray
    second: np.ndarray
    background: np.ndarray


def nearest_of_size(planes: np.ndarray) -> Nearest:
    """Pictures of one size, (m, 2, h, w, 3) uint8 (load_on_backgrounds), each compared with all the others, BLOCK at
    a time: the better correlation of the two backgrounds."""
    m = len(planes)
    out = Nearest(np.full(m, -1, np.int64), np.full(m, -1.0, np.float32), np.full(m, -1.0, np.float32),
                  np.zeros(m, np.int64))
    z = [_z(planes, bg) for bg in range(len(BACKGROUNDS))]
    for s in range(0, m, BLOCK):
        stop = min(m, s + BLOCK)
        each = np.stack([zb[s:stop] @ zb.T for zb in z])
        sim, background = each.max(0), each.argmax(0)
        sim[np.arange(stop - s), np.arange(s, stop)] = -np.inf  # not itself
        order = np.argsort(-sim, axis=1)[:, :2]
        top = np.take_along_axis(sim, order, 1)
        found = np.isfinite(top)
        out.best[s:stop] = np.where(found[:, 0], order[:, 0], -1)
        out.score[s:stop] = np.where(found[:, 0], top[:, 0], -1.0)
        out.background[s:stop] = np.take_along_axis(background, order[:, :1], 1)[:, 0]
        if order.shape[1] > 1:
            out.second[s:stop] = np.where(found[:, 1], top[:, 1], -1.0)
    return out


def spot_difference(a: np.ndarray, b: np.ndarray, background: int) -> float:
    """Two pictures of one size ((2, h, w, 3) uint8, load_on_backgrounds) on one of BACKGROUNDS (its index): the most
    that their z-scored pixels differ, on average over any 3 x 3 pixels (the edges repeated)."""
    pair = np.stack([a[background], b[background]]).astype(np.float32)
    pair -= pair.mean((1, 2, 3), keepdims=True)
    std = pair.std((1, 2, 3), keepdims=True)
    z = np.divide(pair, std, out=np.zeros_like(pair), where=std > 0)
    d = np.pad(np.abs(z[0] - z[1]).mean(-1), 1, mode="edge")
    h, w = a.shape[1:3]
    return float(sum(d[i:i + h, j:j + w] for i in range(3) for j in range(3)).max() / 9)


def clearly_best(near: Nearest) -> np.ndarray:
    """Which pictures follow their best at least LEAST, and clearly better than their next (the ratio test)."""
    return (near.best >= 0) & (near.score >= LEAST) & (1 - near.score <= RATIO * (1 - near.second))


def same_size_pairs(index: SearchIndex, image_root: Path, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index rows (a, b), a < b, of small pictures of one size that follow each other pixel for pixel clearly best
    (the module's rule). `sizes`: each index row's (width, height) as ingested (the manifest's). One picture per
    content (byte-identical files are an exact group already); files changed since indexing, unreadable now or of
    another size now are left out."""
    paths, shas = index.ids["path"].to_pylist(), index.ids["sha256"].to_pylist()
    sizes = np.asarray(sizes, np.int64).reshape(-1, 2)
    small = np.flatnonzero((sizes.max(1) <= SMALL_SIDE) & (sizes.min(1) > 0))
    first_of: dict[str, int] = {}
    for r in small.tolist():
        if not is_svg(paths[r]):  # drawn at the loader's size, not its own
            first_of.setdefault(shas[r], r)
    by_size: dict[tuple[int, int], list[int]] = {}
    for r in first_of.values():
        by_size.setdefault((int(sizes[r, 0]), int(sizes[r, 1])), []).append(r)
    a_out, b_out = [], []
    for (width, height), rows in sorted(by_size.items()):
        if len(rows) < 2:
            continue
        loaded, kept = [], []
        for r in rows:
            path = file_path(image_root, paths[r])
            try:
                planes = load_on_backgrounds(path) if unchanged(path, shas[r]) else None
            except Exception:  # Pillow raises anything; an unreadable picture is only not compared
                planes = None
            if planes is not None and planes.shape[1:3] == (height, width):
                loaded.append(planes)
                kept.append(r)
        if len(kept) < 2:
            continue
        near = nearest_of_size(np.stack(loaded))
        for i in np.flatnonzero(clearly_best(near)).tolist():
            j = int(near.best[i])
            if spot_difference(loaded[i], loaded[j], int(near.background[i])) > SPOT:
                continue
            a_out.append(min(kept[i], kept[j]))
            b_out.append(max(kept[i], kept[j]))
    if not a_out:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    pairs = np.unique(np.stack([a_out, b_out], 1), axis=0)
    log.info("duplicates: %d pairs of small pictures of one size that follow each other pixel for pixel",
             len(pairs))
    return pairs[:, 0], pairs[:, 1]
