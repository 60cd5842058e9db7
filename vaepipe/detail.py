"""Fine detail: two images compared in pixels, the duplicate check's second opinion on the code.

The code says which pictures look alike. It puts a darker or captioned copy of a small icon a little further from its
original than the icon's look-alikes, and every near-plain dark tile close to every other (BENCHMARKS.md, "Duplicate
groups"). Pixels tell these apart. Each image's model input, greyed, at 32 px, with transparent pixels on black and
on white (a copy saved as JPEG was flattened on white), is its signature (`signatures`), and
  duplicates.fine_detail_pairs  joins two images whose fine detail (the signature less its blur: edges and texture,
      not brightness or gradients) matches each other's best among their nearest images, clearly better than the
      next (a ratio test, as duplicates.only_copy_pairs does with the code);
  Signatures.plain_look_alikes  picks out pairs of near-plain pictures whose pixels do not follow each other: the
      code cannot tell such pictures apart, and a person would not call them copies;
  Signatures.other_colours  picks out pairs of colourful pictures of clearly other hues (each image's mean colour is
      kept with its signature): the code is taught to see through colour, and no everyday edit turns a picture's;
  duplicates.turned_pairs  joins two images that are each other's nearest whose pixels, one turned and zoomed over a
      small grid to fit the other (`warped_correlation`), match clearly better than either's other near images: a
      turned or cropped copy, whose pixels as they are follow its original's no better than a look-alike's;
  Signatures.pixels_differ  picks out pairs of opaque pictures whose pixels follow each other poorly however they
      are compared (as they are, mirrored, by the top three quarters, either turned and zoomed to fit the other):
      neighbouring crops of one wallpaper and other photographs of one smooth look, which the code puts close.
Pixels are compared by correlation (brightness and contrast drop out), as they are, mirrored, and by their top
three quarters (a caption band along the bottom), in whichever background matches better.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vaepipe.config import usable_cores
from vaepipe.batches import iter_image_batches
from vaepipe.images import SIGNATURE_SHAPE, SIGNATURE_SIDE, ImageSpec
from vaepipe.index import SearchIndex
from vaepipe.store import file_path, gathered, kept_rows, release, scratch_array
from vaepipe.views import PART_ROWS, ViewCache, scratch_folder, unchanged

log = logging.getLogger("vaepipe")

NEIGHBOURS = 20  # each image's nearest as stored that the ratio test looks at
CANDIDATE_SIMILARITY = 0.5  # ... at least this alike as stored
FINE_LEAST = 0.9
FINE_MARGIN = 0.15
# Near-plain: grey levels' standard deviation below PLAIN_STD (of 255) in both images; such a pair stays joined only
# if its pixels follow each other (correlation >= PLAIN_LEAST). Pictures of one colour (below FLAT_STD) have no
# pixels to correlate: the code's say stands.
PLAIN_STD = 10.0
FLAT_STD = 1.0
PLAIN_LEAST = 0.95
# Pictures whose mean colours are of clearly other hues are not copies: no everyday edit turns a picture's colour
# (greying takes it away; brightness and a border or background of black or white keep its hue).
COLOURFUL = 20.0
HUE_APART = 45.0
# Pixels matched over small turns and zooms (warped_correlation): a grid, not the benchmark's own edits, wide enough
# for a copy turned by ~10 degrees (which also shrinks it inside its larger canvas) or cropped by a fifth. Compared
# within the central disc, which every warp keeps inside the picture. How well, and how much better than with the
# images' other neighbours, was chosen on the validation folders (BENCHMARKS.md, "Duplicate groups").
TURNS = (-12.0, -8.0, -4.0, 0.0, 4.0, 8.0, 12.0)
ZOOMS = tuple(float(z) for z in 1.28 ** np.linspace(-1, 1, 7))  # 0.78 .. 1.28, 1 itself in the middle
DISC = 0.8
TURNED_LEAST = 0.7
TURNED_MARGIN = 0.2
# Two opaque pictures (a photograph's signature is its pixels) stay paired only if their pixels follow each other at
# least this well by some comparison. Not for pictures with transparency: an icon theme draws an icon again for each
# size, and a small drawing's pixels follow its large one's poorly. Chosen on the validation folders and the 3,000
# photos of the peers benchmark (BENCHMARKS.md, "Duplicate groups").
PIXELS_LEAST = 0.9
# A match of fine detail between pictures with transparency must also hold where both are opaque: a photograph turned
# with its canvas grown has corners of one colour, read as transparency, and the edge of those corners is fine detail
# that every picture turned by as much shares. True pairs on the validation mixed folder held 0.84 and up there
# (BENCHMARKS.md, "Duplicate groups"). Pixels next to transparency are left out, as far as the blur reaches.
OPAQUE_FINE_LEAST = 0.75
OPAQUE_LEAST_PIXELS = 64  # fewer pixels opaque in both: nothing to compare, the match stands


def _hue(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, 3) RGB -> hue in degrees and chroma (of 255), from the opponent axes: adding grey (a background of black
    or white showing more or less) or scaling the levels (brightness) moves neither the hue nor whether it is
    colourful."""
    r, g, b = rgb.astype(np.float32).T
    x, y = r - (g + b) / 2, np.sqrt(3) / 2 * (g - b)
    return np.degrees(np.arctan2(y, x)), np.hypot(x, y)


def _blur_matrix(side: int, sigma: float = 1.0, radius: int = 4) -> np.ndarray:
    """(side, side) K with x @ K = x blurred along its last axis by a Gaussian, edges mirrored (numpy's
    "symmetric" padding, scipy.ndimage's "reflect")."""
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    k = np.zeros((side, side), np.float32)
    for i in range(side):
        for t, w in zip(range(-radius, radius + 1), taps):
            j = i + t
            j = -j - 1 if j < 0 else (2 * side - j - 1 if j >= side else j)
            k[j, i] += w
    return k


_BLUR = _blur_matrix(SIGNATURE_SIDE)
BLOCK = 1024  # pairs compared at a time
TOP = SIGNATURE_SIDE * 3 // 4  # the top three quarters: what a caption band along the bottom leaves alone


def fine(sig: np.ndarray) -> np.ndarray:
    """Signatures less their blur (a Gaussian of 1 px): what is left is edges and texture."""
    sig = sig.astype(np.float32)
    return sig - _BLUR.T @ sig @ _BLUR


def _normalised(x: np.ndarray) -> np.ndarray:
    """(..., h, w) -> the same, each (h, w) plane zero mean and unit length: summed products are correlations."""
    x = x.astype(np.float32)
    x = x - x.mean((-2, -1), keepdims=True)
    return x / np.sqrt((x * x).sum((-2, -1), keepdims=True) + 1e-6)


def _correlate(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairs of normalised planes (n, backgrounds, h, w) -> their best correlation: as they are, with b mirrored
    (mirroring a normalised plane is normalising the mirrored one), and of their top three quarters, in either
    background, (n,)."""
    a, b = a.astype(np.float32, copy=False), b.astype(np.float32, copy=False)
    top_a, top_b = _normalised(a[..., :TOP, :]), _normalised(b[..., :TOP, :])  # normalising is blind to (f - m) / s
    return np.maximum.reduce([
        np.einsum("nbij,nbij->nb", a, b),
        np.einsum("nbij,nbij->nb", a, b[..., ::-1]),
        np.einsum("nbij,nbij->nb", top_a, top_b),
    ]).max(-1)


def inside(mask: np.ndarray, steps: int = 2) -> np.ndarray:
    """(n, h, w) masks less `steps` pixels next to what they leave out (the picture's own edge does not count)."""
    for _ in range(steps):
        m = mask.copy()
        m[:, 1:] &= mask[:, :-1]
        m[:, :-1] &= mask[:, 1:]
        m[:, :, 1:] &= mask[:, :, :-1]
        m[:, :, :-1] &= mask[:, :, 1:]
        mask = m
    return mask


def _masked_correlation(x: np.ndarray, y: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Planes (n, h, w) and where to compare them -> their correlation over the mask, (n,); nan where the mask holds
    fewer than OPAQUE_LEAST_PIXELS pixels."""
    m = mask.astype(np.float32)
    count = m.sum((1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        xc = (x - ((x * m).sum((1, 2)) / count)[:, None, None]) * m
        yc = (y - ((y * m).sum((1, 2)) / count)[:, None, None]) * m
        out = (xc * yc).sum((1, 2)) / np.sqrt((xc * xc).sum((1, 2)) * (yc * yc).sum((1, 2)) + 1e-6)
    return np.where(count >= OPAQUE_LEAST_PIXELS, out, np.nan)


def correlation(sig_a: np.ndarray, sig_b: np.ndarray) -> np.ndarray:
    """Pairs of signatures (n, *SIGNATURE_SHAPE) -> how well their pixels follow each other at best: the
    correlation as they are, with b mirrored, and of their top three quarters, in either background, (n,)."""
    return _correlate(_normalised(sig_a), _normalised(sig_b))


def _warp_grid() -> tuple[torch.Tensor, np.ndarray]:
    """Where each pixel of the central disc samples a picture, for every turn and zoom: (1, warps, pixels, 2) in
    grid_sample's coordinates (-1 to 1), and the disc as a mask over the flattened plane."""
    centres = (np.arange(SIGNATURE_SIDE) + 0.5) / SIGNATURE_SIDE * 2 - 1
    y, x = np.meshgrid(centres, centres, indexing="ij")
    inside = x ** 2 + y ** 2 <= DISC ** 2
    x, y = x[inside], y[inside]
    warps = []
    for zoom in ZOOMS:
        for turn in np.radians(TURNS):
            cos, sin = np.cos(turn), np.sin(turn)
            warps.append(np.stack([zoom * (cos * x - sin * y), zoom * (sin * x + cos * y)], -1))
    return torch.tensor(np.stack(warps)[None], dtype=torch.float32), inside.reshape(-1)


def _unit(x: torch.Tensor) -> torch.Tensor:
    """Planes of pixels along the last axis -> zero mean, unit length (a plane of one level stays all but zero)."""
    x = x - x.mean(-1, keepdim=True)
    return x / x.norm(dim=-1, keepdim=True).clamp(min=1e-3)


@torch.no_grad()
def warped_correlation(sig: np.ndarray, who: np.ndarray, others: np.ndarray, block: int = 32) -> np.ndarray:
    """Signatures (m, backgrounds, side, side), rows `who` (A,) and for each a row of `others` (A, K; -1 where none)
    -> (A, K): the best correlation of each `who`, turned by TURNS and zoomed by ZOOMS, with each of its others as
    they are, within the central disc, in any background; -inf where none. Each `who` is warped once for all its
    others: on a folder of look-alikes the warps, not the comparisons, are the cost."""
    grid, inside = _warp_grid()
    warps, pixels = grid.shape[1], grid.shape[2]
    rows, slot = np.unique(others[others >= 0], return_inverse=True)
    planes = torch.empty((len(rows), sig.shape[1], pixels), dtype=torch.float16)
    for s in range(0, len(rows), BLOCK):  # held as float16: at 30,000 images nearly every image is someone's other
        disc = torch.from_numpy(gathered(sig, rows[s:s + BLOCK]).astype(np.float32)).flatten(2)
        planes[s:s + BLOCK] = _unit(disc[:, :, torch.from_numpy(inside)]).half()
    where = np.full(others.shape, -1, np.int64)
    where[others >= 0] = slot
    out = np.full(others.shape, -np.inf, np.float32)
    for s in range(0, len(who), block):
        x = torch.from_numpy(sig[who[s:s + block]].astype(np.float32))
        n = len(x)
        # Every background plane of every image sampled at once: grid_sample warps all channels alike.
        warped = F.grid_sample(x.reshape(1, -1, SIGNATURE_SIDE, SIGNATURE_SIDE), grid, mode="bilinear",
                               padding_mode="border", align_corners=False)[0]
        warped = _unit(warped).reshape(n, -1, warps, pixels)
        at = where[s:s + block]
        theirs = torch.zeros((n, at.shape[1], sig.shape[1], pixels))
        theirs[torch.from_numpy(at >= 0)] = planes[torch.from_numpy(at[at >= 0])].float()
        best = torch.einsum("nbwp,nkbp->nbwk", warped, theirs).amax((1, 2)).numpy()
        out[s:s + block] = np.where(at >= 0, best, -np.inf)
    return out


def paired_warped_correlation(sig: np.ndarray, who: np.ndarray, other: np.ndarray, most: int = 32) -> np.ndarray:
    """Pairs of signature rows (who[i], other[i]) -> the warped_correlation of each, (n,): each `who` is warped once
    for up to `most` of its others (an image in many pairs once more for each further `most`)."""
    order = np.argsort(who, kind="stable")
    rank = np.arange(len(who)) - np.searchsorted(who[order], who[order])  # each pair's place among its who's
    keys, row = np.unique(np.stack([who[order], rank // most], 1), axis=0, return_inverse=True)
    row, slot = row.reshape(-1), rank % most
    others = np.full((len(keys), most), -1, np.int64)
    others[row, slot] = other[order]
    out = np.empty(len(who), np.float32)
    out[order] = warped_correlation(sig, keys[:, 0], others)[row, slot]
    return out


def collection_signatures(index: SearchIndex, image_root: Path, rows: np.ndarray, cache: ViewCache | None = None
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Signatures of collection images (index rows): from the cache, else of files unchanged since indexing that
    load now (then added to the cache). Returns the rows that have one, in the order given, their signatures (a
    store.scratch_array in the cache's folder) and their mean colours."""
    paths, shas = index.ids["path"].to_pylist(), index.ids["sha256"].to_pylist()
    # Each signature goes straight to its place, in a file: on a folder of look-alikes nearly every image has one,
    # 4 KB each, and memory should not grow with the folder (what is written is released as it goes).
    # float16 holds the grey levels (quarters from 0 to 255) exactly.
    sig = scratch_array((len(rows), *SIGNATURE_SHAPE), np.float16, scratch_folder(cache))
    colour = np.empty((len(rows), 3), np.float32)
    got = np.zeros(len(rows), bool)
    where: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        where.setdefault(shas[r], []).append(i)
    for found, sigs, colours in cache.get_signatures(list(where)) if cache is not None else ():
        for j, sha in enumerate(found):
            for i in where.get(sha, ()):
                sig[i], colour[i], got[i] = sigs[j], colours[j], True
        release(sig)
    todo = [i for i in np.flatnonzero(~got) if unchanged(file_path(image_root, paths[rows[i]]), shas[rows[i]])]
    files = [file_path(image_root, paths[rows[i]]) for i in todo]
    new: list[int] = []  # made now, not yet in the cache
    # Decoded by a process per core, as the views are (the spec is only the loader's; signatures have their own).
    spec = ImageSpec(SIGNATURE_SIDE, 1)
    for (sigs, colours), idx, errors in iter_image_batches(files, spec, 64, usable_cores() if len(files) > 64 else 0,
                                                           what="signatures"):
        for j, e in enumerate(errors):
            if not e:
                i = todo[idx[j]]
                sig[i], colour[i], got[i] = sigs[j], colours[j], True
                new.append(i)
        if cache is not None and len(new) >= PART_ROWS:  # a part at a time: a copy of a part, not of the folder's
            cache.put_signatures([shas[rows[i]] for i in new], sig[new], colour[new])
            new = []
        release(sig)
    if cache is not None and new:
        cache.put_signatures([shas[rows[i]] for i in new], sig[new], colour[new])
    if not got.all():  # changed since indexing, or unreadable now
        sig, colour = kept_rows(sig, got), colour[got]
    return np.asarray(rows, np.int64)[got], sig, colour


def nearest_pairs(index: SearchIndex, nearest: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Index rows (a, b), a < b, of each image and its NEIGHBOURS nearest as stored (`nearest`:
    SearchIndex.nearest_of_all with at least NEIGHBOURS + 1 columns) at least CANDIDATE_SIMILARITY alike, of other
    content: n * NEIGHBOURS pairs at most, however alike the folder's pictures are."""
    found, sim = nearest[0][:, :NEIGHBOURS + 1], nearest[1][:, :NEIGHBOURS + 1]
    q = np.repeat(np.arange(len(found)), found.shape[1]).reshape(found.shape)
    keep = (found >= 0) & (found != q) & (sim >= CANDIDATE_SIMILARITY)
    q, found = q[keep], found[keep]
    keep = index.contents[q] != index.contents[found]
    pairs = np.unique(np.stack([np.minimum(q, found)[keep], np.maximum(q, found)[keep]], 1), axis=0).reshape(-1, 2)
    return pairs[:, 0], pairs[:, 1]


@dataclass
class Signatures:
    """Collection images' signatures by index row (`of`); an image without one (changed since indexing, or
    unreadable now) is not compared: its pairs' correlation is -inf and it is never near-plain."""

    at: np.ndarray  # (n,) index row -> row of sig, -1 where none
    sig: np.ndarray  # (m, *SIGNATURE_SHAPE) grey levels, float16 (exact); a store.scratch_array
    detail: np.ndarray  # (m, *SIGNATURE_SHAPE) their fine detail, normalised, float16; a store.scratch_array
    colour: np.ndarray  # (m, 3) mean RGB on black
    spread: np.ndarray  # (n,) index row -> standard deviation of its grey levels on black, inf where none
    opaque: np.ndarray  # (n,) index row -> its signature is one plane in every background (no transparency)

    @classmethod
    def of(cls, index: SearchIndex, image_root: Path, rows: np.ndarray, cache: ViewCache | None = None
           ) -> Signatures:
        have, sig, colour = collection_signatures(index, image_root, rows, cache)
        at = np.full(index.meta["n"], -1, np.int64)
        at[have] = np.arange(len(have))
        # 4 KB an image each, made a block at a time, in a file beside the signatures (each method works a block at
        # a time and releases what it read). float16 keeps the normalised detail's correlations to about 1e-3; a
        # block is made float32 again to correlate (float16 arithmetic is twice as slow).
        detail = scratch_array((len(sig), *SIGNATURE_SHAPE), np.float16, scratch_folder(cache))
        spread, opaque = np.full(len(at), np.inf, np.float32), np.zeros(len(at), bool)
        for s in range(0, len(sig), BLOCK):
            block = sig[s:s + BLOCK]
            detail[s:s + BLOCK] = _normalised(fine(block))
            spread[have[s:s + BLOCK]] = block[:, 0].reshape(len(block), -1).std(1, dtype=np.float32)
            opaque[have[s:s + BLOCK]] = (block[:, :1] == block[:, 1:]).reshape(len(block), -1).all(1)
            release(sig)
            release(detail)
        return cls(at, sig, detail, colour, spread, opaque)

    def _release(self) -> None:
        """After a block of work: what it read of the signatures and detail goes back to their files."""
        release(self.sig)
        release(self.detail)

    def correlation(self, a: np.ndarray, b: np.ndarray, fine_detail: bool = False) -> np.ndarray:
        """Pairs of index rows -> `correlation` of their signatures, or of their fine detail; -inf where either
        has none."""
        out = np.full(len(a), -np.inf, np.float32)
        ok = np.flatnonzero((self.at[a] >= 0) & (self.at[b] >= 0))
        for s in range(0, len(ok), BLOCK):  # a folder of look-alikes has millions of pairs: gathered a block at a time
            pick = ok[s:s + BLOCK]
            at_a, at_b = self.at[a[pick]], self.at[b[pick]]
            if fine_detail:
                out[pick] = _correlate(gathered(self.detail, at_a), gathered(self.detail, at_b))
            else:
                out[pick] = correlation(gathered(self.sig, at_a), gathered(self.sig, at_b))
            self._release()
        return out

    def fine_where_opaque(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Pairs of index rows -> the correlation of their fine detail over the pixels opaque in both, away from
        transparency: as they are, with b mirrored, and of their top three quarters, the best; nan where too few
        pixels (or either has no signature)."""
        out = np.full(len(a), np.nan, np.float32)
        ok = np.flatnonzero((self.at[a] >= 0) & (self.at[b] >= 0))
        for s in range(0, len(ok), BLOCK):
            pick = ok[s:s + BLOCK]
            sa, sb = gathered(self.sig, self.at[a[pick]]), gathered(self.sig, self.at[b[pick]])
            fa, fb = fine(sa[:, 0]), fine(sb[:, 0])  # where opaque, every background plane is the same
            opaque_a, opaque_b = sa[:, 0] == sa[:, 1], sb[:, 0] == sb[:, 1]
            mirrored = inside(opaque_a & opaque_b[:, :, ::-1])
            both = inside(opaque_a & opaque_b)
            top = both.copy()
            top[:, TOP:] = False
            out[pick] = np.fmax.reduce([_masked_correlation(fa, fb, both),
                                        _masked_correlation(fa, fb[:, :, ::-1], mirrored),
                                        _masked_correlation(fa, fb, top)])
            self._release()
        return out

    def warped_correlation(self, who: np.ndarray, others: np.ndarray, chunk: int = 256) -> np.ndarray:
        """detail.warped_correlation of signature rows `who` (A,) with `others` (A, K), `chunk` of `who` at a time:
        what each chunk reads (its images and their others) is released after it."""
        out = np.empty(others.shape, np.float32)
        for s in range(0, len(who), chunk):
            out[s:s + chunk] = warped_correlation(self.sig, who[s:s + chunk], others[s:s + chunk])
            self._release()
        return out

    def _paired_warped(self, who: np.ndarray, other: np.ndarray) -> np.ndarray:
        """detail.paired_warped_correlation of the grey planes of signature rows (pairs (who[i], other[i])), BLOCK
        pairs at a time in the order of `who` (each image warped once a block), released after each."""
        out = np.empty(len(who), np.float32)
        order = np.argsort(who, kind="stable")
        grey = self.sig[:, :1]  # an opaque picture's backgrounds are one plane
        for s in range(0, len(order), BLOCK):
            pick = order[s:s + BLOCK]
            out[pick] = paired_warped_correlation(grey, who[pick], other[pick])
            self._release()
        return out

    def other_colours(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Pairs of index rows -> whether both pictures are colourful (chroma of their mean colour at least
        COLOURFUL) and their mean hues more than HUE_APART degrees apart."""
        out = np.zeros(len(a), bool)
        have = np.flatnonzero((self.at[a] >= 0) & (self.at[b] >= 0))
        hue_a, chroma_a = _hue(self.colour[self.at[a[have]]])
        hue_b, chroma_b = _hue(self.colour[self.at[b[have]]])
        apart = np.abs((hue_a - hue_b + 180) % 360 - 180) > HUE_APART
        out[have] = (chroma_a >= COLOURFUL) & (chroma_b >= COLOURFUL) & apart
        return out

    def pixels_differ(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Pairs of index rows -> whether both pictures are opaque, not both of one colour, and their pixels follow
        each other below PIXELS_LEAST at best: as they are, mirrored, by their top three quarters (`correlation`),
        or either turned and zoomed to fit the other (`warped_correlation`, only where the others fall short)."""
        out = np.zeros(len(a), bool)
        spread = np.maximum(self.spread[a], self.spread[b])
        both = np.flatnonzero(self.opaque[a] & self.opaque[b] & (spread >= FLAT_STD))
        low = both[self.correlation(a[both], b[both]) < PIXELS_LEAST]
        if len(low):
            at_a, at_b = self.at[a[low]], self.at[b[low]]
            best = np.maximum(self._paired_warped(at_a, at_b), self._paired_warped(at_b, at_a))
            out[low] = best < PIXELS_LEAST
        return out

    def plain_look_alikes(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Pairs of index rows -> whether both are near-plain pictures (not both of one colour) whose pixels do not
        follow each other."""
        most = np.maximum(self.spread[a], self.spread[b])
        plain = (most < PLAIN_STD) & (most >= FLAT_STD)
        out = np.zeros(len(a), bool)
        out[plain] = self.correlation(a[plain], b[plain]) < PLAIN_LEAST
        return out
