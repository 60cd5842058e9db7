"""Every mode and format becomes the model's input the same, predictable way."""

import zlib

import numpy as np
import pytest
from PIL import Image

from helpers import write_mixed
from vaepipe.errors import ImageError
from vaepipe.images import ImageSpec, load_array, open_image, to_array

GREY28 = ImageSpec(28, 1, background=0)
RGB32 = ImageSpec(32, 3, background=0)
RGB64 = ImageSpec(64, 3, background=0)


@pytest.fixture
def mixed(tmp_path):
    return write_mixed(tmp_path / "mixed")


@pytest.mark.parametrize("kind", ["png_rgb", "jpeg", "webp", "bmp", "tiff", "gif", "rgba", "grey", "palette", "grey16", "cmyk"])
@pytest.mark.parametrize("spec", [GREY28, RGB32])
def test_every_readable_format_gives_the_model_shape(mixed, kind, spec):
    arr = load_array(mixed[kind], spec)
    assert arr.dtype == np.uint8
    assert arr.shape == (spec.channels, spec.size, spec.size)


@pytest.mark.parametrize("kind", ["corrupt", "text", "empty"])
def test_bad_files_raise_a_readable_error(mixed, kind):
    with pytest.raises(ImageError) as err:
        load_array(mixed[kind], GREY28)
    assert str(err.value)  # a reason a person can read


def test_transparent_pixels_take_the_background(tmp_path):
    # An opaque red frame around a transparent inside that holds an opaque green square.
    rgba = np.zeros((30, 30, 4), np.uint8)
    rgba[[0, -1], :] = rgba[:, [0, -1]] = (255, 0, 0, 255)
    rgba[10:20, 10:20] = (0, 255, 0, 255)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "framed.png")
    for background in (0, 255):  # (letterbox: trimming would cut the frame, see the trim tests below)
        arr = load_array(tmp_path / "framed.png", ImageSpec(30, 3, background, fit="letterbox"))
        assert tuple(arr[:, 5, 5]) == (background,) * 3  # transparent inside
        assert tuple(arr[:, 15, 15]) == (0, 255, 0)  # opaque green square kept
        assert tuple(arr[:, 0, 0]) == (255, 0, 0)  # the frame: nothing transparent around it to cut away


def test_alpha_plane_for_training(tmp_path):
    rgba = np.random.default_rng(0).integers(0, 256, (30, 30, 4), dtype=np.uint8)
    rgba[:, :, 3] = 255
    rgba[5:25, 5:25, 3] = 0  # a transparent window in an opaque picture of noise (no border to trim)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "window.png")
    arr = load_array(tmp_path / "window.png", ImageSpec(30, 3, 255), alpha=True)
    assert arr.shape == (4, 30, 30)
    assert arr[3, 15, 15] == 0 and arr[3, 0, 0] == 255  # not composited: training picks the background
    assert load_array(tmp_path / "window.png", ImageSpec(30, 3, 255))[:, 15, 15].tolist() == [255] * 3
    Image.fromarray(rgba[:, :, :3], "RGB").save(tmp_path / "opaque.png")
    assert (load_array(tmp_path / "opaque.png", ImageSpec(30, 3, 255), alpha=True)[3] == 255).all()


def _photo(w: int = 96, h: int = 64, seed: int = 0) -> Image.Image:
    """A smooth, busy colour picture, like a photograph at this size: no edge of one colour."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (4, 6, 3), dtype=np.uint8), "RGB").resize((w, h), Image.Resampling.BICUBIC)


@pytest.mark.parametrize("colour", ["white", "black", (200, 30, 30)])
def test_a_border_added_around_a_picture_is_cut_away(tmp_path, colour):
    from PIL import ImageOps

    photo = _photo()
    photo.save(tmp_path / "photo.png")
    ImageOps.expand(photo, border=10, fill=colour).save(tmp_path / "framed.png")
    ImageOps.expand(photo, border=(0, 12, 0, 12), fill=colour).save(tmp_path / "bars.png")  # above and below only
    original = load_array(tmp_path / "photo.png", RGB32).astype(int)
    for name in ("framed.png", "bars.png"):
        assert np.abs(load_array(tmp_path / name, RGB32).astype(int) - original).mean() < 2, name


def test_another_aspect_ratio_becomes_the_same_square(tmp_path):
    photo = _photo()
    photo.save(tmp_path / "photo.png")
    photo.resize((96, 45), Image.Resampling.LANCZOS).save(tmp_path / "squashed.png")
    original = load_array(tmp_path / "photo.png", RGB32).astype(int)
    assert np.abs(load_array(tmp_path / "squashed.png", RGB32).astype(int) - original).mean() < 3


def test_an_edge_of_one_colour_that_is_part_of_the_picture_is_kept(tmp_path):
    # A sky along the top only: cut away, a brighter or cropped copy would be cut differently.
    arr = np.asarray(_photo(), np.uint8).copy()
    arr[:20] = (90, 140, 220)
    Image.fromarray(arr, "RGB").save(tmp_path / "sky.png")
    from vaepipe.images import content_box

    assert content_box(Image.open(tmp_path / "sky.png")) is None


def test_a_transparent_icon_and_its_copies_flattened_on_white_or_black_are_cut_alike(tmp_path):
    from vaepipe.images import content_box

    icon = np.zeros((48, 48, 4), np.uint8)
    icon[8:40, 12:36] = (40, 120, 200, 255)  # a blue tile inside transparent padding
    icon[20:28, 16:32] = (250, 200, 40, 255)
    img = Image.fromarray(icon, "RGBA")
    boxes = {"transparent": content_box(img)}
    for name, colour in (("white", (255, 255, 255)), ("black", (0, 0, 0))):
        flat = Image.alpha_composite(Image.new("RGBA", img.size, colour + (255,)), img).convert("RGB")
        boxes[name] = content_box(flat)
    assert boxes == {"transparent": (12, 8, 36, 40), "white": (12, 8, 36, 40), "black": (12, 8, 36, 40)}


def test_a_soft_shadow_is_cut_as_in_the_copy_flattened_on_white(tmp_path):
    """A faint drop shadow (alpha 12 here) is invisible to an alpha threshold but not on white: the transparent
    icon is looked at as embedding composites it, so both get the same box and become the same square."""
    from vaepipe.images import content_box

    icon = np.zeros((48, 48, 4), np.uint8)
    icon[6:42, 10:40] = (0, 0, 0, 12)  # the shadow
    icon[8:40, 12:36] = (40, 120, 200, 255)
    img = Image.fromarray(icon, "RGBA")
    flat = Image.alpha_composite(Image.new("RGBA", img.size, (255, 255, 255, 255)), img).convert("RGB")
    assert content_box(img) == content_box(flat) == (10, 6, 40, 42)
    spec = ImageSpec(32, 3, background=255)
    assert np.abs(to_array(img, spec).astype(int) - to_array(flat, spec)).max() <= 1


def _icon() -> Image.Image:
    """A blue tile with a yellow bar and a black dot inside it, on transparent padding; it reaches the right edge,
    as an arrow pointing out of its icon does."""
    icon = np.zeros((48, 48, 4), np.uint8)
    icon[8:40, 12:48] = (40, 120, 200, 255)
    icon[20:28, 16:32] = (250, 200, 40, 255)
    icon[28:36, 20:28] = (0, 0, 0, 255)  # the field's colour, but inside the picture: kept
    return Image.fromarray(icon, "RGBA")


@pytest.mark.parametrize("colour", [(0, 0, 0), (200, 30, 30), (255, 255, 255)])
def test_a_transparent_icon_flattened_on_any_colour_becomes_its_own_square(colour):
    """Saved without its transparency (on black, as PIL's convert("RGB") often shows it, or on any colour), an icon
    is read back as a picture on a field of that colour, and the field as transparency."""
    img = _icon()
    flat = Image.alpha_composite(Image.new("RGBA", img.size, colour + (255,)), img).convert("RGB")
    spec = ImageSpec(32, 3, background=255)
    original = to_array(img, spec).astype(int)
    assert np.abs(to_array(flat, spec) - original).max() <= 1
    assert original.max(0).min() < 10  # the black dot is still there


def test_a_photograph_with_a_dark_edge_is_not_read_as_a_field():
    from vaepipe.images import field_as_transparency

    arr = np.asarray(_photo(), np.uint8).copy()
    arr[:, :30] = 0  # dark along the left third: a night sky, not a field around a picture
    img = Image.fromarray(arr, "RGB")
    assert field_as_transparency(img, 255) is img


def test_a_caption_band_across_a_drawing_on_white_is_not_part_of_its_box():
    """A banner along the bottom of a drawing on a plain field, parted from it by the field, is left out of the
    box: the drawing becomes the same square as without it. A band over a photograph has nothing to part it."""
    from vaepipe.images import content_box

    drawing = np.full((60, 50, 3), 255, np.uint8)
    drawing[10:40, 12:38] = (30, 90, 160)
    captioned = drawing.copy()
    captioned[48:60] = 20
    captioned[52:55, 5:25:3] = 255  # white text
    spec = ImageSpec(32, 3, background=255)
    plain = to_array(Image.fromarray(drawing), spec).astype(int)
    assert content_box(Image.fromarray(captioned)) == (12, 10, 38, 40)
    assert np.abs(to_array(Image.fromarray(captioned), spec) - plain).max() <= 1
    photo = np.asarray(_photo(), np.uint8).copy()
    photo[50:] = 20
    assert content_box(Image.fromarray(photo)) is None


def test_sixteen_bit_is_scaled_to_eight(mixed):
    assert load_array(mixed["grey16"], ImageSpec(16, 1)).min() == 255


def test_gif_uses_the_first_frame(mixed):
    first = load_array(mixed["gif"], ImageSpec(20, 1))
    frame0 = np.asarray(Image.open(mixed["gif"]).convert("L"))
    assert np.array_equal(first[0], frame0)


def test_letterbox_keeps_aspect_ratio(tmp_path):
    # Models from before trimming: a white 40x10 bar becomes a 28x7 bar centred on black padding, not a square.
    p = tmp_path / "wide.png"
    Image.new("L", (40, 10), 255).save(p)
    arr = load_array(p, ImageSpec(28, 1, background=0, fit="letterbox"))[0]
    rows_lit = np.nonzero(arr.max(axis=1) > 128)[0]
    assert 6 <= len(rows_lit) <= 8
    assert rows_lit.min() >= 10 and rows_lit.max() <= 17
    assert arr[:, 0].max() > 128 and arr[0].max() == 0


def test_exif_orientation_is_applied(tmp_path):
    # Stored sideways (bright left half) with EXIF "rotate 90 CW": upright it is bright on top.
    stored = np.zeros((40, 40), np.uint8)
    stored[:, :20] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the viewer must rotate 90 degrees clockwise
    p = tmp_path / "rotated.jpg"
    Image.fromarray(stored, "L").save(p, exif=exif, quality=95)
    arr = load_array(p, ImageSpec(40, 1))[0].astype(int)
    assert arr[:20].mean() > 200 and arr[20:].mean() < 50


def test_jpegs_decode_at_the_smallest_scale_that_covers_the_letterboxed_size(tmp_path):
    rng = np.random.default_rng(3)
    base = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), "RGB")  # smooth, like a photo at 64 px
    for (w, h), drafted in {(640, 480): (80, 60), (480, 640): (60, 80), (512, 512): (64, 64), (640, 200): (80, 25)}.items():
        path = tmp_path / f"{w}x{h}.jpg"
        base.resize((w, h), Image.Resampling.BICUBIC).save(path, quality=90)
        assert open_image(path, 64_000_000, draft_size=64).size == drafted  # 1/8: still covers 64 on the longer side
        assert open_image(path, 64_000_000, draft_size=96).size == (w // 4, h // 4)  # 1/8 would not
        full = to_array(open_image(path, 64_000_000), RGB64).astype(int)
        assert np.abs(to_array(open_image(path, 64_000_000, draft_size=64), RGB64) - full).mean() < 3


def test_inspecting_a_jpeg_reports_its_upright_size_and_mode_and_fails_like_a_full_decode(tmp_path, mixed):
    from vaepipe.images import inspect_image

    rng = np.random.default_rng(4)
    photo = Image.fromarray(rng.integers(0, 256, (480, 641, 3), dtype=np.uint8), "RGB")
    turned = Image.Exif()
    turned[0x0112] = 6  # rotate: 641x480 stored, 480x641 upright
    cases = {"plain.jpg": {}, "turned.jpg": {"exif": turned}, "progressive.jpg": {"progressive": True}}
    for name, options in cases.items():
        photo.save(tmp_path / name, quality=90, **options)
    photo.convert("L").save(tmp_path / "grey.jpg")
    for path in [tmp_path / name for name in [*cases, "grey.jpg"]] + [mixed["cmyk"], mixed["jpeg"], mixed["png_rgb"]]:
        full = open_image(path, 64_000_000)
        assert inspect_image(path, 64_000_000) == (*full.size, full.mode), path.name
    assert inspect_image(tmp_path / "turned.jpg", 64_000_000)[:2] == (480, 641)
    data = (tmp_path / "plain.jpg").read_bytes()
    damage = {"cut.jpg": data[:len(data) // 2], "zeros.jpg": data[:len(data) // 2] + bytes(200) + data[-2000:],
              "no_scan.jpg": data[:600]}

    def outcome(read, path) -> str:
        try:
            read(path, 64_000_000)
            return "read"
        except ImageError as e:
            return str(e)

    for name, damaged in damage.items():
        (tmp_path / name).write_bytes(damaged)
        assert outcome(inspect_image, tmp_path / name) == outcome(open_image, tmp_path / name), name
    assert outcome(inspect_image, tmp_path / "cut.jpg").startswith("corrupt or truncated image")


def test_inspecting_a_png_reports_what_a_full_decode_reports(tmp_path):
    from vaepipe.images import _plain_png, inspect_image

    variants = {name: path for name, (path, _) in _png_variants(tmp_path / "png").items()}
    big = tmp_path / "png" / "rgb_300x200.png"  # longer than the first 4 KB read
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (200, 300, 3), dtype=np.uint8), "RGB").save(big)
    variants["rgb_300x200"] = big
    variants["grey_1200x1000"] = tmp_path / "png" / "grey_1200x1000.png"  # above the size the probe takes
    Image.fromarray(np.random.default_rng(5).integers(0, 256, (1000, 1200), dtype=np.uint8), "L").save(variants["grey_1200x1000"])
    turned = Image.Exif()
    turned[0x0112] = 6
    variants["grey_30x20_turned"] = tmp_path / "png" / "grey_30x20_turned.png"
    Image.new("L", (30, 20), 99).save(variants["grey_30x20_turned"], exif=turned)
    for name, path in variants.items():
        try:
            full = open_image(path, 64_000_000)
            expected = (*full.size, full.mode)
        except ImageError as e:
            with pytest.raises(ImageError) as err:
                inspect_image(path, 64_000_000)
            assert str(err.value) == str(e), name
            continue
        assert inspect_image(path, 64_000_000) == expected, name
    for name in ("grey", "grey_text_chunk", "grey_wrong_size", "rgb_for_a_grey_model", "rgb_300x200", "grey_idat_cut_short"):
        assert _plain_png(variants[name], lambda *size: True) is not None, name  # the fast path was tried
    assert inspect_image(variants["grey_30x20_turned"], 64_000_000) == (20, 30, "L")  # upright, through PIL
    with pytest.raises(ImageError, match="pixel limit"):
        inspect_image(big, max_pixels=300 * 200 - 1)


def test_pixel_limit_rejects_before_decoding(tmp_path):
    p = tmp_path / "big.png"
    Image.new("L", (2000, 2000)).save(p)
    with pytest.raises(ImageError, match="pixel limit"):
        open_image(p, max_pixels=1_000_000)


def _png_variants(folder) -> dict[str, tuple[object, bool]]:
    """28 px PNGs of real-looking content, saved in the ways that matter to the exact-PNG path: name -> (path, takes it)."""
    from PIL import PngImagePlugin

    folder.mkdir()
    rng = np.random.default_rng(1)
    grey = Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8), "L")
    rgb = Image.fromarray(rng.integers(0, 256, (28, 28, 3), dtype=np.uint8), "RGB")
    text = PngImagePlugin.PngInfo()
    text.add_text("Software", "a scanner")
    long_text = PngImagePlugin.PngInfo()  # a file longer than the first read of the exact path (4 KB)
    long_text.add_text("Comment", "".join(rng.choice(list("abcdefgh"), 9000)))
    rotate = Image.Exif()
    rotate[0x0112] = 6
    xmp = PngImagePlugin.PngInfo()
    xmp.add_itxt("XML:com.adobe.xmp", '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
                 '<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>')
    cases = {
        "grey": (lambda p: grey.save(p), True),
        "grey_text_chunk": (lambda p: grey.save(p, pnginfo=text), True),
        "grey_long_text_chunk": (lambda p: grey.save(p, pnginfo=long_text), True),
        "grey_transparent": (lambda p: grey.save(p, transparency=7), False),
        "grey_exif_rotated": (lambda p: grey.save(p, exif=rotate), False),
        "grey_xmp_rotated": (lambda p: grey.save(p, pnginfo=xmp), False),
        "grey_palette": (lambda p: grey.convert("P").save(p), False),
        "grey_16bit": (lambda p: grey.convert("I;16").save(p), False),
        "grey_wrong_size": (lambda p: grey.resize((27, 28)).save(p), False),
        "rgb_for_a_grey_model": (lambda p: rgb.save(p), False),
    }
    out = {}
    for name, (save, takes) in cases.items():
        save(folder / f"{name}.png")
        out[name] = (folder / f"{name}.png", takes)
    truncated = folder / "grey_truncated.png"
    truncated.write_bytes(out["grey"][0].read_bytes()[:-40])
    out["grey_truncated"] = (truncated, False)
    # Made chunk by chunk: what encoders other than PIL write, and damage that still parses.
    chunks = _png_chunks(out["grey"][0].read_bytes())
    idat = next(body for kind, body in chunks if kind == b"IDAT")
    ihdr = chunks[0][1]
    crafted = {
        "grey_idat_in_three_chunks": ([c for c in chunks if c[0] != b"IDAT"][:-1]
                                      + [(b"IDAT", idat[:5]), (b"IDAT", idat[5:40]), (b"IDAT", idat[40:]), (b"IEND", b"")], True),
        "grey_bad_header_checksum": ([(b"IHDR", ihdr, 1)] + chunks[1:], False),
        "grey_bad_idat_checksum": ([c if c[0] != b"IDAT" else (b"IDAT", idat, 1) for c in chunks], False),
        "grey_garbage_idat": ([c if c[0] != b"IDAT" else (b"IDAT", b"x" * len(idat)) for c in chunks], False),
        "grey_interlace_flag": ([(b"IHDR", ihdr[:12] + b"\x01")] + chunks[1:], False),
        "grey_no_iend": (chunks[:-1], False),
        # Checksums right, but the image data stops halfway: the decoder has written rows before it fails.
        "grey_idat_cut_short": ([c if c[0] != b"IDAT" else (b"IDAT", idat[:len(idat) // 2]) for c in chunks], False),
    }
    for name, (parts, takes) in crafted.items():
        (folder / f"{name}.png").write_bytes(_png_bytes(parts))
        out[name] = (folder / f"{name}.png", takes)
    return out


def _png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    at, chunks = 8, []
    while at < len(data):
        length = int.from_bytes(data[at:at + 4], "big")
        chunks.append((data[at + 4:at + 8], data[at + 8:at + 8 + length]))
        at += 12 + length
    return chunks


def _png_bytes(chunks: list[tuple]) -> bytes:
    """A PNG of these (kind, body) chunks; a third item in a chunk is added to its checksum (damage)."""
    out = b"\x89PNG\r\n\x1a\n"
    for kind, body, *damage in chunks:
        crc = (zlib.crc32(body, zlib.crc32(kind)) + sum(damage)) & 0xFFFFFFFF
        out += len(body).to_bytes(4, "big") + kind + body + crc.to_bytes(4, "big")
    return out


def test_pngs_already_at_the_input_decode_to_the_same_array_as_any_image(tmp_path):
    from vaepipe.images import _Strip, to_array

    for name, (path, takes) in _png_variants(tmp_path / "png").items():
        assert _Strip(GREY28, 1).decode_png(0, path) == takes, name
        try:
            general = to_array(open_image(path, 64_000_000, draft_size=28), GREY28)
        except ImageError as e:
            with pytest.raises(ImageError) as err:
                load_array(path, GREY28)
            assert str(err.value) == str(e), name
            continue
        assert np.array_equal(load_array(path, GREY28), general), name
    assert (tmp_path / "png" / "grey_long_text_chunk.png").stat().st_size > 8192
    assert not np.array_equal(load_array(tmp_path / "png" / "grey_exif_rotated.png", GREY28),
                              load_array(tmp_path / "png" / "grey.png", GREY28))  # the rotation was applied


def test_rgb_pngs_at_the_input_take_the_exact_path_for_a_colour_model(tmp_path):
    from vaepipe.images import _Strip, to_array

    p = tmp_path / "rgb.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (32, 32, 3), dtype=np.uint8), "RGB").save(p)
    strip = _Strip(RGB32, 2)
    assert strip.decode_png(1, p)
    exact = strip.array()[1]
    assert exact.flags.writeable and not strip.array()[0].any()
    assert np.array_equal(exact, to_array(open_image(p, 64_000_000), RGB32))


def test_a_png_at_the_input_on_a_field_decodes_as_any_image_does(tmp_path):
    """A plus that touches every edge has no border to cut, but stands on a red field: the exact path must make
    the field transparent as the general path does."""
    from vaepipe.images import load_batch

    plus = np.zeros((32, 32, 3), np.uint8)
    plus[:] = (200, 30, 30)
    plus[14:18, :] = plus[:, 14:18] = (20, 200, 90)
    p = tmp_path / "plus.png"
    Image.fromarray(plus, "RGB").save(p)
    spec = ImageSpec(32, 3, background=255)
    batch, errors = load_batch([p], spec)
    assert errors == [""]
    assert np.array_equal(batch[0], to_array(open_image(p, 64_000_000), spec))
    assert (batch[0][:, 0, 0] == 255).all()  # the field shows the background grey


def test_a_batch_decodes_each_image_as_alone_and_zeroes_the_ones_that_fail(tmp_path, mixed):
    from vaepipe.images import load_batch

    variants = _png_variants(tmp_path / "png")
    (tmp_path / "notes.png").write_text("not an image")
    paths = [p for p, _ in variants.values()] + [mixed["jpeg"], tmp_path / "notes.png", tmp_path / "gone.png"]
    paths += paths[:3]  # repeats: a slot is not tied to a file
    batch, errors = load_batch(paths, GREY28)
    assert batch.shape == (len(paths), 1, 28, 28) and batch.flags.writeable
    for j, path in enumerate(paths):
        try:
            alone = load_array(path, GREY28)
        except (ImageError, OSError) as e:
            assert errors[j] == (str(e) or type(e).__name__) and not batch[j].any(), path.name
            continue
        assert errors[j] == "" and np.array_equal(batch[j], alone), path.name
    assert errors[paths.index(variants["grey_idat_cut_short"][0])]  # rows were written, then zeroed
    assert errors[paths.index(mixed["jpeg"])] == "" and errors[-1] == ""  # the general path, and a repeat


def test_inspecting_bytes_already_read_reports_what_inspecting_the_file_reports(tmp_path, mixed):
    """Ingest hashes a small file and checks the same bytes, read once: the outcome must not depend on that."""
    from vaepipe.images import inspect_image

    files = [*mixed.values(), *(path for path, _ in _png_variants(tmp_path / "png").values())]
    photo = tmp_path / "photo.jpg"
    Image.fromarray(np.random.default_rng(6).integers(0, 256, (480, 640, 3), dtype=np.uint8), "RGB").save(photo)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(photo.read_bytes()[:5000])
    files += [photo, cut]

    def outcome(*args) -> object:
        try:
            return inspect_image(*args)
        except ImageError as e:
            return str(e)

    for path in files:
        assert outcome(path, 64_000_000, path.read_bytes()) == outcome(path, 64_000_000), path.name
    assert isinstance(outcome(cut, 64_000_000, cut.read_bytes()), str)


def test_a_file_is_hashed_and_kept_up_to_the_size_asked_for(tmp_path):
    import hashlib

    from vaepipe.store import sha256_and_bytes, sha256_file

    path = tmp_path / "f.bin"
    content = np.random.default_rng(0).integers(0, 256, (3 << 20) + 5, dtype=np.uint8).tobytes()  # several reads
    path.write_bytes(content)
    digest = hashlib.sha256(content).hexdigest()
    assert sha256_and_bytes(path, keep_up_to=len(content)) == (digest, content)
    assert sha256_and_bytes(path, keep_up_to=len(content) - 1) == (digest, None)
    assert sha256_file(path) == digest


def test_edited_views_are_the_edits_a_copy_may_have_had_fitted_as_any_image(tmp_path, mixed):
    from vaepipe.images import VIEWS, edited_views, load_views

    spec = ImageSpec(32, 3, background=255)
    pic = np.zeros((80, 120, 3), np.uint8)
    pic[:, :60] = (200, 30, 30)  # red left half, a blue bar along the bottom
    pic[68:] = (20, 40, 220)
    Image.fromarray(pic).save(tmp_path / "pic.png")
    views, errors = load_views([tmp_path / "pic.png", mixed["corrupt"], mixed["rgba"]], spec)
    assert views.shape == (3, len(VIEWS), 2, 3, 32, 32) and errors[0] == errors[2] == "" and errors[1]
    assert not views[1].any()  # a failed image's slot is zeros, the others are whole
    as_views = dict(zip(VIEWS, views[0]))
    mirrored = to_array(Image.fromarray(pic).transpose(Image.Transpose.FLIP_LEFT_RIGHT), spec)
    assert np.array_equal(as_views["mirrored"][0], mirrored)
    assert as_views["mirrored"][0][0, 16, 2] < 100 < as_views["mirrored"][0][0, 16, 29]  # red went right
    assert not np.array_equal(as_views["turned left"][0], as_views["turned right"][0])
    assert as_views["top"][0][2, 31].max() < 100  # the bottom bar is not in the top view
    # The grey rendering of a view is its luminance; an opaque picture is the same on black.
    r, g, b = as_views["centre"][0].astype(int)
    assert np.abs(as_views["centre"][1][0] - (r * 299 + g * 587 + b * 114) / 1000).max() <= 1
    assert np.array_equal(as_views["on black"][0], to_array(Image.fromarray(pic), spec))
    icon = Image.new("RGBA", (48, 48), (0, 0, 0, 0))
    icon.paste((250, 250, 250, 255), (8, 8, 40, 40))
    flat_black = Image.alpha_composite(Image.new("RGBA", icon.size, (0, 0, 0, 255)), icon).convert("RGB")
    assert np.array_equal(to_array(edited_views(icon)[VIEWS.index("on black")], spec), to_array(flat_black, spec))
