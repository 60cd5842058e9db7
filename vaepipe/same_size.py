"""Small pictures compared pixel for pixel: the duplicate check's opinion on tone, JPEG, cropped and resized copies of
icons and clip art.

An icon theme draws each icon again at 16, 22, 24, 32, 48 and 64 px, and a copy of one made brighter, darker,
flattened or captioned keeps its size. Scaled to the model's input and to the signatures' 32 px, such a copy follows
its original no better than the icon's other sizes and its look-alikes do; on their own grid it is its original
through a tone curve, exactly (BENCHMARKS.md, "Duplicate groups").

So images of one size, up to SMALL_SIDE on their longer side, are compared with every other image of that size,
those above COMPARED_SIDE shrunk alike to it or under (a whole factor: the grids stay aligned) (`nearest_of_size`):
the correlation of their RGB pixels, transparent pixels on black and on white, the better. An image and the one it
follows best are a pair (`copies_of_size`) when that is at least LEAST and one is the other through a tone curve
(`curve_left` at most CURVE_LEFT): each channel of one a non-decreasing function of the other's, everywhere (where
both have transparency, on both backgrounds). Brightened with its highlights clipped, darker, with more contrast,
flattened: so is a copy, however little it follows its original once clipped; two icons of one design (Tango's
folder and folder_home, with a house on it; battery levels; volume low and medium) follow each other closely
everywhere but in one spot, which no curve explains.

A JPEG's blocks are no tone curve: where one of the two is a JPEG file, the other is also saved as that JPEG was
(its own quantisation tables and chroma subsampling, `jpeg_settings`, `resaved_as`) and the curve asked of that. A
16 px icon saved as a JPEG of quality 30 is its original saved so, pixel for pixel; its sibling saved so is not.

A copy can also be smaller than its original, made from it: a crop, or the original with a border added, is a
window of the larger picture, pixel for pixel; a half-size or squashed copy is the larger resized. A small picture
and the one larger picture among its nearest as stored that it was made from either way, through a tone curve, are
a pair (`smaller_copy_pairs`).

A caption band over a small icon (`captioned_pairs`) takes the copy away from its original when compared whole. A
picture whose bottom rows are opaque across the whole width, over rows where the other picture has transparency, is
compared above the band by the same rule. Not every picture's top three quarters: by them, two icons of one arrow,
one with a bar under it, are one picture; the bar does not cross the whole width.

The same comparison also keeps pairs apart that other rules made (`TwoDrawings`): two pictures of one size, both
with transparency, that are not one picture as they are nor one mirrored (above the bottom quarter, where a caption
band may lie): their opaque parts are other shapes, more than a pixel apart somewhere (a stick figure in another
pose, a check mark drawn twice), or one shape whose insides differ where no curve explains it (a face with another
mouth, a document icon and its template, a folder and the folder with a bookmark on it). No everyday edit makes that
of a picture: a copy that keeps its size and transparency keeps its shape and its inside (saved as WebP, sharpened
or blurred a little, made fainter, darker or captioned); a copy turned, cropped or with a border is of another size.
"""

from __future__ import annotations

import io
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image, JpegImagePlugin

from vaepipe.detail import NEIGHBOURS, inside
from vaepipe.images import flatten, is_svg, open_image
from vaepipe.index import SearchIndex
from vaepipe.store import file_path
from vaepipe.views import unchanged

log = logging.getLogger("vaepipe")

SMALL_SIDE = 256
COMPARED_SIDE = 64
# Chosen on the three validation draws of the mixed folder and on every icon theme installed here, looked at
# (BENCHMARKS.md, "Duplicate groups"): compared by how closely the pixels follow each other instead of by a curve, a
# theme's own siblings pair up. The curve is what tells them apart, so the least correlation only keeps out pictures
# that barely follow each other (a copy brightened 1.4 times and clipped follows its original at 0.67-0.88).
LEAST = 0.5
CURVE_LEFT = 0.05  # what the curve leaves, at most over any 3 x 3 pixels, in the made picture's standard deviations
# A caption band: bottom rows opaque (at least CAPTION_OPAQUE) across the whole width, a run of 1/8 to 1/3 of the
# picture's rows, over rows of the other picture that have transparency (under half opaque somewhere).
CAPTION_OPAQUE = 0.8
CAPTION_ROWS = (1 / 8, 1 / 3)
BACKGROUNDS = (0, 255)
BLOCK = 512  # images compared at once with all of their size (a BLOCK x n matrix of correlations)
# All of a size are compared with all (their z-scores held as float32, 24 bytes a pixel as compared): a size with more
# pixels than this in all is left to the other checks, so that memory stays bounded. Every icon theme installed here keeps
# under it (its largest, 3,458 pictures of 48 x 48 px, 8.0 million pixels: about 190 MB of z-scores).
MOST_PIXELS = 10_000_000
# Two drawings (TwoDrawings): less than SHAPE_ALIKE of either's shape (opacity over half its most opaque, top three
# quarters) lies within a pixel of the other's, or, shapes alike, a tone curve leaves more than DRAWN_APART over some
# 3 x 3 pixels inside both (a pixel in where the shapes are one outline, overlapping OUTLINE_ALIKE of their union; two
# where only alike: a blurred copy's edge moved). Chosen on the three validation draws, with real icons saved as WebP
# (quality 50, 75), sharpened, blurred, made fainter and captioned as the copies that must not be kept apart
# (BENCHMARKS.md, "Duplicate groups").
SHAPE_ALIKE = 0.9
OUTLINE_ALIKE = 0.99
DRAWN_APART = 0.75
KEPT_PICTURES = 2048  # pictures kept loaded (Pictures; each at most 24 KB at COMPARED_SIDE)
KEPT_IMAGES = 256  # pictures kept decoded (Pictures.image; each at most 256 KB at SMALL_SIDE)
# A picture is looked for as made from pictures whose sides are at most 1 / WINDOW_SHARE of its own (smaller_copy_pairs),
# resized only from those that follow it at least RESIZED_ROUGHLY shrunk alike (a resized copy follows at 0.9 and up).
WINDOW_SHARE = 0.5
RESIZED_ROUGHLY = 0.8


def compared_size(width: int, height: int) -> tuple[int, int]:
    """The (width, height) a picture of this size is compared at: its own up to COMPARED_SIDE, else shrunk by the
    least whole factor that brings it there."""
    factor = max(1, -(-max(width, height) // COMPARED_SIDE))
    return max(1, width // factor), max(1, height // factor)


def load_on_backgrounds(path: str | Path, max_pixels: int = 64_000_000) -> np.ndarray:
    """A picture as RGB at its compared_size (box-filtered), transparency on each of BACKGROUNDS: uint8
    (2, height, width, 3)."""
    img = open_image(path, max_pixels)
    return _compared([flatten(img, bg) for bg in BACKGROUNDS])


def _compared(flat: list[Image.Image]) -> np.ndarray:
    """A picture flattened on each of BACKGROUNDS -> uint8 (2, height, width, 3) RGB at its compared_size."""
    size = compared_size(*flat[0].size)
    flat = [f.convert("RGB") for f in flat]
    if size != flat[0].size:
        flat = [f.resize(size, Image.Resampling.BOX) for f in flat]
    return np.stack([np.asarray(f) for f in flat])


def jpeg_settings(path: str | Path) -> dict | None:
    """How a JPEG file was saved, as Pillow's save arguments (its quantisation tables, chroma subsampling and mode);
    None for a file of another format or mode, or one Pillow cannot read."""
    try:
        with Image.open(path) as img:
            if img.format != "JPEG" or img.mode not in ("L", "RGB") or not img.quantization:
                return None
            settings = {"mode": img.mode, "qtables": dict(img.quantization)}
            if img.mode == "RGB":
                settings["subsampling"] = JpegImagePlugin.get_sampling(img)
            return settings
    except Exception:  # Pillow raises anything; a file it cannot read is only not compared so
        return None


def resaved_as(path: str | Path, settings: dict, max_pixels: int = 64_000_000) -> np.ndarray:
    """load_on_backgrounds of a picture flattened on each of BACKGROUNDS and saved as a JPEG with `settings`
    (jpeg_settings), as it decodes again."""
    img = open_image(path, max_pixels)
    flat = []
    for bg in BACKGROUNDS:
        buf = io.BytesIO()
        options = {k: v for k, v in settings.items() if k != "mode"}
        flatten(img, bg).convert(settings["mode"]).save(buf, format="JPEG", **options)
        with Image.open(buf) as saved:
            flat.append(saved.convert("RGB"))
    return _compared(flat)


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
    (-1 if none), and on which of BACKGROUNDS (its index) it follows it."""

    best: np.ndarray
    score: np.ndarray
    background: np.ndarray


def nearest_of_size(planes: np.ndarray) -> Nearest:
    """Pictures of one size, (m, 2, h, w, 3) uint8 (load_on_backgrounds), each compared with all the others, BLOCK at
    a time: the better correlation of the two backgrounds."""
    m = len(planes)
    out = Nearest(np.full(m, -1, np.int64), np.full(m, -1.0, np.float32), np.zeros(m, np.int64))
    z = [_z(planes, bg) for bg in range(len(BACKGROUNDS))]
    for s in range(0, m, BLOCK):
        stop = min(m, s + BLOCK)
        each = np.stack([zb[s:stop] @ zb.T for zb in z])
        sim, background = each.max(0), each.argmax(0)
        sim[np.arange(stop - s), np.arange(s, stop)] = -np.inf  # not itself
        order = np.argsort(-sim, axis=1)[:, :1]
        top = np.take_along_axis(sim, order, 1)[:, 0]
        found = np.isfinite(top)
        out.best[s:stop] = np.where(found, order[:, 0], -1)
        out.score[s:stop] = np.where(found, top, -1.0)
        out.background[s:stop] = np.take_along_axis(background, order, 1)[:, 0]
    return out


def _most_over_3x3(d: np.ndarray, where: np.ndarray | None = None) -> float:
    """The largest mean of a (h, w) map over any 3 x 3 pixels (the edges repeated), or over those centred `where`
    (a (h, w) mask; 0 where it holds nowhere)."""
    h, w = d.shape
    p = np.pad(d, 1, mode="edge")
    means = sum(p[i:i + h, j:j + w] for i in range(3) for j in range(3)) / 9
    return float(means.max() if where is None else means[where].max(initial=0.0))


def _non_decreasing(y: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """The non-decreasing sequence nearest y in weighted least squares (pool adjacent violators)."""
    value, total, count = [], [], []
    for v, w in zip(y.tolist(), weight.tolist()):
        value.append(v)
        total.append(w)
        count.append(1)
        while len(value) > 1 and value[-2] > value[-1]:
            v2, w2, c2 = value.pop(), total.pop(), count.pop()
            value[-1] = (value[-1] * total[-1] + v2 * w2) / (total[-1] + w2)
            total[-1] += w2
            count[-1] += c2
    return np.repeat(value, count)


def tone_curved(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(h, w, 3) uint8 pictures -> b as nearly as a non-decreasing curve of a's levels makes it, channel by channel."""
    out = np.empty(b.shape, np.float64)
    for c in range(b.shape[-1]):
        _, at = np.unique(a[..., c], return_inverse=True)
        n = np.bincount(at.ravel())
        curve = _non_decreasing(np.bincount(at.ravel(), b[..., c].ravel().astype(np.float64)) / n, n)
        out[..., c] = curve[at.reshape(b.shape[:-1])]
    return out


def curve_left(a: np.ndarray, b: np.ndarray, background: int, where: np.ndarray | None = None) -> float:
    """Two pictures of one size ((2, h, w, 3) uint8, load_on_backgrounds) on one of BACKGROUNDS (its index): what the
    better tone curve (either made from the other, tone_curved) leaves, at most over any 3 x 3 pixels (those centred
    `where`, a (h, w) mask, if given), in the made picture's standard deviations."""
    best = np.inf
    for x, y in ((a[background], b[background]), (b[background], a[background])):
        left = np.abs(y - tone_curved(x, y)).mean(-1) / max(float(y.std()), 1e-6)
        best = min(best, _most_over_3x3(left, where))
    return best


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Two (h, w, 3) uint8 pictures -> the correlation of their pixels; 0 where either is of one colour."""
    z = _z(np.stack([a, b])[:, None], 0)
    return float(z[0] @ z[1])


def opacity(planes: np.ndarray) -> np.ndarray:
    """(m, 2, h, w, 3) uint8 (load_on_backgrounds) -> (m, h, w) opacity, from the difference of the backgrounds."""
    return 1 - (planes[:, 1].astype(np.float32) - planes[:, 0]).mean(-1) / (BACKGROUNDS[1] - BACKGROUNDS[0])


def caption_rows(alpha: np.ndarray) -> int:
    """A picture's opacity (h, w) -> how many of its bottom rows are a caption band (CAPTION_OPAQUE, CAPTION_ROWS);
    0 if none."""
    opaque = alpha.min(1) >= CAPTION_OPAQUE
    n = len(opaque) if opaque.all() else int(np.argmin(opaque[::-1]))
    return n if CAPTION_ROWS[0] * len(opaque) <= n <= CAPTION_ROWS[1] * len(opaque) else 0


def _one_picture(a: np.ndarray, b: np.ndarray, background: int) -> bool:
    """Whether two pictures of one size ((2, h, w, 3) uint8) are one through a tone curve: following each other at
    least LEAST and curve_left at most CURVE_LEFT on the given background or, where both have transparency, on both."""
    both = (a[0] != a[1]).any() and (b[0] != b[1]).any()
    return all(_correlation(a[bg], b[bg]) >= LEAST and curve_left(a, b, bg) <= CURVE_LEFT
               for bg in (range(len(BACKGROUNDS)) if both else [background]))


Resaved = Callable[[int, int], "np.ndarray | None"]  # (i, j) -> picture j saved as picture i's JPEG was, or None


def copies_of_size(planes: np.ndarray, resaved: Resaved | None = None) -> list[tuple[int, int]]:
    """Pictures of one size ((m, 2, h, w, 3) uint8, load_on_backgrounds) -> the pairs (i, j) of the module's rule.

    Where both have transparency, the curve must hold on both backgrounds: an icon drawn in black vanishes on black,
    and two such icons with one emblem (a mail and a cloud, each with the same badge) are one picture there.
    resaved(i, j): picture j saved as picture i's JPEG file was (resaved_as), None where i is not a JPEG."""
    near = nearest_of_size(planes)
    out = []
    for i in np.flatnonzero((near.best >= 0) & (near.score >= LEAST)).tolist():
        j, background = int(near.best[i]), int(near.background[i])
        if _one_picture(planes[i], planes[j], background) or (
                resaved is not None and _one_as_saved(planes, i, j, background, resaved)):
            out.append((i, j))
    return out + captioned_pairs(planes)


def _one_as_saved(planes: np.ndarray, i: int, j: int, background: int, resaved: Resaved) -> bool:
    """Whether either of pictures i and j is a JPEG that the other, saved as it was, is through a tone curve."""
    for jpeg, other in ((i, j), (j, i)):
        saved = resaved(jpeg, other)
        if saved is not None and _one_picture(planes[jpeg], saved, background):
            return True
    return False


def captioned_pairs(planes: np.ndarray) -> list[tuple[int, int]]:
    """Pictures of one size ((m, 2, h, w, 3) uint8) -> pairs (i, j): i has a caption band (caption_rows) over rows
    where j has transparency, and above the band follows j best of all (at least LEAST) and is j through a
    tone curve (_one_picture). Compared whole, the band takes a small icon's copy away from its original."""
    alpha = opacity(planes)
    bands = np.asarray([caption_rows(a) for a in alpha])
    out: list[tuple[int, int]] = []
    for band in np.unique(bands[bands > 0]).tolist():
        top = planes.shape[2] - band
        above = planes[:, :, :top]
        under = (alpha[:, top:] < 0.5).reshape(len(planes), -1).any(1)  # transparency the band would cover
        z = [_z(above, bg) for bg in range(len(BACKGROUNDS))]
        for i in np.flatnonzero(bands == band).tolist():
            each = np.stack([zb @ zb[i] for zb in z])
            sim, background = each.max(0), each.argmax(0)
            sim[i] = -np.inf
            j = int(np.argmax(sim))
            if under[j] and sim[j] >= LEAST and _one_picture(above[i], above[j], int(background[j])):
                out.append((i, j))
    return out


def _loaded_as_indexed(path: Path, sha256: str, compared: tuple[int, int]) -> np.ndarray | None:
    """load_on_backgrounds of a collection file still as it was indexed and of the size it had then (compared at
    `compared`); None for a file changed, unreadable or of another size now."""
    try:
        planes = load_on_backgrounds(path) if unchanged(path, sha256) else None
    except Exception:  # Pillow raises anything; an unreadable picture is only not compared
        return None
    return planes if planes is not None and planes.shape[1:3] == compared[::-1] else None


def same_size_pairs(index: SearchIndex, image_root: Path, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index rows (a, b), a < b, of small pictures of one size that follow each other pixel for pixel clearly best
    (the module's rule). `sizes`: each index row's (width, height) as ingested (the manifest's). One picture per
    content (byte-identical files are an exact group already); files changed since indexing, unreadable now or of
    another size now are left out."""
    sizes = np.asarray(sizes, np.int64).reshape(-1, 2)
    small = np.flatnonzero((sizes.max(1) <= SMALL_SIDE) & (sizes.min(1) > 0))
    # The small pictures' paths only: a folder of photographs has none, and every path as a Python string would cost
    # ~200 B an image.
    paths = dict(zip(small.tolist(), index.ids["path"].take(small).to_pylist()))
    shas = dict(zip(small.tolist(), index.ids["sha256"].take(small).to_pylist()))
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
        compared = compared_size(width, height)
        if len(rows) * compared[0] * compared[1] > MOST_PIXELS:
            log.info("duplicates: %d pictures of %d x %d px are too many to compare pixel for pixel, all with all",
                     len(rows), width, height)
            continue
        loaded, kept = [], []
        for r in rows:
            planes = _loaded_as_indexed(file_path(image_root, paths[r]), shas[r], compared)
            if planes is not None:
                loaded.append(planes)
                kept.append(r)
        if len(kept) < 2:
            continue
        jpegs = {k: settings for k, r in enumerate(kept) if (settings := jpeg_settings(file_path(image_root, paths[r])))}

        def resaved(i: int, j: int, kept: list[int] = kept, jpegs: dict = jpegs) -> np.ndarray | None:
            if i not in jpegs:
                return None
            try:
                return resaved_as(file_path(image_root, paths[kept[j]]), jpegs[i])
            except Exception:  # Pillow raises anything; changed since it was loaded, say
                return None

        for i, j in copies_of_size(np.stack(loaded), resaved):
            a_out.append(min(kept[i], kept[j]))
            b_out.append(max(kept[i], kept[j]))
    if not a_out:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    pairs = np.unique(np.stack([a_out, b_out], 1), axis=0)
    log.info("duplicates: %d pairs of small pictures of one size that follow each other pixel for pixel",
             len(pairs))
    return pairs[:, 0], pairs[:, 1]


def _shape(planes: np.ndarray, rows: int) -> np.ndarray:
    """(2, h, w, 3) uint8 (load_on_backgrounds) -> where its top `rows` are opaque (rows, w): over half their most
    opaque, so that a copy made fainter keeps its shape."""
    alpha = opacity(planes[None, :, :rows])[0]
    return alpha > 0.5 * alpha.max()


def _shape_alike(a: np.ndarray, b: np.ndarray) -> float:
    """Two shapes (h, w) bool -> the least share of either within a pixel of the other (blurred or sharpened, a
    thin line moves by one)."""
    near_a, near_b = ~inside(~a[None], steps=1)[0], ~inside(~b[None], steps=1)[0]
    return min((a & near_b).sum() / max(a.sum(), 1), (b & near_a).sum() / max(b.sum(), 1))


def two_drawings(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two pictures of one size ((2, h, w, 3) uint8, load_on_backgrounds), both with transparency, are two
    drawings: over the top three quarters, b as it is has another shape than a (_shape_alike under SHAPE_ALIKE) or a
    tone curve leaves more than DRAWN_APART inside both (away from their edges) on either background, and b mirrored
    is not a's outline or leaves that much too. Below the top three quarters a caption band may lie over the picture;
    along the edge, a copy made fainter (its transparency scaled) meets the backgrounds otherwise than its original."""
    if not ((a[0] != a[1]).any() and (b[0] != b[1]).any()):
        return False
    top = a.shape[1] * 3 // 4
    shape_a = _shape(a, top)
    for mirrored, other in enumerate((b, b[:, :, ::-1])):
        shape_b = _shape(other, top)
        if not (shape_a.any() and shape_b.any()):
            return False  # nothing to compare above a caption's rows
        one_outline = (shape_a & shape_b).sum() >= OUTLINE_ALIKE * (shape_a | shape_b).sum()
        if mirrored and not one_outline:
            continue  # not a mirrored copy
        if not one_outline and _shape_alike(shape_a, shape_b) < SHAPE_ALIKE:
            continue  # other shapes
        within = inside((shape_a & shape_b)[None], steps=1 if one_outline else 2)[0]  # away from the edge
        if not within.any() or max(curve_left(a[:, :top], other[:, :top], bg, within)
                                   for bg in range(len(BACKGROUNDS))) <= DRAWN_APART:
            return False  # one picture, as it is or mirrored
    return True


class Pictures:
    """A collection's small pictures by index row, as load_on_backgrounds gives them and still as indexed
    (_loaded_as_indexed; None otherwise), loaded when first asked for (the last KEPT_PICTURES are kept).

    sizes: each index row's (width, height) as ingested (store.image_sizes)."""

    def __init__(self, index: SearchIndex, image_root: Path, sizes: np.ndarray):
        self.ids, self.contents = index.ids, index.contents
        self.image_root = image_root
        self.sizes = np.asarray(sizes, np.int64).reshape(-1, 2)
        self.kept: OrderedDict[int, np.ndarray | None] = OrderedDict()
        self.images: OrderedDict[int, Image.Image | None] = OrderedDict()

    def small(self, side: int) -> np.ndarray:
        """Which rows are pictures up to `side` px that are not SVG (drawn at the loader's size, not their own)."""
        out = (self.sizes.max(1) <= side) & (self.sizes.min(1) > 0)
        rows = np.flatnonzero(out)
        out[rows] = [not is_svg(p) for p in self.ids["path"].take(rows).to_pylist()]
        return out

    def image(self, row: int) -> Image.Image | None:
        """The picture at an index row, decoded, if its file still holds what was indexed (the last KEPT_IMAGES are
        kept)."""
        if row in self.images:
            self.images.move_to_end(row)
            return self.images[row]
        path, sha = self._file(row)
        try:
            img = open_image(path, 64_000_000) if unchanged(path, sha) else None
        except Exception:  # Pillow raises anything; an unreadable picture is only not compared
            img = None
        self.images[row] = img
        if len(self.images) > KEPT_IMAGES:
            self.images.popitem(last=False)
        return img

    def _file(self, row: int) -> tuple[Path, str]:
        """An index row's file and its sha256 as indexed (read a row at a time: the whole columns as Python strings
        would cost ~200 B an image of a large folder, for its few small pictures)."""
        return file_path(self.image_root, self.ids["path"][row].as_py()), self.ids["sha256"][row].as_py()

    def __call__(self, row: int) -> np.ndarray | None:
        if row in self.kept:
            self.kept.move_to_end(row)
            return self.kept[row]
        planes = _loaded_as_indexed(*self._file(row), compared_size(*self.sizes[row].tolist()))
        self.kept[row] = planes
        if len(self.kept) > KEPT_PICTURES:
            self.kept.popitem(last=False)
        return planes


class TwoDrawings:
    """Which pairs of a collection's pictures are two drawings (two_drawings), for the duplicate
    check to keep apart. Only pictures of one size, up to SMALL_SIDE, with transparency are looked at; each is
    loaded once (Pictures, shared with smaller_copy_pairs).

    pictures: the collection's (Pictures); transparent: each index row, whether it may have transparency (a picture
    known to be opaque is not loaded)."""

    def __init__(self, pictures: Pictures, transparent: np.ndarray):
        self.pictures = pictures
        self.sizes = pictures.sizes
        self.looked_at = self.pictures.small(SMALL_SIDE) & np.asarray(transparent, bool)

    def apart(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Pairs of index rows (a[i], b[i]) -> which are two drawings."""
        out = np.zeros(len(a), bool)
        same = np.flatnonzero(self.looked_at[a] & self.looked_at[b] & (self.sizes[a] == self.sizes[b]).all(1))
        for i in same[np.argsort(a[same], kind="stable")].tolist():  # each picture's pairs together: loaded once
            pa, pb = self.pictures(int(a[i])), self.pictures(int(b[i]))
            out[i] = pa is not None and pb is not None and two_drawings(pa, pb)
        return out


def best_window(small: np.ndarray, large: np.ndarray) -> tuple[float, int, int, int]:
    """Two pictures ((2, h, w, 3) uint8, load_on_backgrounds), `small` nowhere larger than `large` -> how closely
    small follows the window of large it follows best (the correlation of their pixels), on which of BACKGROUNDS
    (its index), and that window's top and left."""
    h, w = small.shape[1:3]
    best = (-1.0, 0, 0, 0)
    for bg in range(len(BACKGROUNDS)):
        z = _z(small[None], bg)[0].reshape(h, w, 3)  # mean 0, so a window's own mean drops out of the dot product
        big = large[bg].astype(np.float64)
        dot = np.einsum("yxhwc,hwc->yx", sliding_window_view(big, (h, w, 3))[:, :, 0], z)
        total, squares = _window_sums(big.sum(-1), h, w), _window_sums((big ** 2).sum(-1), h, w)
        d = h * w * 3
        std = np.sqrt(np.maximum(squares / d - (total / d) ** 2, 0))
        corr = np.divide(dot, std * np.sqrt(d), out=np.zeros_like(dot), where=std > 1e-3)
        top, left = np.unravel_index(int(np.argmax(corr)), corr.shape)
        if corr[top, left] > best[0]:
            best = (float(corr[top, left]), bg, int(top), int(left))
    return best


def _window_sums(x: np.ndarray, h: int, w: int) -> np.ndarray:
    """(H, W) -> (H - h + 1, W - w + 1): the sum over each h x w window (from the integral image)."""
    c = np.pad(x, ((1, 0), (1, 0))).cumsum(0).cumsum(1)
    return c[h:, w:] - c[:-h, w:] - c[h:, :-w] + c[:-h, :-w]


# Pillow's own resamplers; other tools' come close to one of them (BENCHMARKS.md, "Duplicate groups").
RESIZERS = (Image.Resampling.NEAREST, Image.Resampling.BOX, Image.Resampling.BILINEAR, Image.Resampling.HAMMING,
            Image.Resampling.BICUBIC, Image.Resampling.LANCZOS)


def resized_like(img: Image.Image, size: tuple[int, int]) -> list[np.ndarray]:
    """A picture resized to (width, height) by each of RESIZERS, as load_on_backgrounds gives a picture of that
    size: transparency resized with the colour, then flattened."""
    return [_compared([flatten(img.resize(size, method), bg) for bg in BACKGROUNDS]) for method in RESIZERS]


def _made_from(pictures: Pictures, small_row: int, large_row: int) -> bool:
    """Whether the picture at small_row is a window of the one at large_row (looked for up to COMPARED_SIDE, at full
    size) or that picture resized, through a tone curve. Both are loaded (Pictures)."""
    small, large = pictures(small_row), pictures(large_row)
    if small is None or large is None:
        return False
    sizes = tuple(pictures.sizes[small_row].tolist()), tuple(pictures.sizes[large_row].tolist())
    if max(max(sizes[0]), max(sizes[1])) <= COMPARED_SIDE:
        alike, background, top, left = best_window(small, large)
        if alike >= LEAST and _one_picture(small, large[:, top:top + small.shape[1], left:left + small.shape[2]],
                                           background):
            return True
    # The larger shrunk alike (its compared planes, box-filtered to the smaller's): a resized copy follows it closely,
    # and resizing by every method is only worth it then.
    rough = np.stack([np.asarray(Image.fromarray(plane).resize(small.shape[2:0:-1], Image.Resampling.BOX))
                      for plane in large])
    if max(_correlation(small[bg], rough[bg]) for bg in range(len(BACKGROUNDS))) < RESIZED_ROUGHLY:
        return False
    img = pictures.image(large_row)
    if img is None:
        return False
    best, background, resized = -1.0, 0, None
    for planes in resized_like(img, sizes[0]):
        for bg in range(len(BACKGROUNDS)):
            alike = _correlation(small[bg], planes[bg])
            if alike > best:
                best, background, resized = alike, bg, planes
    return best >= LEAST and _one_picture(small, resized, background)


def smaller_copy_pairs(pictures: Pictures, nearest: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Index rows (a, b), a < b, of a picture up to SMALL_SIDE and the one larger picture among its NEIGHBOURS
    nearest as stored (`nearest`: SearchIndex.nearest_of_all) that it was made from, pixel for pixel through a tone
    curve (as _one_picture asks of pictures of one size):
      a window of it, up to COMPARED_SIDE: the window it follows best (best_window), at least LEAST: a crop keeps the
        pixels it keeps, and a border added around a picture keeps the picture as its window;
      it resized to the smaller's size by one of RESIZERS (resized_like), the one it follows best, at least LEAST,
        compared at the smaller's compared_size: half size, an aspect changed.
    Larger means no smaller either way and at most 1 / WINDOW_SHARE of the side; a picture made from two pictures
    that way (two icons that differ outside its window) pairs with neither. pictures: the collection's (Pictures)."""
    sizes, content = pictures.sizes, pictures.contents
    small = pictures.small(SMALL_SIDE)
    a_out, b_out = [], []
    for r in np.flatnonzero(small & (sizes.min(1) >= 4)).tolist():
        others = [o for o in nearest[0][r, 1:NEIGHBOURS + 1].tolist() if o >= 0 and small[o] and content[o] != content[r]
                  and (sizes[o] >= sizes[r]).all() and (sizes[o] != sizes[r]).any()
                  and (sizes[r] >= WINDOW_SHARE * sizes[o]).all()]
        if not others or pictures(r) is None:  # its own planes first: the LRU keeps them through its candidates
            continue
        found: dict[int, int] = {}
        for o in others:
            if _made_from(pictures, r, o):
                found.setdefault(int(content[o]), o)
        if len(found) == 1:
            o = next(iter(found.values()))
            a_out.append(min(r, o))
            b_out.append(max(r, o))
    if not a_out:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    pairs = np.unique(np.stack([a_out, b_out], 1), axis=0)
    log.info("duplicates: %d pairs of a small picture and a larger one it was made from (a window of it, or it "
             "resized)", len(pairs))
    return pairs[:, 0], pairs[:, 1]
