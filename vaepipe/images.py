"""How an image file becomes the model's input: decode, orient, flatten modes, letterbox.

Every stage that reads pixels (training, embedding, queries, samples) goes through `load_batch`
or `load_array` so an image means the same thing everywhere.
Arrays only, no torch: `vaepipe.batches` makes them the batches of DataLoader workers.
"""

from __future__ import annotations

import io
import math
import os
import warnings
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from vaepipe.errors import ImageError

SVG_SUFFIXES = {".svg", ".svgz"}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"} | SVG_SUFFIXES
# An SVG has no pixels of its own: it is drawn to fit a square of this side (the largest icon size themes ship),
# or a smaller one where a smaller picture will do; its manifest width and height are that drawing's.
SVG_SIDE = 256
MAX_SVG_BYTES = 16 << 20  # the markup, after gunzip for .svgz: past it the file is refused, not read
ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
GREY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


@dataclass(frozen=True)
class ImageSpec:
    """The model's input: a square of `size` pixels with 1 (grey) or 3 (RGB) channels.

    fit says how an image of any shape becomes that square:
      "trim":      a border of one colour (or of transparent pixels) is cut away, and what is left is stretched to
                   the square. A copy with a border added, or one saved at another aspect ratio, then becomes the
                   same square as its original, and an icon drawn with other padding at another size does too.
      "letterbox": the longer side is scaled to the square, the aspect ratio kept, the rest padded with the
                   background grey (models trained before December 2026 were trained on this).
    """

    size: int
    channels: int
    background: int = 0  # grey level behind transparent pixels (and in the letterbox bars)
    fit: str = "trim"


def open_image(path: str | Path, max_pixels: int, draft_size: int | None = None, shorter: bool = False) -> Image.Image:
    """Open and fully decode the first frame, upright (EXIF orientation applied).

    draft_size: the longer side (with shorter=True: the shorter side) the image will be scaled to; a JPEG may then
    decode at a reduced scale that still covers it, so the result can be smaller than the file's own size.
    """
    return _open(path, max_pixels, draft_size, shorter)[0]


def is_svg(path: str | Path) -> bool:
    return Path(path).suffix.lower() in SVG_SUFFIXES


def _svg_markup(source: str | Path | bytes) -> str:
    if isinstance(source, bytes):
        data = source
    else:
        if os.stat(source).st_size > MAX_SVG_BYTES:
            raise ImageError(f"SVG larger than {MAX_SVG_BYTES >> 20} MB: not read")
        data = Path(source).read_bytes()
    if data[:2] == b"\x1f\x8b":  # .svgz: gunzipped no further than the limit (a small file can unpack to gigabytes)
        try:
            unzip = zlib.decompressobj(16 + zlib.MAX_WBITS)
            data = unzip.decompress(data, MAX_SVG_BYTES + 1)
        except zlib.error as e:
            raise ImageError(f"corrupt SVGZ: {e}") from None
        if len(data) > MAX_SVG_BYTES or unzip.unconsumed_tail:
            raise ImageError(f"SVGZ unpacks to more than {MAX_SVG_BYTES >> 20} MB: not read")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ImageError("SVG that is not UTF-8 text") from None


def render_svg(source: str | Path | bytes, side: int = SVG_SIDE) -> Image.Image:
    """An SVG (or SVGZ) file, or its bytes, drawn by resvg to fit a side x side square, aspect kept: RGBA,
    transparent where nothing is drawn. resvg fetches nothing over the network, and the square bounds the work
    whatever size the file declares. ImageError if it cannot be drawn."""
    import resvg_py  # here: only SVGs need it

    markup = _svg_markup(source)
    try:
        png = resvg_py.svg_to_bytes(svg_string=markup, width=side, height=side)
        img = Image.open(io.BytesIO(bytes(png)))
        img.load()
    except Exception as e:  # resvg raises ValueError for what it cannot parse or draw; anything else is the file's too
        raise ImageError(f"SVG that cannot be drawn: {e}") from None
    return img.convert("RGBA")


def _svg_size(img: Image.Image) -> tuple[int, int]:
    """The size an SVG drawn at some side has at SVG_SIDE: its manifest width and height."""
    scale = SVG_SIDE / max(img.size)
    return max(1, round(img.width * scale)), max(1, round(img.height * scale))


def inspect_image(path: str | Path, max_pixels: int, data: bytes | None = None) -> tuple[int, int, str]:
    """(width, height, mode) of a usable image, upright, after decoding all of it; ImageError if it is not usable.
    data: the file's bytes, if the caller has read them (ingest, which hashes them): the file is not read again.

    A plain 8-bit grey or RGB PNG is decoded straight from its IDAT stream (`_plain_png`), in well under half
    the time of PIL's PNG plugin for a small file; any file that path does not take goes through PIL, so the
    outcome is the same. A JPEG decodes at 1/8 scale: every byte of it is still entropy-decoded, so a cut or
    corrupt file fails as at full size, for a fraction of the work (the scale only spares the inverse DCT and the
    pixels; BENCHMARKS.md, throughput).
    """
    if is_svg(path):  # drawn small: enough to show it can be drawn, and its shape
        width, height = _svg_size(render_svg(path if data is None else data, side=64))
        return width, height, "RGBA"
    # Only small PNGs: the probe holds a whole file and its IDAT stream in memory, where PIL streams a large one,
    # whose decoding costs far more than the probe saves.
    png = _plain_png(path if data is None else data,
                     lambda width, height, colour: width * height <= min(max_pixels, _PROBED_PNG_PIXELS))
    if png is not None:
        width, height, colour, idat = png
        mode = _PNG_MODES[colour]
        if _decode_png_stream(idat, mode, Image.new(mode, (width, height)).im, (0, 0, width, height)):
            return width, height, mode
    img, upright = _open(path if data is None else io.BytesIO(data), max_pixels, draft_size=1)
    return upright[0], upright[1], img.mode


def _open(path: str | Path | io.BytesIO, max_pixels: int, draft_size: int | None, shorter: bool = False
          ) -> tuple[Image.Image, tuple[int, int]]:
    """The decoded image (smaller than the file's own size if drafted) and the file's own size, upright."""
    if not isinstance(path, io.BytesIO) and is_svg(path):
        # Drawn at twice the side asked for (the shorter side may be half the longer), at most SVG_SIDE.
        img = render_svg(path, SVG_SIDE if not draft_size else min(SVG_SIDE, max(2 * draft_size, 16)))
        return img, _svg_size(img)
    try:
        with warnings.catch_warnings():
            # Size is checked below; PIL's other warnings (odd EXIF, palette transparency) say nothing a user can act on.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            warnings.simplefilter("ignore", UserWarning)
            img = Image.open(path)
            w, h = img.size
            if w * h > max_pixels:
                # Checked on the declared size, before any pixel is decoded.
                raise ImageError(f"decompression bomb: declared size {w}x{h} exceeds the pixel limit of {max_pixels:,}")
            if getattr(img, "n_frames", 1) > 1:
                img.seek(0)
            upright = None
            if draft_size and img.format == "JPEG":
                # JPEG can decode at 1/2, 1/4, 1/8 scale: far cheaper when the model wants 28 or 64 px. The scale
                # only has to cover the letterboxed size (64x48 for a 4:3 photo), not the square: 640x480 photos
                # decode at 80x60 rather than 160x120 (BENCHMARKS.md, throughput).
                # The orientation exif_transpose will apply (a JPEG's EXIF and XMP precede its pixels).
                turned = img.getexif().get(ExifTags.Base.Orientation, 1) in (5, 6, 7, 8)
                upright = (h, w) if turned else (w, h)
                fit = draft_size / (min(w, h) if shorter else max(w, h))
                img.draft(img.mode, (max(1, math.ceil(w * fit)), max(1, math.ceil(h * fit))))
            img.load()
            ImageOps.exif_transpose(img, in_place=True)  # in place: no copy of the (usual) unrotated image
            return img, upright or img.size
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError("not an image: format not recognised") from None
    except Image.DecompressionBombError as e:
        raise ImageError(f"decompression bomb: {e}") from None
    except (PermissionError, FileNotFoundError):
        raise  # reported by the caller, which knows whether the file vanished
    except Exception as e:  # Pillow's plugins raise anything on damaged files: struct.error, TypeError, IndexError
        raise ImageError(f"corrupt or truncated image: {type(e).__name__}: {e}") from None


def plain_mode(img: Image.Image) -> Image.Image:
    """Any PIL mode -> 'L', 'LA', 'RGB' or 'RGBA' (alpha kept where the image has any)."""
    if img.mode.startswith("I") or img.mode == "F":
        # 16/32-bit grey: scale to 8 bits by the type's range, not the image's own max.
        arr = np.asarray(img, dtype=np.float64)
        scale = 255.0 if img.mode == "F" and arr.max(initial=0) <= 1.0 else (1 / 257 if arr.max(initial=0) > 255 else 1.0)
        return Image.fromarray(np.clip(arr * scale, 0, 255).astype(np.uint8), "L")
    if img.mode in ("L", "LA", "RGB", "RGBA"):
        return img
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Palette images with Transparency expressed in bytes ..."
        if img.mode == "P":
            return img.convert("RGBA" if "transparency" in img.info else "RGB")
        if img.mode in ("1", "La"):
            return img.convert("L" if img.mode == "1" else "LA")
        if img.mode in ("PA", "RGBa"):
            return img.convert("RGBA")
        return img.convert("RGB")  # CMYK, YCbCr, LAB, HSV


def grey_rendering(img: Image.Image) -> Image.Image:
    """The picture as a greyscale copy of it shows it: Pillow's luminance (ITU-R 601-2), transparency kept.

    Fitted (to_array) like any image, so its border and field are judged as a greyscale copy's are: cutting the
    colour image first and greying the square after keeps a hue border that the grey copy loses, and the two squares
    then differ."""
    img = plain_mode(img)
    return img.convert("LA" if img.mode in ("LA", "RGBA") else "L")


def flatten(img: Image.Image, background: int) -> Image.Image:
    """Any PIL mode -> 'L' or 'RGB', alpha composited onto the background grey."""
    img = plain_mode(img)
    if img.mode in ("LA", "RGBA"):
        canvas = Image.new("RGBA", img.size, (background, background, background, 255))
        flat = Image.alpha_composite(canvas, img.convert("RGBA")).convert("RGB")
        return flat.convert("L") if img.mode == "LA" else flat
    return img


# A pixel belongs to a border when no channel is further than this from the border's colour: JPEG's ringing and
# noise along a border stay under it, and the edge of a picture does not.
BORDER_TOLERANCE = 8


Analysis = tuple[np.ndarray, np.ndarray, np.ndarray, bool]  # what _analysed returns


def _analysed(img: Image.Image, background: int) -> Analysis:
    """What the border rules look at: the image at most 256 px on a side (transparency composited onto the
    background grey) as int16 (h, w, channels), the border colour (the median of the outermost pixels), the mask of
    pixels further than BORDER_TOLERANCE from it, and whether the border runs along two opposite sides.

    A border runs along two opposite sides at least (a frame, or bars above and below). A picture's own edge of one
    colour (a sky along the top) is not one: cut away, it would be cut differently in a copy cropped or made
    brighter, and the copy would no longer become the same square as its original."""
    w, h = img.size
    small = img if max(w, h) <= 256 else img.resize((max(1, w * 256 // max(w, h)), max(1, h * 256 // max(w, h))),
                                                     Image.Resampling.BOX)
    if small.mode in ("LA", "RGBA"):
        small = flatten(small, background)
    arr = np.asarray(small)
    p = (arr[:, :, None] if arr.ndim == 2 else arr).astype(np.int16)
    colour = np.median(np.concatenate([p[0], p[-1], p[:, 0], p[:, -1]]), axis=0)
    # Channel by channel: a max over the short last axis of (h, w, 3) was most of a photo's fitting (BENCHMARKS.md).
    content = np.abs(p[:, :, 0] - colour[0]) > BORDER_TOLERANCE
    for c in range(1, p.shape[2]):
        content |= np.abs(p[:, :, c] - colour[c]) > BORDER_TOLERANCE
    content[_bands(content)] = False
    bordered = bool((content[0].mean() <= 0.02 and content[-1].mean() <= 0.02)
                    or (content[:, 0].mean() <= 0.02 and content[:, -1].mean() <= 0.02))
    return p, colour, content, bordered


def _bands(content: np.ndarray) -> np.ndarray:
    """Rows of a band across the whole width along the top or bottom edge, apart from the picture by a row of
    border: a caption or banner laid over a picture on a plain field. Counted as border, so that the box is the
    picture's, as in the original without the band (a band over the picture itself has no border row to part it)."""
    full = content[:, 0] & content[:, -1] & (content.mean(axis=1) >= 0.5)  # edge to edge, text and all
    h = len(full)
    band = np.zeros(h, bool)
    for rows in (range(h), range(h - 1, -1, -1)):
        n = next((i for i, r in enumerate(rows) if not full[r]), h)
        if 0 < n <= h // 3 and content[rows[n]].mean() <= 0.02:
            band[[rows[i] for i in range(n)]] = True
    return band


def content_box(img: Image.Image, background: int = 255, analysis: Analysis | None = None
                ) -> tuple[int, int, int, int] | None:
    """The box (left, top, right, bottom) inside a border of one colour, or None where there is no such border (or
    nothing but border). A transparent image is looked at as embedding shows it, composited onto the background
    grey: so it gets the same box as a copy of it flattened onto that grey (the usual way to drop transparency),
    soft shadows and all.

    Rows and columns where at most 1% of the pixels differ from the border colour are border, if the border runs
    along two opposite sides (see _analysed). Looked for on a copy at most 256 px on a side: the box is then at most
    one of its pixels too large, and a large PNG costs a few milliseconds, not a pass over every pixel.
    analysis: _analysed(img, background), where the caller has it already.
    """
    w, h = img.size
    _, _, content, bordered = analysis or _analysed(img, background)
    if not bordered:
        return None
    rows = np.flatnonzero(content.mean(axis=1) > 0.01)
    cols = np.flatnonzero(content.mean(axis=0) > 0.01)
    if not len(rows) or not len(cols):
        return None
    sh, sw = content.shape
    box = (cols[0] * w // sw, rows[0] * h // sh, -(-(cols[-1] + 1) * w // sw), -(-(rows[-1] + 1) * h // sh))
    return None if box == (0, 0, w, h) else box


def _on_a_field(colour: np.ndarray, content: np.ndarray, background: int) -> bool:
    """Most of the edge is one colour other than the background grey. A picture that reaches the edge on a side or
    two is still on a field (an arrow pointing out of its icon); a photograph with a dark corner is not."""
    ring = np.concatenate([content[0], content[-1], content[:, 0], content[:, -1]])
    return bool(ring.mean() <= 0.25 and np.abs(colour - background).max() > BORDER_TOLERANCE)


def field_as_transparency(img: Image.Image, background: int = 255, analysis: Analysis | None = None) -> Image.Image:
    """An opaque picture on a field of one colour other than the background grey, with the field made transparent
    (mode RGBA or LA); any other image as it is.

    A transparent icon saved without its transparency lands on white, black or whatever colour its hidden pixels
    had (PIL's convert("RGB") shows them, often black). Read back as transparency, the field shows the background
    grey like the original's padding, so the copy becomes the same square as its original. The field is the border
    colour's pixels connected to the border, so the same colour inside the picture (a black outline) is kept.
    analysis: _analysed(img, background), where the caller has it already.
    """
    if img.mode not in ("L", "RGB"):
        return img
    p, colour, content, _ = analysis or _analysed(img, background)
    if not _on_a_field(colour, content, background):
        return img
    field = np.zeros_like(content)
    field[[0, -1], :], field[:, [0, -1]] = ~content[[0, -1], :], ~content[:, [0, -1]]
    while True:  # grow the field from the border through pixels of its colour, one pixel a step
        grown = field.copy()
        grown[1:] |= field[:-1]
        grown[:-1] |= field[1:]
        grown[:, 1:] |= field[:, :-1]
        grown[:, :-1] |= field[:, 1:]
        grown &= ~content
        if np.array_equal(grown, field):
            break
        field = grown
    if field.all():
        return img
    alpha = Image.fromarray(np.where(field, 0, 255).astype(np.uint8), "L")
    if alpha.size != img.size:
        alpha = alpha.resize(img.size, Image.Resampling.NEAREST)
    out = img.convert(img.mode + "A")
    out.putalpha(alpha)
    return out


def to_array(img: Image.Image, spec: ImageSpec, alpha: bool = False, analysis: Analysis | None = None) -> np.ndarray:
    """The model's input: uint8 of shape (channels, size, size), fitted as spec.fit says, transparent pixels
    composited onto the background grey. With alpha=True: (channels + 1, size, size), not composited, the last
    plane the alpha (255 where the image has none), for training to composite onto backgrounds of its choice.
    analysis: _analysed(img, spec.background) of an image in a plain mode, where the caller has it already.
    """
    if spec.fit == "letterbox":
        arr = _letterbox(img, spec)
        return np.concatenate([arr, np.full_like(arr[:1], 255)]) if alpha else arr
    img = plain_mode(img)
    # An opaque picture is looked at once for a field and a border (most photographs: neither), not once for each.
    if analysis is None and img.mode in ("L", "RGB"):
        analysis = _analysed(img, spec.background)
    fitted = field_as_transparency(img, spec.background, analysis)
    if fitted is not img:  # its field made transparent: another picture to look at
        img, analysis = fitted, None
    # Again after a cut: a border added around a picture whose own edge is one colour (a sky) is cut first, and
    # the picture's own edge then as in the original, so both become the same square.
    for _ in range(3):
        box = content_box(img, spec.background, analysis)
        if box is None:
            break
        img, analysis = img.crop(box), None
    has_alpha = img.mode in ("LA", "RGBA")
    mode = ("L" if spec.channels == 1 else "RGB") + ("A" if has_alpha else "")
    if img.mode != mode:
        img = img.convert(mode)
    if img.size != (spec.size, spec.size):  # RGBA and LA are resized with premultiplied alpha (PIL)
        img = img.resize((spec.size, spec.size), Image.Resampling.BILINEAR, reducing_gap=3.0)
    arr = np.asarray(img, dtype=np.uint8)
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    if alpha:
        return np.ascontiguousarray(arr if has_alpha else np.concatenate([arr, np.full_like(arr[:1], 255)]))
    if has_alpha:
        return composite(arr[:-1], arr[-1:], spec.background)
    return np.ascontiguousarray(arr)  # a writable copy: torch.from_numpy refuses read-only buffers


def composite(colour: np.ndarray, alpha: np.ndarray, background: int) -> np.ndarray:
    """Colour planes over a background grey, by their alpha: uint8 in, uint8 out."""
    a = alpha.astype(np.uint16)
    return ((colour * a + background * (255 - a) + 127) // 255).astype(np.uint8)


def _letterbox(img: Image.Image, spec: ImageSpec) -> np.ndarray:
    """Scale the longer side to spec.size keeping the aspect ratio, centre on background bars: (C, S, S) uint8."""
    if img.mode not in ("L", "RGB"):  # the common modes skip this: per image, it costs more than a 28 px decode
        img = flatten(img, spec.background)
    mode = "L" if spec.channels == 1 else "RGB"
    if img.mode != mode:
        img = img.convert(mode)
    w, h = img.size
    if (w, h) != (spec.size, spec.size):
        scale = spec.size / max(w, h)
        new = (max(1, round(w * scale)), max(1, round(h * scale)))
        img = img.resize(new, Image.Resampling.BILINEAR, reducing_gap=3.0)
        fill = spec.background if spec.channels == 1 else (spec.background,) * 3
        canvas = Image.new(img.mode, (spec.size, spec.size), fill)
        canvas.paste(img, ((spec.size - new[0]) // 2, (spec.size - new[1]) // 2))
        img = canvas
    arr = np.array(img, dtype=np.uint8)  # a writable copy: torch.from_numpy refuses read-only buffers
    return arr[None] if arr.ndim == 2 else np.ascontiguousarray(arr.transpose(2, 0, 1))


def _open_for(path: str | Path, spec: ImageSpec, max_pixels: int) -> Image.Image:
    """Decoded at the smallest JPEG scale that still covers the square: the whole image (letterbox), or its shorter
    side (trim), with room for a border of up to a fifth of it to be cut away."""
    if spec.fit == "letterbox":
        return open_image(path, max_pixels, draft_size=spec.size)
    return open_image(path, max_pixels, draft_size=spec.size * 5 // 4, shorter=True)


def load_array(path: str | Path, spec: ImageSpec, max_pixels: int = 64_000_000, alpha: bool = False) -> np.ndarray:
    """One image as the model's input, uint8 (C, S, S) (see to_array for alpha); raises ImageError (or OSError)
    for an unusable file."""
    strip = _Strip(spec, 1)
    if strip.decode_png(0, path):
        return strip.fitted(alpha)[0]
    return to_array(_open_for(path, spec, max_pixels), spec, alpha)


def load_batch(paths: Sequence[str | Path], spec: ImageSpec, max_pixels: int = 64_000_000, alpha: bool = False,
               grey: bool = False) -> tuple[np.ndarray, list[str]]:
    """Images as the model's input, uint8 (B, C, S, S) (see to_array for alpha), and an error per image ('' if it
    loaded). The same arrays as `load_array` one by one; a failed image's slot is zeros and its error says why.
    grey (colour models): (B, 2, C, S, S), each image followed by its grey rendering (`grey_rendering`), decoded once.
    """
    strip = _Strip(spec, len(paths))
    general = [j for j, path in enumerate(paths) if not strip.decode_png(j, path)]
    batch = strip.fitted(alpha, skip=general)
    if grey:
        batch = np.stack([batch, batch], axis=1)
        for j in sorted(set(range(len(paths))) - set(general)):
            batch[j, 1] = to_array(grey_rendering(strip.slot(j)), spec, alpha)
    errors = [""] * len(paths)
    for j in general:
        try:
            img = _open_for(paths[j], spec, max_pixels)
            if grey:
                batch[j, 0] = to_array(img, spec, alpha)
                # A grey file is its own grey rendering: fitted once (a third of the clip art, most symbolic icons).
                batch[j, 1] = batch[j, 0] if img.mode in GREY_MODES else to_array(grey_rendering(img), spec, alpha)
            else:
                batch[j] = to_array(img, spec, alpha)
        except Exception as e:  # one image's failure, whatever Pillow raised, is that image's error
            batch[j] = 0  # the PNG path may have written part of it before failing
            errors[j] = str(e) or type(e).__name__
    return batch, errors


# Views of an image that the duplicate check compares with the other images' codes (duplicates.view_checked_pairs):
# what an everyday edit did to a copy, done to its original (mirrored, turned, cropped, flattened on black), and,
# compared with the same view of the other image, the top of the picture, which a caption band along the bottom
# leaves alone. The amounts (6 degrees, 86 %, 85 %) are not the copies benchmark's own (10 degrees, 80 %, a fifth):
# a view only has to bring a copy closer, and copies turned or cropped by other amounts lie in between. (A view with
# the levels stretched, for brightness, joined plain pictures of different colours: BENCHMARKS.md.)
ONE_SIDED_VIEWS = ("mirrored", "turned left", "turned right", "centre", "on black")
BOTH_SIDED_VIEWS = ("top",)
VIEWS = ONE_SIDED_VIEWS + BOTH_SIDED_VIEWS


def edited_views(img: Image.Image) -> list[Image.Image]:
    """The VIEWS of one image, in that order; "on black" only changes a transparent image (others: as they are)."""
    img = plain_mode(img)
    w, h = img.size
    return [
        ImageOps.mirror(img),
        img.rotate(6, resample=Image.Resampling.BILINEAR, expand=True),
        img.rotate(-6, resample=Image.Resampling.BILINEAR, expand=True),
        img.crop((round(w * 0.07), round(h * 0.07), max(round(w * 0.93), 1), max(round(h * 0.93), 1))),
        flatten(img, 0) if img.mode in ("LA", "RGBA") else img,
        img.crop((0, 0, w, max(round(h * 0.85), 1))),
    ]


def load_views(paths: Sequence[str | Path], spec: ImageSpec, max_pixels: int = 64_000_000
               ) -> tuple[np.ndarray, list[str]]:
    """The edited_views of each image as the model's input, each with its grey rendering, uint8 (B, len(VIEWS), 2,
    C, S, S), and an error per image ('' if it loaded; a failed image's views are zeros).

    The views' grey renderings are their fitted squares greyed (Pillow's luminance weights), not fitted again: a
    view is only compared, never searched for."""
    batch = np.zeros((len(paths), len(VIEWS), 2, spec.channels, spec.size, spec.size), np.uint8)
    errors = [""] * len(paths)
    for j, path in enumerate(paths):
        try:
            img = plain_mode(_open_for(path, spec, max_pixels))
            # Twice the square's size is enough to fit the square from, and 6 fits of a 256 px icon would cost
            # more than decoding a photo.
            factor = min(img.size) // (2 * spec.size)
            for v, view in enumerate(edited_views(img.reduce(factor) if factor > 1 else img)):
                batch[j, v, 0] = to_array(view, spec)
        except Exception as e:  # one image's failure, whatever Pillow raised, is that image's error
            batch[j] = 0
            errors[j] = str(e) or type(e).__name__
    if spec.channels == 3:
        rgb = batch[:, :, 0].astype(np.uint32)
        batch[:, :, 1] = ((rgb[:, :, 0] * 299 + rgb[:, :, 1] * 587 + rgb[:, :, 2] * 114 + 500) // 1000)[:, :, None]
    else:
        batch[:, :, 1] = batch[:, :, 0]
    return batch, errors


# An image's pixel signature, which the duplicate check compares beside the code (detail.py): its model input greyed,
# at 32 px, with transparent pixels on black and on white (a copy saved as JPEG was flattened on white).
SIGNATURE_SIDE = 32
SIGNATURE_BACKGROUNDS = (0, 255)
SIGNATURE_SHAPE = (len(SIGNATURE_BACKGROUNDS), SIGNATURE_SIDE, SIGNATURE_SIDE)


def _fitted_alike_on_any_background(img: Image.Image) -> Analysis | None:
    """An opaque picture on no field of one colour (most photographs): to_array makes the same square of it
    whatever the background grey, so one fit serves every signature background. Returns its analysis (_analysed:
    an opaque image's ignores the grey) for that fit, None for any other picture."""
    if img.mode not in ("L", "RGB"):
        return None
    analysis = _analysed(img, SIGNATURE_BACKGROUNDS[0])
    _, colour, content, _ = analysis
    return None if any(_on_a_field(colour, content, background) for background in SIGNATURE_BACKGROUNDS) else analysis


def load_signatures(paths: Sequence[str | Path], max_pixels: int = 64_000_000
                    ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Each image as the model sees it (trimmed to its content), greyed, (n, *SIGNATURE_SHAPE) float32
    grey levels; the whole picture's mean colour (transparency on black), (n, 3) float32 RGB; and an error per image
    ('' if it loaded; a failed image's signature and colour are zeros). The grey signatures cannot tell two plain
    pictures of different colours apart, nor can the code, which is taught to see through colour."""
    out = np.zeros((len(paths), *SIGNATURE_SHAPE), np.float32)
    colour = np.zeros((len(paths), 3), np.float32)
    errors = [""] * len(paths)
    for j, path in enumerate(paths):
        try:
            spec = ImageSpec(2 * SIGNATURE_SIDE, 1, 0, "trim")
            img = plain_mode(_open_for(path, spec, max_pixels))
            analysis = _fitted_alike_on_any_background(img)
            backgrounds = SIGNATURE_BACKGROUNDS[:1] if analysis is not None else SIGNATURE_BACKGROUNDS
            for k, background in enumerate(backgrounds):
                # Fitted at twice the side and averaged down: the fitting's own resize aliases at 32 px.
                grey = to_array(img, replace(spec, background=background), analysis=analysis)[0].astype(np.float32)
                out[j, k] = grey.reshape(SIGNATURE_SIDE, 2, SIGNATURE_SIDE, 2).mean((1, 3))
            out[j, len(backgrounds):] = out[j, 0]
            # The whole picture's, not the fitted square's: a plain picture (a wallpaper of one colour with a
            # corner shape) is read as a field around its shape, which leaves the square nearly black.
            small = flatten(img, 0).convert("RGB").resize((SIGNATURE_SIDE, SIGNATURE_SIDE), Image.Resampling.BOX)
            colour[j] = np.asarray(small, np.float32).reshape(-1, 3).mean(0)
        except Exception as e:  # one image's failure, whatever Pillow raised, is that image's error
            out[j], colour[j] = 0, 0
            errors[j] = str(e) or type(e).__name__
    return out, colour, errors


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Chunks that change what PIL makes of a PNG's samples: transparency, orientation (EXIF, and the EXIF and XMP that
# PIL also reads from text chunks), animation, palette.
_PNG_CHANGES_PIXELS = {b"tRNS", b"eXIf", b"acTL", b"PLTE"}
_PNG_ORIENTATION_TEXT = (b"Raw profile type exif\x00", b"XML:com.adobe.xmp\x00")


class _Strip:
    """A batch of images as one PIL image, one image under the other, that PNGs already at the model's input are
    decoded straight into, without the general path's steps.

    A small PNG takes a third of the time this way that open_image and to_array take (format detection, frame
    and EXIF checks, mode and array copies), and less than a PIL image and a copy of the pixels per file would. On
    2 cores decoding shares the cores with the encoder (BENCHMARKS.md, throughput).
    """

    def __init__(self, spec: ImageSpec, n: int):
        self.spec, self.n = spec, n
        self.mode = "L" if spec.channels == 1 else "RGB"
        self.image = Image.new(self.mode, (spec.size, spec.size * n))

    def decode_png(self, j: int, path: str | Path) -> bool:
        """Decode `path` into slot j if it is a PNG already at the input; False, perhaps with the slot half
        written, for any other file and any file PIL fails on here: those take the general path, so an image
        decodes to the same array either way and errors read the same."""
        size, mode = self.spec.size, self.mode
        png = _plain_png(path, lambda width, height, colour: width == height == size and _PNG_MODES[colour] == mode)
        return png is not None and _decode_png_stream(png[3], mode, self.image.im, (0, size * j, size, size * (j + 1)))

    def fitted(self, alpha: bool, skip: Sequence[int] = ()) -> np.ndarray:
        """(n, C, S, S) uint8 (with alpha: and an opaque alpha plane), every slot not in `skip` fitted as the spec
        says: a PNG already at the input size may still have a border to cut away or a field to make transparent."""
        batch = self.array()
        if alpha:
            batch = np.concatenate([batch, np.full_like(batch[:, :1], 255)], axis=1)
        if self.spec.fit == "trim":
            skipped = set(skip)
            for j in range(self.n):
                if j not in skipped:
                    slot = self.slot(j)
                    background = self.spec.background
                    if content_box(slot, background) is not None or field_as_transparency(slot, background) is not slot:
                        batch[j] = to_array(slot, self.spec, alpha)
        return batch

    def slot(self, j: int) -> Image.Image:
        size = self.spec.size
        return self.image.crop((0, size * j, size, size * (j + 1)))

    def array(self) -> np.ndarray:
        """(n, C, S, S) uint8, writable: torch.from_numpy refuses read-only buffers."""
        size = self.spec.size
        pixels = np.frombuffer(self.image.tobytes(), np.uint8)
        if self.spec.channels == 1:
            return pixels.reshape(self.n, 1, size, size).copy()
        return np.ascontiguousarray(pixels.reshape(self.n, size, size, 3).transpose(0, 3, 1, 2))


_PNG_MODES = {0: "L", 2: "RGB"}  # PNG colour types whose 8-bit samples are PIL's pixels as they stand
_PROBED_PNG_PIXELS = 1 << 20  # inspect_image decodes PNGs up to this size through `_plain_png`


def _plain_png(source: str | Path | bytes, fits: Callable[[int, int, int], bool]) -> tuple[int, int, int, bytes] | None:
    """(width, height, colour type, IDAT stream) of a PNG whose samples are PIL's pixels as they stand, else None:
    8-bit grey or RGB, not interlaced, no chunk that changes the pixels, every chunk's checksum right, and
    fits(width, height, colour type), which is asked before more than the first 4 KB of a file is read.
    source: a file, or its bytes."""
    if isinstance(source, bytes):
        data = source
    else:
        try:
            # A file descriptor, not a file object: one read call for a small file and no buffer, which counts
            # where the whole decode of a 28 px PNG is a few read calls' worth.
            fd = os.open(source, os.O_RDONLY)
            try:
                data = os.read(fd, 4096)  # a small PNG whole; the signature and IHDR of anything else
                if len(data) == 4096 and _png_header(data, fits):  # a larger PNG that fits: read the rest
                    data += b"".join(iter(lambda: os.read(fd, 1 << 16), b""))
            finally:
                os.close(fd)
        except OSError:
            return None  # the general path reports it
    header = _png_header(data, fits)
    if header is None:
        return None
    width, height, colour = header
    at, idat = 8, []
    while at + 12 <= len(data):  # the chunk list: a few chunks in a small file
        length, kind = int.from_bytes(data[at:at + 4], "big"), data[at + 4:at + 8]
        body = data[at + 8:at + 8 + length]
        if len(body) != length or zlib.crc32(body, zlib.crc32(kind)) != int.from_bytes(data[at + 8 + length:at + 12 + length], "big"):
            return None  # truncated or damaged
        if kind in _PNG_CHANGES_PIXELS or (kind in (b"tEXt", b"zTXt", b"iTXt") and body.startswith(_PNG_ORIENTATION_TEXT)):
            return None
        if kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            return width, height, colour, b"".join(idat)
        at += 12 + length
    return None  # no IEND


def _png_header(data: bytes, fits: Callable[[int, int, int], bool]) -> tuple[int, int, int] | None:
    """(width, height, colour type) from a PNG's first bytes if `_plain_png` can take it, else None."""
    if len(data) < 33 or data[:8] != _PNG_SIGNATURE or data[12:16] != b"IHDR":
        return None
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    bit_depth, colour, interlaced = data[24], data[25], data[28]
    if bit_depth != 8 or colour not in _PNG_MODES or interlaced or not fits(width, height, colour):
        return None
    return width, height, colour


def _decode_png_stream(idat: bytes, mode: str, into: object, box: tuple[int, int, int, int]) -> bool:
    """Decode a plain PNG's IDAT stream into `box` of a PIL image core; False if the data is damaged or short.

    PIL's own PNG decoder (zlib and the scanline filters, in C) fed the stream directly, not through PngImageFile's
    chunk parsing and ImageFile.load's machinery in Python.
    """
    try:
        decoder = Image.core.zip_decoder(mode, mode)
        decoder.setimage(into, box)
        return decoder.decode(idat) == (-1, 0)  # -1: the image is complete; 0: no error
    except (AttributeError, OSError, ValueError):  # AttributeError: a Pillow without this internal decoder
        return False


def is_colour(mode: str) -> bool:
    return mode not in GREY_MODES
