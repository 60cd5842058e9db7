"""Damaged files of every format the product reads: each one ends as an ok or an error row, never as an
exception that stops the run (Pillow's plugins raise struct.error, TypeError, IndexError and more on bad bytes)."""

import gzip
import io
import random
from pathlib import Path

import numpy as np
from PIL import Image

from vaepipe.config import IngestConfig
from vaepipe.images import ImageSpec, load_batch
from vaepipe.ingest import inspect_file

FORMATS = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP", "gif": "GIF", "tif": "TIFF", "bmp": "BMP", "svg": "SVG",
           "svgz": "SVGZ"}
MUTATIONS_PER_FORMAT = 150
SVG = Path("/usr/share/icons/Tango/scalable/actions/go-up.svg")  # a real icon (tango-icon-theme, `make test`)


def _original(fmt: str) -> bytes:
    if fmt in ("SVG", "SVGZ"):
        return SVG.read_bytes() if fmt == "SVG" else gzip.compress(SVG.read_bytes())
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), "RGB").resize((40, 30), Image.Resampling.BICUBIC)
    if fmt == "GIF":
        img = img.convert("P")
    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # an orientation, so that EXIF transposing is exercised too
    img.save(buf, format=fmt, **({"exif": exif} if fmt in ("JPEG", "PNG", "WEBP", "TIFF") else {}))
    return buf.getvalue()


def _mutated(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    kind = rng.choice(["flip", "flip", "cut", "insert", "zero"])
    if kind == "flip":
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(len(b))] = rng.randrange(256)
    elif kind == "cut":
        del b[rng.randrange(8, len(b)):]
    elif kind == "insert":
        at = rng.randrange(len(b))
        b[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    else:
        at = rng.randrange(len(b))
        b[at:at + rng.randint(1, 32)] = bytes(min(32, len(b) - at))
    return bytes(b)


def test_damaged_files_of_every_format_end_as_ok_or_error(tmp_path: Path):
    rng = random.Random(0)
    config = IngestConfig()
    outcomes: dict[str, int] = {}
    for suffix, fmt in FORMATS.items():
        data = _original(fmt)
        for i in range(MUTATIONS_PER_FORMAT):
            path = tmp_path / f"{suffix}-{i:03d}.{suffix}"
            path.write_bytes(_mutated(data, rng))
            row = inspect_file(tmp_path, str(path), config)
            assert row["status"] in ("ok", "error") and (row["status"] == "ok") == (row["error"] is None), row
            for spec in (ImageSpec(32, 3, 255, "trim"), ImageSpec(28, 1, 0, "letterbox")):
                batch, errors = load_batch([path], spec)
                assert batch.shape == (1, spec.channels, spec.size, spec.size)
                assert errors[0] == "" or (errors[0] and not batch.any()), errors
            outcomes[row["status"]] = outcomes.get(row["status"], 0) + 1
    assert outcomes.get("error", 0) > 0  # the mutations did damage files
