"""Small pictures of one size compared pixel for pixel (vaepipe.same_size) on real icons: Debian's tango-icon-theme,
which `make test` installs. The index is a real flat FAISS index; the rule reads only the files and their sizes."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageOps

from helpers import flat_index
from vaepipe import same_size
from vaepipe.same_size import (CURVE_LEFT, LEAST, Pictures, best_window, caption_rows, curve_left, jpeg_settings,
                                load_on_backgrounds, nearest_of_size, opacity, resaved_as, same_size_pairs,
                                smaller_copy_pairs, two_drawings)
from vaepipe.ingest import ingest
from vaepipe.store import image_sizes, sha256_file

TANGO_22 = Path("/usr/share/icons/Tango/22x22/actions")


def _on(img: Image.Image, colour: tuple[int, int, int]) -> Image.Image:
    canvas = Image.new("RGBA", img.size, colour + (255,))
    return Image.alpha_composite(canvas, img.convert("RGBA")).convert("RGB")


COPIES = {  # what a person does to an icon, keeping its size: copies the model's 32 px input loses
    "darker": lambda im: ImageEnhance.Brightness(_on(im, (255, 255, 255))).enhance(0.7),
    "brighter": lambda im: ImageEnhance.Brightness(_on(im, (255, 255, 255))).enhance(1.4),  # highlights clipped
    "on black": lambda im: _on(im, (0, 0, 0)),
    "more contrast": lambda im: ImageEnhance.Contrast(_on(im, (255, 255, 255))).enhance(1.5),
}


def _folder(tmp_path: Path, n_icons: int = 40) -> tuple[list[str], dict[str, str]]:
    """Real 22 px icons (one file per content) and a copy of each of the first four by each edit; the names, and
    each copy's original."""
    icons, seen = [], set()
    for p in sorted(TANGO_22.glob("*.png")):
        if sha256_file(p) not in seen and Image.open(p).mode == "RGBA":
            seen.add(sha256_file(p))
            icons.append(p)
    assert len(icons) >= n_icons, "tango-icon-theme is needed (make test installs it)"
    names, original_of = [], {}
    for p in icons[:n_icons]:
        (tmp_path / p.name).write_bytes(p.read_bytes())
        names.append(p.name)
    for k, (edit, fn) in enumerate(COPIES.items()):
        src = icons[k * 4]
        name = f"copy-{edit.replace(' ', '_')}-{src.stem}.png"
        fn(Image.open(src)).save(tmp_path / name)
        names.append(name)
        original_of[name] = src.name
    return names, original_of


def _index_of(folder: Path, names: list[str]):
    vectors = np.random.default_rng(0).normal(size=(len(names), 8))
    return flat_index(vectors, names, [sha256_file(folder / n) for n in names])


def _sizes(folder: Path, names: list[str]) -> np.ndarray:
    return np.asarray([Image.open(folder / n).size for n in names])


def _named(index, pairs: tuple[np.ndarray, np.ndarray]) -> set[frozenset[str]]:
    paths = index.ids["path"].to_pylist()
    return {frozenset((paths[a], paths[b])) for a, b in zip(*pairs)}


def test_copies_of_small_icons_are_paired_with_their_originals_and_nothing_else(tmp_path):
    names, original_of = _folder(tmp_path)
    index = _index_of(tmp_path, names)
    found = _named(index, same_size_pairs(index, tmp_path, _sizes(tmp_path, index.ids["path"].to_pylist())))
    expected = {frozenset((copy, original)) for copy, original in original_of.items()}
    assert found == expected


def test_only_pictures_of_one_size_are_compared(tmp_path):
    """The same copies among the same icons, the originals at 32 px instead (the theme's own drawing): the copies
    have no picture of their size to follow, so nothing is paired."""
    names, original_of = _folder(tmp_path)
    for original in original_of.values():
        (tmp_path / original).write_bytes((TANGO_22.parent.parent / "32x32/actions" / original).read_bytes())
    index = _index_of(tmp_path, names)
    sizes = _sizes(tmp_path, index.ids["path"].to_pylist())
    assert {tuple(s) for s in sizes} == {(22, 22), (32, 32)}
    pairs = _named(index, same_size_pairs(index, tmp_path, sizes))
    assert not any(p & set(original_of) for p in pairs)


def test_two_icons_that_differ_in_one_spot_are_not_a_pair(tmp_path):
    """Tango's folder and folder_home (the folder with a house on it) follow each other closely and clearly best among
    other places; their difference sits in one spot, which no tone curve explains; a brightened copy's does not."""
    places = TANGO_22.parent / "places"
    names = ["folder.png", "folder_home.png", "user-desktop.png", "user-trash.png", "network-server.png",
             "start-here.png", "folder-remote.png", "network.png"]
    for n in names:
        (tmp_path / n).write_bytes((places / n).read_bytes())
    ImageEnhance.Brightness(_on(Image.open(places / "user-trash.png"), (255, 255, 255))).enhance(1.4).save(
        tmp_path / "trash-copy.png")
    names.append("trash-copy.png")
    planes = np.stack([load_on_backgrounds(tmp_path / n) for n in names])
    near = nearest_of_size(planes)
    assert near.best[0] == 1 and near.score[0] >= 0.9
    assert curve_left(planes[0], planes[1], int(near.background[0])) > CURVE_LEFT
    assert near.best[-1] == names.index("user-trash.png") and near.score[-1] >= LEAST
    assert curve_left(planes[-1], planes[near.best[-1]], int(near.background[-1])) <= CURVE_LEFT
    index = _index_of(tmp_path, names)
    found = _named(index, same_size_pairs(index, tmp_path, _sizes(tmp_path, index.ids["path"].to_pylist())))
    assert found == {frozenset(("user-trash.png", "trash-copy.png"))}


def test_two_black_drawings_with_one_badge_are_not_one_picture_on_black(tmp_path):
    """Symbolic icons are drawn in black on transparency: flattened on black, two of them with the same coloured
    badge are the badge alone, one picture. Where both have transparency the curve must hold on white too."""
    def black_with_badge(name: str) -> Image.Image:
        icon = Image.open(TANGO_22 / name).convert("RGBA")
        glyph = Image.new("RGBA", icon.size, (0, 0, 0, 255))
        glyph.putalpha(icon.getchannel("A"))
        badge = Image.open(TANGO_22.parent / "emblems/emblem-important.png").convert("RGBA").resize((10, 10))
        glyph.alpha_composite(badge, (12, 12))
        return glyph
    names = ["edit-copy.png", "edit-paste.png", "edit-cut.png", "go-home.png", "edit-find.png", "edit-undo.png"]
    for n in names[:2]:
        black_with_badge(n).save(tmp_path / n)
    for n in names[2:]:
        (tmp_path / n).write_bytes((TANGO_22 / n).read_bytes())
    planes = np.stack([load_on_backgrounds(tmp_path / n) for n in names])
    near = nearest_of_size(planes)
    assert near.best[0] == 1 and near.score[0] >= 0.9 and near.background[0] == 0  # on black only the badge is left
    assert curve_left(planes[0], planes[1], 0) <= CURVE_LEFT < curve_left(planes[0], planes[1], 1)
    index = _index_of(tmp_path, names)
    assert _named(index, same_size_pairs(index, tmp_path, _sizes(tmp_path, index.ids["path"].to_pylist()))) == set()


def _captioned(img: Image.Image) -> Image.Image:
    """A dark band with a word over the bottom fifth, as a caption or a meme tool leaves it."""
    out = img.convert("RGBA")
    layer = Image.new("RGBA", out.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    draw.rectangle((0, int(out.height * 0.8), out.width, out.height), fill=(20, 20, 20, 215))
    draw.text((1, int(out.height * 0.84)), "lol", fill=(255, 255, 255, 255), font_size=8)
    return Image.alpha_composite(out, layer)


def test_a_caption_over_a_small_icon_is_seen_past(tmp_path):
    """A caption band over a 22 px icon's transparent bottom: compared whole, the copy follows its original no better
    than other icons; above the band it is its original exactly. An arrow and the same arrow over a bar (Tango's
    down and bottom) are not a caption: the bar does not cross the whole width."""
    names, _ = _folder(tmp_path, n_icons=40)
    names = [n for n in names if not n.startswith("copy-")]
    for n in ("down.png", "bottom.png"):
        if n not in names:
            (tmp_path / n).write_bytes((TANGO_22 / n).read_bytes())
            names.append(n)
    original = next(n for n in names if (opacity(load_on_backgrounds(tmp_path / n)[None])[0][-4:] < 0.5).any()
                    and n not in ("down.png", "bottom.png"))
    _captioned(Image.open(tmp_path / original)).save(tmp_path / "captioned.png")
    names.append("captioned.png")
    planes = {n: load_on_backgrounds(tmp_path / n) for n in names}
    assert caption_rows(opacity(planes["captioned.png"][None])[0]) == 5
    assert caption_rows(opacity(planes["bottom.png"][None])[0]) == 0
    index = _index_of(tmp_path, names)
    found = _named(index, same_size_pairs(index, tmp_path, _sizes(tmp_path, index.ids["path"].to_pylist())))
    assert found == {frozenset(("captioned.png", original))}


def test_a_jpeg_of_a_small_icon_is_its_original_saved_so(tmp_path):
    """JPEG copies of 22 px icons (flattened on white, quality 30 and 60, chroma halved or not): their blocks are no
    tone curve of the original, but the original saved as each was saved is it. A JPEG of Tango's folder_home, whose
    best match here is the plain folder (folder_home itself is not in the folder), is not the folder saved so: the
    house is still there."""
    places = TANGO_22.parent / "places"
    names = ["folder.png", "user-desktop.png", "user-trash.png", "network-server.png", "start-here.png",
             "folder-remote.png", "network.png", "folder-saved-search.png"]
    for n in names:
        (tmp_path / n).write_bytes((places / n).read_bytes())
    for n, options in (("user-trash.png", {"quality": 30}), ("network-server.png", {"quality": 60, "subsampling": 0}),
                       ("start-here.png", {"quality": 30, "subsampling": 2})):
        _on(Image.open(places / n), (255, 255, 255)).save(tmp_path / f"jpeg-{n[:-4]}.jpg", **options)
        names.append(f"jpeg-{n[:-4]}.jpg")
    _on(Image.open(places / "folder_home.png"), (255, 255, 255)).save(tmp_path / "jpeg-folder_home.jpg", quality=30)
    names.append("jpeg-folder_home.jpg")
    planes = np.stack([load_on_backgrounds(tmp_path / n) for n in names])
    near = nearest_of_size(planes)
    trash, jpeg = names.index("user-trash.png"), names.index("jpeg-user-trash.jpg")
    assert near.best[jpeg] == trash and curve_left(planes[jpeg], planes[trash], 1) > CURVE_LEFT  # blocks: no curve
    saved = resaved_as(tmp_path / "user-trash.png", jpeg_settings(tmp_path / "jpeg-user-trash.jpg"))
    assert curve_left(planes[jpeg], saved, 1) <= CURVE_LEFT
    assert jpeg_settings(tmp_path / "user-trash.png") is None  # a PNG is not re-saved
    assert near.best[-1] == names.index("folder.png")
    index = _index_of(tmp_path, names)
    found = _named(index, same_size_pairs(index, tmp_path, _sizes(tmp_path, index.ids["path"].to_pylist())))
    assert found == {frozenset((f"jpeg-{n}.jpg", f"{n}.png")) for n in ("user-trash", "network-server", "start-here")}


def _pixel_index(folder: Path, names: list[str]):
    """A real flat index whose vectors are the pictures' 8 x 8 grey pixels: near pictures are near, as the code
    puts them."""
    vectors = np.stack([np.asarray(_on(Image.open(folder / n), (255, 255, 255)).resize((8, 8), Image.Resampling.BOX)
                                   .convert("L"), np.float32).ravel() for n in names])
    return flat_index(vectors - vectors.mean(1, keepdims=True), names, [sha256_file(folder / n) for n in names])


def test_a_crop_or_a_border_is_paired_with_the_picture_it_is_a_window_of(tmp_path):
    """A centre crop of a 22 px icon keeps the pixels it keeps: it is the window of its original it follows best,
    exactly; a 16 px icon flattened on white with a white border is its original in a window of it. Pictures that
    are nobody's window (the icons themselves, at one size) pair with nothing, and a crop that is a window of two
    icons (the same icon with and without a badge outside the crop) pairs with neither."""
    names, _ = _folder(tmp_path, n_icons=30)
    names = [n for n in names if not n.startswith("copy-")]
    crops = {}
    for n in names[:3]:
        name = f"crop-{n}"
        Image.open(tmp_path / n).convert("RGBA").crop((2, 2, 20, 20)).save(tmp_path / name)
        crops[name] = n
    small = Path("/usr/share/icons/Tango/16x16/actions/go-up.png")
    (tmp_path / "go-up-16.png").write_bytes(small.read_bytes())
    ImageOps.expand(_on(Image.open(small), (255, 255, 255)), border=2, fill="white").save(tmp_path / "bordered.png")
    badged = Image.open(tmp_path / names[5]).convert("RGBA")
    badged.paste((200, 0, 0, 255), (18, 0, 22, 4))  # a badge in a corner, outside the crop below
    badged.save(tmp_path / "badged.png")
    Image.open(tmp_path / names[5]).convert("RGBA").crop((2, 6, 20, 22)).save(tmp_path / "crop-of-two.png")
    names += [*crops, "go-up-16.png", "bordered.png", "badged.png", "crop-of-two.png"]
    planes = load_on_backgrounds(tmp_path / names[0]), load_on_backgrounds(tmp_path / f"crop-{names[0]}")
    assert best_window(planes[1], planes[0])[0] > 0.999 and best_window(planes[1], planes[0])[2:] == (2, 2)
    index = _pixel_index(tmp_path, names)
    found = _named(index, smaller_copy_pairs(Pictures(index, tmp_path, _sizes(tmp_path, names)), index.nearest_of_all(21)))
    assert found == {frozenset(p) for p in crops.items()} | {frozenset(("go-up-16.png", "bordered.png"))}


def test_a_picture_resized_is_paired_with_the_one_it_was_made_from(tmp_path):
    """Half-size and squashed copies of 32 px Tango icons (Pillow's Lanczos and bicubic, transparency kept) pair with
    the icon they were made from; a half-size copy of folder_home, whose nearest larger pictures here are the plain
    folder and other places (folder_home itself is not in the folder), pairs with nothing: the folder resized has no
    house."""
    places = Path("/usr/share/icons/Tango/32x32/places")
    names = ["folder.png", "user-desktop.png", "user-trash.png", "network-server.png", "start-here.png",
             "folder-remote.png", "network.png", "folder-saved-search.png"]
    for n in names:
        (tmp_path / n).write_bytes((places / n).read_bytes())
    made = {"half-trash.png": ("user-trash.png", (16, 16), Image.Resampling.LANCZOS),
            "squashed-server.png": ("network-server.png", (32, 22), Image.Resampling.BICUBIC),
            "half-home.png": ("folder_home.png", (16, 16), Image.Resampling.LANCZOS)}
    for name, (source, size, method) in made.items():
        Image.open(places / source).convert("RGBA").resize(size, method).save(tmp_path / name)
    names += list(made)
    index = _pixel_index(tmp_path, names)
    found = _named(index, smaller_copy_pairs(Pictures(index, tmp_path, _sizes(tmp_path, names)),
                                             index.nearest_of_all(len(names))))
    assert found == {frozenset(("half-trash.png", "user-trash.png")), frozenset(("squashed-server.png", "network-server.png"))}


def test_byte_identical_files_do_not_hide_a_copy(tmp_path):
    """A second file with the original's bytes would be each one's best match; one picture per content is compared,
    and the copy still finds its original."""
    names, original_of = _folder(tmp_path)
    copy, original = next(iter(original_of.items()))
    (tmp_path / "again.png").write_bytes((tmp_path / original).read_bytes())
    names.append("again.png")
    index = _index_of(tmp_path, names)
    found = _named(index, same_size_pairs(index, tmp_path, _sizes(tmp_path, index.ids["path"].to_pylist())))
    assert any(copy in p and p & {original, "again.png"} for p in found)


def test_unreadable_changed_and_resized_files_are_left_out(tmp_path):
    """Files that no longer hold what was indexed (cut, rewritten at another size) are not compared; the others
    are, and nothing raises."""
    names, original_of = _folder(tmp_path)
    index = _index_of(tmp_path, names)
    sizes = _sizes(tmp_path, index.ids["path"].to_pylist())
    copies = list(original_of)
    data = (tmp_path / copies[0]).read_bytes()
    (tmp_path / copies[0]).write_bytes(data[: len(data) // 2])  # cut after indexing
    Image.open(tmp_path / copies[1]).resize((30, 30)).save(tmp_path / copies[1])
    found = _named(index, same_size_pairs(index, tmp_path, sizes))
    assert found == {frozenset((c, original_of[c])) for c in copies[2:]}


def test_a_size_with_too_many_pixels_in_all_is_left_out(tmp_path, monkeypatch, caplog):
    """Memory stays bounded: with the bound below the folder's 22 px pictures, they are not compared, and the log
    says so."""
    names, _ = _folder(tmp_path)
    index = _index_of(tmp_path, names)
    sizes = _sizes(tmp_path, index.ids["path"].to_pylist())
    assert same_size_pairs(index, tmp_path, sizes)[0].size
    monkeypatch.setattr(same_size, "MOST_PIXELS", len(names) * 22 * 22 - 1)
    with caplog.at_level(logging.INFO, logger="vaepipe"):
        assert same_size_pairs(index, tmp_path, sizes)[0].size == 0
    assert "too many to compare" in caplog.text


def test_pictures_above_64_px_are_compared_shrunk_alike(tmp_path):
    """Tiles of 200 x 150 px of real photographs (mate-backgrounds) and a darker copy of one: shrunk alike (a whole
    factor, the grids stay aligned) the copy is its original through a tone curve; the other tiles are not."""
    photos = sorted(Path("/usr/share/backgrounds/mate").rglob("*.jpg"))[:6]
    assert len(photos) == 6, "mate-backgrounds is needed (make test installs it)"
    names = []
    for k, p in enumerate(photos):
        img = Image.open(p).convert("RGB")
        for x in (0, img.width // 2):
            names.append(f"tile-{k}-{x}.png")
            img.crop((x, 0, x + 200, 150)).save(tmp_path / names[-1])
    ImageEnhance.Brightness(Image.open(tmp_path / names[3])).enhance(0.7).save(tmp_path / "darker.png")
    names.append("darker.png")
    assert load_on_backgrounds(tmp_path / "darker.png").shape == (2, 37, 50, 3)  # 200 x 150 shrunk by 4
    index = _index_of(tmp_path, names)
    found = _named(index, same_size_pairs(index, tmp_path, _sizes(tmp_path, index.ids["path"].to_pylist())))
    assert found == {frozenset(("darker.png", names[3]))}


def test_sizes_come_from_the_manifest_as_ingested(tmp_path):
    """The duplicate check reads each image's size from the manifest (query.find_duplicates): as Pillow sees the
    file, upright; (0, 0) for a file that did not load or is not in the manifest."""
    folder = tmp_path / "images"
    folder.mkdir()
    names, _ = _folder(folder, n_icons=6)
    Image.open(TANGO_22.parent.parent / "32x32/actions/go-up.png").save(folder / "big.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    manifest = tmp_path / "manifest.parquet"
    ingest(folder, manifest)
    asked = [*names, "big.png", "broken.png", "not-there.png"]
    sizes = image_sizes(manifest, pa.array(asked))
    assert sizes.tolist() == [[22, 22]] * len(names) + [[32, 32], [0, 0], [0, 0]]


TANGO_22_ALL = Path("/usr/share/icons/Tango/22x22")


def _resaved(img: Image.Image, fmt: str, **options) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, fmt, **options)
    buf.seek(0)
    return Image.open(buf).convert("RGBA")


SIZE_COPIES = {  # copies that keep a small icon's size and transparency: its shape and its inside stay its own
    "WebP quality 50": lambda im: _resaved(im, "WEBP", quality=50),
    "WebP quality 75": lambda im: _resaved(im, "WEBP", quality=75),
    "blurred": lambda im: im.filter(ImageFilter.GaussianBlur(0.5)),
    "sharpened": lambda im: im.filter(ImageFilter.SHARPEN),
    "mirrored": lambda im: ImageOps.mirror(im),
    "captioned": _captioned,
    "darker, its transparency scaled too": lambda im: ImageEnhance.Brightness(im).enhance(0.7),
    "made fainter": lambda im: Image.merge("RGBA", (*im.split()[:3], im.getchannel("A").point(lambda v: v * 2 // 5))),
}


def test_two_drawings_of_one_size_are_told_from_copies():
    """Tango draws many icons on one page or one book: the same outline, another drawing inside. Those pairs are two
    drawings, and so are two icons of other shapes (an arrow up and one down, a page and an arrow); what everyday
    edits keep of an icon's size and transparency is one picture."""
    drawings = [("actions/format-indent-more.png", "mimetypes/font-x-generic.png"),
                ("actions/address-book-new.png", "mimetypes/x-office-address-book.png")]
    shapes = [("actions/go-up.png", "actions/go-down.png"), ("actions/centrejust.png", "actions/go-up.png")]
    for a, b in [("actions/centrejust.png", x) for x in drawings[0]] + [drawings[1]] + shapes:
        pa, pb = (load_on_backgrounds(TANGO_22_ALL / p) for p in (a, b))
        assert two_drawings(pa, pb), (a, b)
    for name in ("actions/centrejust.png", "actions/go-next.png", "apps/internet-mail.png"):
        icon = Image.open(TANGO_22_ALL / name).convert("RGBA")
        for edit, fn in SIZE_COPIES.items():
            original, copy = (load_on_backgrounds(_png(img)) for img in (icon, fn(icon)))
            assert not two_drawings(original, copy), (name, edit)
    # An arrow and the same arrow mirrored (go-next, go-previous) are one picture: a mirrored copy is a copy.
    assert not two_drawings(*(load_on_backgrounds(TANGO_22_ALL / f"actions/{n}.png") for n in ("go-next", "go-previous")))


def _png(img: Image.Image) -> io.BytesIO:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    buf.seek(0)
    return buf


def test_two_drawings_looks_at_pairs_of_one_size_with_transparency_only(tmp_path):
    """TwoDrawings on a real index: two drawings of one outline are apart; a copy, pictures of other sizes, opaque
    pictures and files changed since indexing are not (nor loaded)."""
    names = {"centrejust.png": TANGO_22_ALL / "actions/centrejust.png",
             "indent.png": TANGO_22_ALL / "actions/format-indent-more.png",
             "font.png": TANGO_22_ALL / "mimetypes/font-x-generic.png",
             "indent-32.png": Path("/usr/share/icons/Tango/32x32/actions/format-indent-more.png")}
    for name, source in names.items():
        (tmp_path / name).write_bytes(source.read_bytes())
    SIZE_COPIES["WebP quality 50"](Image.open(tmp_path / "indent.png")).save(tmp_path / "indent-webp.png")
    _on(Image.open(tmp_path / "font.png"), (255, 255, 255)).save(tmp_path / "font-flat.png")
    files = [*names, "indent-webp.png", "font-flat.png"]
    index = _index_of(tmp_path, files)
    row = {n: i for i, n in enumerate(files)}
    pairs = [("centrejust.png", "indent.png"), ("centrejust.png", "font.png"), ("indent.png", "indent-webp.png"),
             ("centrejust.png", "indent-32.png"), ("centrejust.png", "font-flat.png")]
    a, b = (np.asarray([row[p[k]] for p in pairs]) for k in (0, 1))
    drawings = same_size.TwoDrawings(Pictures(index, tmp_path, _sizes(tmp_path, files)), np.ones(len(files), bool))
    assert drawings.apart(a, b).tolist() == [True, True, False, False, False]
    # A file changed since it was indexed is not compared as it is now; a picture known to be opaque is not loaded.
    Image.open(tmp_path / "indent-webp.png").save(tmp_path / "font.png")
    transparent = np.ones(len(files), bool)
    transparent[[row["indent.png"], row["font-flat.png"]]] = False
    drawings = same_size.TwoDrawings(Pictures(index, tmp_path, _sizes(tmp_path, files)), transparent)
    assert drawings.apart(a, b).tolist() == [False, False, False, False, False]
    assert set(drawings.pictures.kept) == {row["centrejust.png"], row["font.png"]}
