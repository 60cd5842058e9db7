"""The duplicate check's pixel signatures (vaepipe.detail, images.load_signatures) on real icons and photographs
(Debian's tango-icon-theme and mate-backgrounds, which `make test` installs)."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image, ImageDraw, ImageEnhance, ImageOps

from helpers import flat_index
from vaepipe.detail import (FLAT_STD, OPAQUE_FINE_LEAST, PIXELS_LEAST, PLAIN_STD, TURNED_LEAST, Signatures, correlation,
                            nearest_pairs, paired_warped_correlation, warped_correlation)
from vaepipe.duplicates import fine_detail_pairs, near_groups, ratio_test, turned_pairs
from vaepipe.images import SIGNATURE_BACKGROUNDS, ImageSpec, load_signatures, open_image, plain_mode, to_array
from vaepipe.store import sha256_file
from vaepipe.views import ViewCache

TANGO = sorted(Path("/usr/share/icons/Tango/32x32/actions").glob("*.png"))
MATE = Path("/usr/share/backgrounds/mate")


def _copied(files: list[Path], folder: Path) -> list[str]:
    """Copy real files into the test's folder; their names."""
    for p in files:
        (folder / p.name).write_bytes(p.read_bytes())
    return [p.name for p in files]


def _distinct(files: list[Path]) -> list[Path]:
    """One file per content (the theme links some icons under two names)."""
    return list({sha256_file(p): p for p in reversed(files)}.values())[::-1]


def _look_alike_index(folder: Path, names: list[str]):
    """A real flat index in which every image is about as alike as every other (0.99 and up): the code cannot
    tell them apart, so only pixels decide."""
    rng = np.random.default_rng(0)
    vectors = np.ones((len(names), 8)) + rng.normal(0, 0.01, (len(names), 8))
    return flat_index(vectors, names, [sha256_file(folder / n) for n in names])


def _look_alike_signatures(folder: Path, names: list[str]) -> Signatures:
    """The signatures of the named files in a `_look_alike_index` of them (index rows in the order given)."""
    return Signatures.of(_look_alike_index(folder, names), folder, np.arange(len(names)))


def _rows(names: list[str], pairs: list[tuple[str, str]]) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of file names -> their index rows (a, b)."""
    return (np.asarray([names.index(x) for x, _ in pairs]), np.asarray([names.index(y) for _, y in pairs]))


def test_an_icon_and_its_copy_flattened_on_white_match_in_the_white_background(tmp_path):
    """A transparent icon's signature is kept on black and on white: a copy flattened on white (saved without
    transparency) follows the icon's pixels there, far better than on black alone, and better than other icons do."""
    icons = [p for p in TANGO if Image.open(p).mode == "RGBA"][:12]
    assert len(icons) == 12, "tango-icon-theme is needed (make test installs it)"
    sigs, _, errors = load_signatures(icons)
    assert errors == [""] * 12
    img = Image.open(icons[0]).convert("RGBA")
    on_white = Image.new("RGB", img.size, (255, 255, 255))
    on_white.paste(img, mask=img.getchannel("A"))
    on_white.save(tmp_path / "copy.png")
    copy_sig, _, errors = load_signatures([tmp_path / "copy.png"])
    assert errors == [""]
    best = correlation(sigs[:1], copy_sig)[0]
    black_only = correlation(sigs[:1, :1], copy_sig[:, :1])[0]
    others = correlation(sigs[1:], np.repeat(copy_sig, 11, 0))
    assert best > 0.9 and best > black_only + 0.1, (best, black_only)
    assert best > others.max(), (best, others.max())


def _darker(folder: Path, name: str) -> str:
    """A darker copy (brightness x0.6) of an icon in the folder, its transparency kept: its name."""
    img = Image.open(folder / name).convert("RGBA")
    dark = ImageEnhance.Brightness(img.convert("RGB")).enhance(0.6).convert("RGBA")
    dark.putalpha(img.getchannel("A"))
    dark.save(folder / "darker.png")
    return "darker.png"


def test_fine_detail_pairs_a_darker_copy_of_an_icon_among_look_alikes(tmp_path):
    """Ten real icons and a darker copy of one (brightness x0.6), all equally alike to the code: the ratio test on
    their fine detail pairs the copy with its original, and nothing else."""
    names = _copied(_distinct(TANGO)[:10], tmp_path)
    names.append(_darker(tmp_path, names[3]))
    index = _look_alike_index(tmp_path, names)
    near = nearest_pairs(index, index.nearest_of_all(len(names)))
    assert len(near[0]) == len(names) * (len(names) - 1) // 2  # every pair looked at: all alike to the code
    signatures = Signatures.of(index, tmp_path, np.arange(len(names)))
    a, b = fine_detail_pairs(index, near, signatures)
    assert {(names[i], names[j]) for i, j in zip(a, b)} == {(names[3], "darker.png")}


def test_fine_detail_of_two_turned_photographs_is_their_corners_and_does_not_pair_them(tmp_path, monkeypatch):
    """Two different real photographs of smooth looks (a dune, green waves), each turned by 10 degrees on a larger
    canvas (black corners, read as transparency), among six photographs and six icons with a darker copy of one, all
    equally alike to the code. The turned pictures' fine detail is mostly the edge of their corners: by it alone
    they are each other's clear best. Where both are opaque it does not follow, so only the icon and its copy are
    paired."""
    turned = [MATE / "nature/Dune.jpg", MATE / "desktop/GreenTraditional.jpg"]
    photos = [p for p in sorted((MATE / "nature").glob("*.jpg")) if p not in turned][:6] + turned
    assert len(photos) == 8 and all(p.exists() for p in photos), "mate-backgrounds is needed (make test installs it)"
    names = []
    for i, photo in enumerate(photos):
        img = Image.open(photo).convert("RGB")
        img.thumbnail((256, 256))
        if i >= 6:
            img = img.rotate(10, resample=Image.Resampling.BILINEAR, expand=True)
        img.save(tmp_path / f"{photo.stem}.png")
        names.append(f"{photo.stem}.png")
    names += _copied(_distinct(TANGO)[:6], tmp_path)
    names.append(_darker(tmp_path, names[9]))
    index = _look_alike_index(tmp_path, names)
    near = nearest_pairs(index, index.nearest_of_all(len(names)))
    signatures = Signatures.of(index, tmp_path, np.arange(len(names)))
    assert not signatures.opaque[6] and not signatures.opaque[7]  # the corners are transparency
    found = {}
    for least in (-1.0, OPAQUE_FINE_LEAST):
        monkeypatch.setattr("vaepipe.duplicates.OPAQUE_FINE_LEAST", least)
        a, b = fine_detail_pairs(index, near, signatures)
        found[least] = {(names[i], names[j]) for i, j in zip(a, b)}
    assert found[-1.0] == {(names[6], names[7]), (names[9], "darker.png")}  # the corners alone pair them
    assert found[OPAQUE_FINE_LEAST] == {(names[9], "darker.png")}


def test_turned_pairs_a_turned_and_a_cropped_copy_of_photographs_among_look_alikes(tmp_path):
    """Eight real photographs, a copy of one (window blinds: stripes) turned by 10 degrees (on a larger canvas)
    and a copy of another cropped to its centre 80 %, all about equally alike to the code, each copy its original's
    nearest, and two different photographs each other's nearest too. The copies' pixels as they are follow their originals' poorly; turned and
    zoomed to fit, clearly: both copies are paired, the two different photographs are not, and a pair already known
    is not looked at again."""
    photos = sorted((MATE / "nature").glob("*.jpg"))[:8]
    assert len(photos) == 8, "mate-backgrounds is needed (make test installs it)"
    names = []
    for photo in photos:
        img = Image.open(photo).convert("RGB")
        img.thumbnail((256, 256))
        img.save(tmp_path / f"{photo.stem}.png")
        names.append(f"{photo.stem}.png")
    turned = Image.open(tmp_path / names[1]).rotate(10, resample=Image.Resampling.BILINEAR, expand=True)
    turned.save(tmp_path / "turned.png")
    img = Image.open(tmp_path / names[5])
    w, h = img.size
    img.crop((w // 10, h // 10, w - w // 10, h - h // 10)).save(tmp_path / "cropped.png")
    names += ["turned.png", "cropped.png"]
    rng = np.random.default_rng(0)
    vectors = np.ones((len(names), 8)) + rng.normal(0, 0.01, (len(names), 8))
    for copy, original in ((8, 1), (9, 5), (2, 0)):  # (2, 0): two different photographs
        vectors[copy] = vectors[original] + rng.normal(0, 0.001, 8)
    index = flat_index(vectors, names, [sha256_file(tmp_path / n) for n in names])
    nearest = index.nearest_of_all(len(names))
    near = nearest_pairs(index, nearest)
    assert len(near[0]) == len(names) * (len(names) - 1) // 2  # every pair looked at: all alike to the code
    signatures = Signatures.of(index, tmp_path, np.arange(len(names)))
    as_they_are = signatures.correlation(np.array([1, 5]), np.array([8, 9]))
    assert (as_they_are < TURNED_LEAST).all(), as_they_are
    none = (np.zeros(0, np.int64), np.zeros(0, np.int64))
    a, b = turned_pairs(index, nearest, near, signatures, none)
    assert {(names[i], names[j]) for i, j in zip(a, b)} == {(names[1], "turned.png"), (names[5], "cropped.png")}
    a, b = turned_pairs(index, nearest, near, signatures, (np.array([8]), np.array([1])))
    assert {(names[i], names[j]) for i, j in zip(a, b)} == {(names[5], "cropped.png")}


def _plain(photo: Path, contrast: float, brightness: float = 1.0) -> Image.Image:
    img = Image.open(photo).convert("RGB")
    img.thumbnail((256, 256))
    return ImageEnhance.Brightness(ImageEnhance.Contrast(img).enhance(contrast)).enhance(brightness)


def test_near_plain_pictures_whose_pixels_differ_are_told_apart_from_copies(tmp_path):
    """Two real photographs with their contrast nearly gone (what a dark tile of a wallpaper is like) are near-plain
    look-alikes; one of them saved again brighter is a copy (its pixels follow); two pictures of one colour each
    have no pixels to compare and are left to the code; the photographs themselves are not near-plain."""
    a, b = MATE / "nature" / "Blinds.jpg", MATE / "nature" / "Dune.jpg"
    assert a.exists() and b.exists(), "mate-backgrounds is needed (make test installs it)"
    pictures = {
        "a.png": _plain(a, 0.2),
        "b.png": _plain(b, 0.2),
        "a-brighter.png": _plain(a, 0.2, 1.3),
        "flat1.png": Image.new("RGB", (64, 64), (30, 30, 40)),
        "flat2.png": Image.new("RGB", (64, 64), (32, 30, 36)),
        "photo-a.jpg": _plain(a, 1.0),
        "photo-b.jpg": _plain(b, 1.0),
    }
    for name, img in pictures.items():
        img.save(tmp_path / name)
    names = list(pictures)
    signatures = _look_alike_signatures(tmp_path, names)
    spread = signatures.sig[:, 0].astype(np.float32).reshape(len(names), -1).std(1)
    assert (FLAT_STD <= spread[:3]).all() and (spread[:3] < PLAIN_STD).all() and (spread[5:] > PLAIN_STD).all(), spread
    pairs = [("a.png", "b.png"), ("a.png", "a-brighter.png"), ("flat1.png", "flat2.png"), ("photo-a.jpg", "photo-b.jpg")]
    rows_a, rows_b = _rows(names, pairs)
    assert signatures.plain_look_alikes(rows_a, rows_b).tolist() == [True, False, False, False]


def test_signatures_come_from_the_cache_by_content_and_a_changed_file_is_not_compared(tmp_path):
    """Signatures are kept by sha256: a second look reads them from the cache (the files may have moved); a file
    changed since indexing has no signature (its pairs' correlation is -inf); a damaged part is recomputed."""
    names = _copied(TANGO[:4], tmp_path)
    index = _look_alike_index(tmp_path, names)
    cache = ViewCache(tmp_path / "views")
    first = Signatures.of(index, tmp_path, np.arange(4), cache)
    assert (first.at >= 0).all() and len(list(cache.folder.glob("detail-*.parquet"))) == 1
    moved = tmp_path / "moved"
    moved.mkdir()  # the files are gone from where the index says: only the cache can answer
    again = Signatures.of(index, moved, np.arange(4), cache)
    np.testing.assert_array_equal(again.sig, first.sig)
    Image.open(TANGO[5]).save(tmp_path / names[0])  # another picture under the same name
    part = next(cache.folder.glob("detail-*.parquet"))
    part.write_bytes(b"not parquet")
    changed = Signatures.of(index, tmp_path, np.arange(4), cache)
    assert changed.at[0] == -1 and (changed.at[1:] >= 0).all()
    assert np.isneginf(changed.correlation(np.array([0]), np.array([1])))[0]
    np.testing.assert_array_equal(changed.sig, first.sig[1:])


def test_signatures_of_a_larger_folder_are_cached_in_parts_and_read_back_each_in_its_place(tmp_path, monkeypatch):
    """69 real icons and a twin of one (two decode batches of 64), the cache written a part at a time (here once
    4 images are made): each part is read back into its images' places, the same as made, whatever order the rows are
    asked in; two files of one content both have it."""
    monkeypatch.setattr("vaepipe.detail.PART_ROWS", 4)  # a part written once 4 images are made: after each batch
    names = _copied(_distinct(TANGO)[:69], tmp_path)
    assert len(names) == 69, "tango-icon-theme is needed (make test installs it)"
    (tmp_path / "twin.png").write_bytes((tmp_path / names[5]).read_bytes())
    names.append("twin.png")
    index = _look_alike_index(tmp_path, names)
    cache = ViewCache(tmp_path / "views")
    first = Signatures.of(index, tmp_path, np.arange(len(names)), cache)
    assert (first.at >= 0).all() and len(list(cache.folder.glob("detail-*.parquet"))) == 2
    np.testing.assert_array_equal(first.sig[first.at[69]], first.sig[first.at[5]])
    moved = tmp_path / "moved"
    moved.mkdir()  # only the cache can answer
    rows = np.random.default_rng(0).permutation(len(names))
    again = Signatures.of(index, moved, rows, cache)
    np.testing.assert_array_equal(again.sig[again.at], first.sig[first.at])
    np.testing.assert_array_equal(again.colour[again.at], first.colour[first.at])


def test_the_ratio_test_pairs_only_clear_mutual_bests_and_takes_images_with_nothing_to_compare_quietly():
    """Six images: 0-1 each other's best by far; 2-3 each other's best but 4 is nearly as alike to 3; 4's other pairs
    cannot be compared (-inf, as pixels are for a file changed since indexing); 5 has no pair at all."""
    a = np.array([0, 0, 2, 3, 1, 2])
    b = np.array([1, 2, 3, 4, 4, 4])
    alike = np.array([0.95, 0.3, 0.93, 0.9, -np.inf, -np.inf], np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no numpy warning reaches the user's log
        rows_a, rows_b = ratio_test(6, a, b, alike, least=0.7, margin=0.2)
    assert list(zip(rows_a.tolist(), rows_b.tolist())) == [(0, 1)]


def test_a_signature_is_each_background_s_fit_and_one_fit_serves_an_opaque_photo(tmp_path):
    """Each plane of a signature is the model's input fitted on that background, greyed and averaged to 32 px: a
    photograph's planes are one fit (the background cannot show), an icon saved on a white field is read with its
    field as transparency, so its planes differ where the field was."""
    img = Image.open(TANGO[0]).convert("RGBA")
    on_white = Image.new("RGB", img.size, (255, 255, 255))
    on_white.paste(img, mask=img.getchannel("A"))
    on_white.save(tmp_path / "icon.jpg", quality=95)
    files = [MATE / "nature" / "Blinds.jpg", tmp_path / "icon.jpg"]
    sigs, _, errors = load_signatures(files)
    assert errors == ["", ""]
    for sig, path in zip(sigs, files):
        source = plain_mode(open_image(path, 64_000_000, draft_size=80, shorter=True))
        for plane, background in zip(sig, SIGNATURE_BACKGROUNDS):
            fitted = to_array(source, ImageSpec(64, 1, background, "trim"))[0].astype(np.float32)
            assert np.array_equal(plane, fitted.reshape(32, 2, 32, 2).mean((1, 3)))
    assert np.array_equal(sigs[0, 0], sigs[0, 1]) and np.abs(sigs[1, 0] - sigs[1, 1]).max() > 100


def test_near_groups_are_an_image_and_those_paired_with_it_so_look_alikes_do_not_chain():
    """0..7: a chain of look-alikes (crops of one wallpaper, each alike to the next); 8-9 a sure pair (ratio test)
    with 10 alike to 9; 11, 12, 13: an original, its copy and a copy of the copy; 14 paired with nothing."""
    alike = [(i, i + 1) for i in range(7)] + [(9, 10), (11, 12), (12, 13)]
    a, b = np.array(alike).T
    group = near_groups(15, (a, b), (np.array([8]), np.array([9])))
    groups = sorted(sorted(np.flatnonzero(group == g).tolist()) for g in set(group.tolist()))
    assert groups == [[0, 1, 2], [3, 4, 5], [6, 7], [8, 9, 10], [11, 12, 13], [14]]
    # Connected components would have made 0..7 one group: the chain's ends are not alike at all.
    assert len(set(group[:8].tolist())) == 3


def test_a_star_keeps_only_pictures_that_can_all_be_together(monkeypatch):
    """Tiles of neighbouring hues (blue, light blue, cyan, teal: 0-3) each alike to the light blue one (1), where
    blue and teal are of other colours: the star around 1 takes blue and cyan, not teal, which is left to its own
    pairs (4, a copy of the teal tile). Without `apart`, the star took teal too and left its copy alone. `apart` is
    asked once for every pair that could meet in a star, or, where those are too many, star by star."""
    hue = {0: 220, 1: 200, 2: 180, 3: 165, 4: 165}
    a, b = np.array([(0, 1), (1, 2), (1, 3), (3, 4)]).T

    asked: list[tuple[int, int]] = []

    def apart(ya: np.ndarray, za: np.ndarray) -> np.ndarray:
        asked.extend(zip(ya.tolist(), za.tolist()))
        return np.array([abs(hue[y] - hue[z]) > 45 for y, z in zip(ya.tolist(), za.tolist())], bool)

    none = (np.zeros(0, np.int64), np.zeros(0, np.int64))
    def groups(group: np.ndarray) -> list[list[int]]:
        return sorted(sorted(np.flatnonzero(group == g).tolist()) for g in set(group.tolist()))

    assert groups(near_groups(5, (a, b), none)) == [[0, 1, 2, 3], [4]]
    assert groups(near_groups(5, (a, b), none, apart)) == [[0, 1, 2], [3, 4]]
    # One call, every pair that could meet in a star (paired with one image: 0, 2, 3 with 1; 1, 4 with 3), once.
    assert sorted(asked) == [(0, 2), (0, 3), (1, 4), (2, 3)]
    asked.clear()  # too many to ask at once: a call a star, for the images that could join it (4 alone needs none)
    monkeypatch.setattr("vaepipe.duplicates.ONE_CALL_PAIRS", 3)
    assert groups(near_groups(5, (a, b), none, apart)) == [[0, 1, 2], [3, 4]]
    assert sorted(asked) == [(0, 2), (0, 3), (2, 3)]


def test_a_star_asks_every_image_of_a_sure_pair_whether_it_can_be_with_the_others():
    """Two smileys of one outline with other mouths (0, 1: apart), a half-size copy of 1 (2; 1-2 a sure pair) and a
    bordered copy of 0 (3) alike to 0 and to the copy of 1. The star around 3 could take 0 and the sure pair; the
    half-size copy is not apart from 0 (pictures of other sizes are not compared), but 1 is, so the pair stays out
    of 0's group. Asked of the pair's one image, the star joined both smileys."""
    a, b = np.array([(0, 3), (2, 3)]).T
    drawn_apart = {(0, 1)}
    asked: list[tuple[int, int]] = []

    def apart(ya: np.ndarray, za: np.ndarray) -> np.ndarray:
        asked.extend(zip(ya.tolist(), za.tolist()))
        return np.array([(min(y, z), max(y, z)) in drawn_apart for y, z in zip(ya.tolist(), za.tolist())], bool)

    group = near_groups(4, (a, b), (np.array([1]), np.array([2])), apart)
    assert sorted(sorted(np.flatnonzero(group == g).tolist()) for g in set(group.tolist())) == [[0, 3], [1, 2]]
    assert sorted(tuple(sorted(p)) for p in asked) == [(0, 1), (0, 2)]


def test_opaque_pictures_whose_pixels_differ_are_told_apart_and_everyday_copies_are_not(tmp_path):
    """Two neighbouring tiles of a real photograph (sand dunes: one look, other pixels) differ in pixels; its
    everyday copies (brighter, greyscale, a white border, a caption band, the centre 80 %, mirrored, turned by 10
    degrees, a JPEG of quality 30) do not, however little some follow it as they are. Two pictures of one colour have
    no pixels to compare, and two different icons with transparency are not judged (an icon theme draws an icon
    again for each size)."""
    dune = Image.open(MATE / "nature" / "Dune.jpg").convert("RGB")
    dune.thumbnail((1024, 1024))
    tile = dune.crop((0, 0, 256, 256))
    banner = tile.copy()
    ImageDraw.Draw(banner).rectangle((0, 205, 256, 256), fill=(20, 20, 20))
    ImageDraw.Draw(banner).text((10, 220), "holiday 2026", fill=(255, 255, 255))
    icons = [p for p in TANGO if Image.open(p).mode == "RGBA"][:2]
    pictures = {
        "tile.png": tile,
        "next-tile.png": dune.crop((256, 0, 512, 256)),
        "brighter.png": ImageEnhance.Brightness(tile).enhance(1.4),
        "grey.png": tile.convert("L"),
        "border.png": ImageOps.expand(tile, border=26, fill=(255, 255, 255)),
        "banner.png": banner,
        "crop.png": tile.crop((26, 26, 230, 230)),
        "mirror.png": ImageOps.mirror(tile),
        "turned.png": tile.rotate(10, resample=Image.Resampling.BILINEAR, expand=True),
        "flat1.png": Image.new("RGB", (64, 64), (200, 160, 90)),
        "flat2.png": Image.new("RGB", (64, 64), (120, 100, 60)),
        "icon1.png": Image.open(icons[0]),
        "icon2.png": Image.open(icons[1]),
    }
    for name, img in pictures.items():
        img.save(tmp_path / name)
    tile.save(tmp_path / "jpeg.jpg", quality=30)
    names = [*pictures, "jpeg.jpg"]
    signatures = _look_alike_signatures(tmp_path, names)
    copies = ["brighter.png", "grey.png", "border.png", "banner.png", "crop.png", "mirror.png", "turned.png", "jpeg.jpg"]
    pairs = [("tile.png", "next-tile.png")] + [("tile.png", c) for c in copies] + [("flat1.png", "flat2.png"),
                                                                                  ("icon1.png", "icon2.png")]
    rows_a, rows_b = _rows(names, pairs)
    assert signatures.pixels_differ(rows_a, rows_b).tolist() == [True] + [False] * (len(pairs) - 1)
    assert signatures.pixels_differ(rows_b, rows_a).tolist() == [True] + [False] * (len(pairs) - 1)
    as_they_are = signatures.correlation(rows_a, rows_b)
    assert as_they_are[0] < PIXELS_LEAST and (as_they_are[1:len(copies) + 1] < PIXELS_LEAST).any(), as_they_are
    icon_rows = np.array([names.index("icon1.png")]), np.array([names.index("icon2.png")])
    assert signatures.correlation(*icon_rows)[0] < PIXELS_LEAST  # differ, but not judged


def test_paired_warped_correlation_is_each_pair_s_own_however_the_pairs_are_batched():
    """Pairs in any order, an image in many of them (warped again for each further `most`): each pair gets the
    warped correlation it gets alone."""
    rng = np.random.default_rng(0)
    sig = rng.uniform(0, 255, (12, 1, 32, 32)).astype(np.float16)
    who = np.concatenate([np.full(9, 3), rng.integers(0, 12, 20)])
    other = rng.integers(0, 12, len(who))
    alone = [warped_correlation(sig, who[i:i + 1], other[i:i + 1, None])[0, 0] for i in range(len(who))]
    for most in (1, 4, 32):
        np.testing.assert_allclose(paired_warped_correlation(sig, who, other, most), alone, atol=1e-5)


def test_pictures_of_other_colours_are_told_apart_and_everyday_edits_keep_their_colour(tmp_path):
    """A real photograph and its everyday copies (brighter, darker, greyscale, a white border, a JPEG of quality 30,
    the centre 80 %) keep its colour; the same photograph with its channels swapped (a colour variant) and two plain
    pictures of other colours, each with a corner shape (tiles of a plain wallpaper), are of other colours. Such
    plain pictures are read as a field around their shape, so neither the code nor the grey signatures tell them
    apart."""
    photo = Image.open(MATE / "nature" / "LadyBird.jpg").convert("RGB")
    photo.thumbnail((256, 256))
    w, h = photo.size
    r, g, b = photo.split()

    def plain(colour: tuple[int, int, int]) -> Image.Image:
        img = Image.new("RGB", (160, 120), colour)
        img.paste((250, 250, 250), (130, 95, 160, 120))
        return img

    pictures = {
        "photo.png": photo,
        "brighter.png": ImageEnhance.Brightness(photo).enhance(1.4),
        "darker.png": ImageEnhance.Brightness(photo).enhance(0.7),
        "grey.png": photo.convert("L"),
        "border.png": ImageOps.expand(photo, border=w // 10, fill=(255, 255, 255)),
        "crop.png": photo.crop((w // 10, h // 10, w - w // 10, h - h // 10)),
        "swapped.png": Image.merge("RGB", (b, r, g)),
        "blue.png": plain((30, 70, 200)),
        "darker-blue.png": plain((20, 50, 140)),
        "yellow.png": plain((240, 190, 40)),
    }
    for name, img in pictures.items():
        img.save(tmp_path / name)
    photo.save(tmp_path / "jpeg.jpg", quality=30)
    names = [*pictures, "jpeg.jpg"]
    signatures = _look_alike_signatures(tmp_path, names)
    copies = ["brighter.png", "darker.png", "grey.png", "border.png", "crop.png", "jpeg.jpg"]
    pairs = [("photo.png", c) for c in copies] + [("blue.png", "darker-blue.png"),
                                                  ("photo.png", "swapped.png"), ("blue.png", "yellow.png")]
    rows_a, rows_b = _rows(names, pairs)
    assert signatures.other_colours(rows_a, rows_b).tolist() == [False] * 7 + [True, True]
    blue, yellow = names.index("blue.png"), names.index("yellow.png")
    assert signatures.correlation(np.array([blue]), np.array([yellow]))[0] > 0.9  # the grey pixels are no help


def test_signatures_cached_before_they_had_a_colour_are_made_again_quietly(tmp_path, caplog):
    """A cache part of the previous version (signatures without their colour) is not used: the signatures are
    made again from the files, with their colour, and kept in a new part, with no warning (nothing is wrong)."""
    names = _copied(TANGO[:3], tmp_path)
    index = _look_alike_index(tmp_path, names)
    cache = ViewCache(tmp_path / "views")
    first = Signatures.of(index, tmp_path, np.arange(3), cache)
    part = next(cache.folder.glob("detail-*.parquet"))
    pq.write_table(pq.read_table(part).drop_columns(["colour"]), part)
    with caplog.at_level(logging.INFO, logger="vaepipe"):
        again = Signatures.of(index, tmp_path, np.arange(3), cache)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    np.testing.assert_array_equal(again.colour, first.colour)
    assert (first.colour.max(1) > 0).all() and len(list(cache.folder.glob("detail-*.parquet"))) == 2
    cached = Signatures.of(index, tmp_path / "gone", np.arange(3), cache)  # only the cache can answer
    np.testing.assert_array_equal(cached.colour, first.colour)  # as made: a nightly re-run decides as the first did


def test_a_copy_of_one_size_of_an_icon_joins_the_icon_s_sizes_but_a_photo_s_look_alikes_stay_apart(tmp_path):
    """duplicates.group_copy_pairs: a JPEG copy of a Tango icon is about as near the icon's three sizes (alike to each
    other, one group) as to its original, so the ratio test between images finds no clear partner; between groups it
    joins the icon's. The same geometry among opaque photographs (a tile and a look-alike tile of a wallpaper, and a
    third near both) is left alone; without the sizes found alike the copy has rivals again."""
    from vaepipe.duplicates import candidate_pairs, group_copy_pairs, near_pairs, only_copy_pairs

    sizes = [Path(f"/usr/share/icons/Tango/{s}/actions/go-up.png") for s in ("16x16", "22x22", "32x32")]
    other = [Path(f"/usr/share/icons/Tango/{s}/actions/go-down.png") for s in ("16x16", "32x32")]
    photos = sorted(MATE.rglob("*.jpg"))[:3]
    assert all(p.exists() for p in sizes + other) and len(photos) == 3, "tango-icon-theme and mate-backgrounds"
    files: dict[str, Image.Image] = {f"up-{p.parts[-3]}.png": Image.open(p) for p in sizes}
    icon = Image.open(sizes[2]).convert("RGBA")
    files["up-copy.jpg"] = Image.alpha_composite(Image.new("RGBA", icon.size, "white"), icon)  # flattened, as JPEG does
    files.update({f"down-{p.parts[-3]}.png": Image.open(p) for p in other})
    files.update({f"photo-{i}.jpg": ImageOps.fit(Image.open(p).convert("RGB"), (256, 192)) for i, p in enumerate(photos)})
    for n, img in files.items():
        img.convert("RGB").save(tmp_path / n, quality=30) if n.endswith(".jpg") else img.save(tmp_path / n)
    names = list(files)

    rng = np.random.default_rng(2)
    basis = np.linalg.qr(rng.normal(size=(32, 32)))[0].T

    def at(cos: float, a: int, b: int) -> np.ndarray:  # a vector with cosine `cos` to basis[a]
        return cos * basis[a] + np.sqrt(1 - cos ** 2) * basis[b]

    vectors = {"up-16x16.png": basis[0], "up-22x22.png": at(0.99, 0, 1), "up-32x32.png": at(0.99, 0, 2),
               "up-copy.jpg": at(0.95, 0, 3),  # 0.95 to the 16 px, 0.94 to the others: no one clearly
               "down-16x16.png": basis[10], "down-32x32.png": at(0.99, 10, 11),  # each other's only: a pair
               "photo-0.jpg": basis[20], "photo-1.jpg": at(0.99, 20, 21), "photo-2.jpg": at(0.95, 20, 22)}
    index = flat_index(np.array([vectors[n] for n in names]), names, [sha256_file(tmp_path / n) for n in names])
    nearest = index.nearest_of_all(len(names))
    candidates = candidate_pairs(index)  # no model: as stored only
    a, b = only_copy_pairs(index, candidates, nearest)
    assert [(names[i], names[j]) for i, j in zip(a, b)] == [("down-16x16.png", "down-32x32.png")]
    alike = near_pairs(index, 0.97)
    signatures = Signatures.of(index, tmp_path, np.arange(len(names)))
    a, b = group_copy_pairs(index, candidates, nearest, alike, signatures)
    assert [(names[i], names[j]) for i, j in zip(a, b)] == [("up-16x16.png", "up-copy.jpg")]
    none = (np.zeros(0, np.int64), np.zeros(0, np.int64))  # every picture a group of its own: the images' ratio test
    a, b = group_copy_pairs(index, candidates, nearest, none, signatures)
    assert [(names[i], names[j]) for i, j in zip(a, b)] == [("down-16x16.png", "down-32x32.png")]
    everything = (candidates.a, candidates.b)  # all one group (a threshold as low as the candidates'): no pair between
    assert not len(group_copy_pairs(index, candidates, nearest, everything, signatures)[0])
    signatures.opaque[:] = False  # were the photographs transparent, their third would join the other two
    a, b = group_copy_pairs(index, candidates, nearest, alike, signatures)
    assert ("photo-0.jpg", "photo-2.jpg") in [(names[i], names[j]) for i, j in zip(a, b)]
