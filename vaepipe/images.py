"""How an image file becomes the model's input: decode, orient, flatten modes, letterbox.

Every stage that reads pixels (ingest's check, training, embedding, queries) goes
through `load_array` so an image means the same thing everywhere.
"""

from __future__ import annotations

import warnings
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
GREY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


@dataclass(frozen=True)
class ImageSpec:
    """The model's input: a square of `size` pixels with 1 (grey) or 3 (RGB) channels."""

    size: int
    channels: int
    background: int = 0  # grey level behind transparent pixels and in the letterbox bars


class ImageError(Exception):
    """A file that is not a usable image; the message is meant for a person.

    Messages read "<kind>: <detail>": the kind is stable, so errors can be counted by reason.
    """


def open_image(path: Path, max_pixels: int, draft_size: int | None = None) -> Image.Image:
    """Open and fully decode the first frame, upright (EXIF orientation applied)."""
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
            if draft_size and img.format == "JPEG":
                # JPEG can decode at 1/2, 1/4, 1/8 scale: far cheaper when the model wants 28 or 64 px.
                img.draft(img.mode, (draft_size, draft_size))
            img.load()
            ImageOps.exif_transpose(img, in_place=True)  # in place: no copy of the (usual) unrotated image
            return img
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError("not an image: format not recognised") from None
    except Image.DecompressionBombError as e:
        raise ImageError(f"decompression bomb: {e}") from None
    except (PermissionError, FileNotFoundError):
        raise  # reported by the caller, which knows whether the file vanished
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageError(f"corrupt or truncated image: {type(e).__name__}: {e}") from None


def _flatten(img: Image.Image, background: int) -> Image.Image:
    """Any PIL mode -> 'L' or 'RGB', alpha composited onto the background grey."""
    if img.mode.startswith("I") or img.mode == "F":
        # 16/32-bit grey: scale to 8 bits by the type's range, not the image's own max.
        arr = np.asarray(img, dtype=np.float64)
        scale = 255.0 if img.mode == "F" and arr.max(initial=0) <= 1.0 else (1 / 257 if arr.max(initial=0) > 255 else 1.0)
        return Image.fromarray(np.clip(arr * scale, 0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("1", "L", "RGB"):
        return img.convert("L") if img.mode == "1" else img
    if img.mode in ("LA", "La", "PA", "RGBA", "RGBa"):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (background, background, background, 255))
        flat = Image.alpha_composite(canvas, rgba).convert("RGB")
        return flat.convert("L") if img.mode in ("LA", "La") else flat
    return img.convert("RGB")  # CMYK, YCbCr, LAB, HSV


def to_array(img: Image.Image, spec: ImageSpec) -> np.ndarray:
    """Letterbox: scale the longer side to spec.size keeping the aspect ratio, centre on background bars.

    Returns uint8 of shape (channels, size, size).
    """
    if img.mode not in ("L", "RGB"):  # the common modes skip this: per image, it costs more than a 28 px decode
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "Palette images with Transparency expressed in bytes ..."
            img = _flatten(img, spec.background)
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


def load_array(path: Path, spec: ImageSpec, max_pixels: int = 64_000_000) -> np.ndarray:
    exact = _load_exact_png(path, spec)
    return exact if exact is not None else to_array(open_image(path, max_pixels, draft_size=spec.size), spec)


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Chunks that change what PIL makes of a PNG's samples: transparency, orientation (EXIF, and the EXIF and XMP that
# PIL also reads from text chunks), animation, palette.
_PNG_CHANGES_PIXELS = {b"tRNS", b"eXIf", b"acTL", b"PLTE"}
_PNG_ORIENTATION_TEXT = (b"Raw profile type exif\x00", b"XML:com.adobe.xmp\x00")


def _load_exact_png(path: Path, spec: ImageSpec) -> np.ndarray | None:
    """The pixels of a PNG that is already the model's input, without the general path's steps; None otherwise.

    A 28 px PNG takes ~40 us this way against ~85 us through open_image and to_array (format detection, frame
    and EXIF checks, mode and array copies), and on 2 cores decoding shares the cores with the encoder
    (BENCHMARKS.md, throughput). Only files whose samples are the input as they stand take it: 8-bit, the
    model's size and channels (grey or RGB), not interlaced, no chunk that changes the pixels, every chunk's
    checksum right. Every other file goes through the general path, and so does any file PIL fails on here,
    so an image decodes to the same array either way and errors read the same.
    """
    try:
        with open(path, "rb") as f:
            data = f.read(33)  # signature and IHDR: other files cost one small read
            if len(data) < 33 or data[:8] != _PNG_SIGNATURE or data[12:16] != b"IHDR":
                return None
            data += f.read()
    except OSError:
        return None  # the general path reports it
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    bit_depth, colour_type, interlaced = data[24], data[25], data[28]
    if ((width, height) != (spec.size, spec.size) or bit_depth != 8 or colour_type != (0 if spec.channels == 1 else 2)
            or interlaced):
        return None
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
            break
        at += 12 + length
    else:
        return None  # no IEND
    # PIL's PNG decoder (zlib and the scanline filters, in C) fed the IDAT stream directly: through PngImageFile,
    # its chunk parsing and ImageFile.load's machinery in Python took a file 84 us against 40 (back-to-back runs).
    mode = "L" if spec.channels == 1 else "RGB"
    try:
        img = Image.new(mode, (width, height))
        decoder = Image.core.zip_decoder(mode, mode)
        decoder.setimage(img.im, (0, 0, width, height))
        if decoder.decode(b"".join(idat)) != (-1, 0):  # -1: the image is complete; 0: no error
            return None
        pixels = np.frombuffer(img.tobytes(), np.uint8)
    except (AttributeError, OSError, ValueError):  # AttributeError: a Pillow without this internal decoder
        return None
    if spec.channels == 1:
        return pixels.reshape(1, height, width).copy()  # writable: torch.from_numpy refuses read-only buffers
    return np.ascontiguousarray(pixels.reshape(height, width, 3).transpose(2, 0, 1))


def to_float(batch: torch.Tensor) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float in [0, 1], the model's input scale."""
    return batch.float().div_(255.0)


class ImageFiles(Dataset):
    """Decodes files in DataLoader workers; a failure is returned, not raised, so one file can't stop a run.

    A worker decodes a whole batch into one array (`__getitems__`, which DataLoader prefers to one call per
    item): a tensor per 28 px image and the stack after them cost ~20 us an image, a third of its decode.
    """

    def __init__(self, paths: Sequence[Path], spec: ImageSpec, max_pixels: int = 64_000_000):
        self.paths = paths
        self.spec = spec
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, list[int], list[str]]:
        return self.__getitems__([i])

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, list[int], list[str]]:
        batch = np.zeros((len(indices), self.spec.channels, self.spec.size, self.spec.size), np.uint8)
        errors = [""] * len(indices)
        for j, i in enumerate(indices):
            try:
                batch[j] = load_array(self.paths[i], self.spec, self.max_pixels)
            except (ImageError, OSError) as e:
                errors[j] = str(e) or type(e).__name__
        return torch.from_numpy(batch), list(indices), errors


def iter_image_batches(
    paths: Sequence[Path], spec: ImageSpec, batch_size: int, workers: int, max_pixels: int = 64_000_000
) -> Iterator[tuple[torch.Tensor, list[int], list[str]]]:
    """Yield (uint8 images, positions in `paths`, error per image or '') in order, decoded by `workers` processes.

    A failed image's slot in the batch is zeros; its error says why.
    """
    loader = DataLoader(
        ImageFiles(paths, spec, max_pixels),
        batch_size=batch_size,
        num_workers=workers if len(paths) > batch_size else 0,
        shuffle=False,
        collate_fn=_as_is,
    )
    yield from loader


def _as_is(batch: tuple[torch.Tensor, list[int], list[str]]) -> tuple[torch.Tensor, list[int], list[str]]:
    return batch  # ImageFiles.__getitems__ already made the batch


def is_colour(mode: str) -> bool:
    return mode not in GREY_MODES
