"""A folder of hostile and broken files, each made for real, with what the manifest should say about it.

Used by tests/test_hostile_input.py and benchmarks/reliability.py.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def _png_bomb(path: Path, side: int = 100_000) -> None:
    """A ~100-byte PNG whose header declares side x side pixels (10 gigapixels for the default)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def write_hostile(root: Path, outside: Path) -> dict[str, str | None]:
    """Write the files; return {manifest path: expected error kind, or None for a file that must be ok}.

    Hidden files, the symlink loop and its contents must not appear in the manifest at all.
    """
    root.mkdir(parents=True, exist_ok=True)
    outside.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    photo = Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8), "RGB")
    expect: dict[str, str | None] = {}

    def put(name: str, kind: str | None) -> Path:
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        expect[name] = kind
        return p

    put("bad/zero.png", "empty file").write_bytes(b"")
    photo.save(root / "tmp.jpg", quality=90)
    data = (root / "tmp.jpg").read_bytes()
    put("bad/truncated.jpg", "corrupt or truncated image").write_bytes(data[: len(data) // 2])
    photo.save(root / "tmp.png")
    data = (root / "tmp.png").read_bytes()
    put("bad/truncated.png", "corrupt or truncated image").write_bytes(data[: len(data) // 2])
    (root / "tmp.jpg").unlink()
    (root / "tmp.png").unlink()
    put("bad/notes.jpg", "not an image").write_text("shopping list: milk, eggs\n")
    put("bad/page.png", "not an image").write_text("<!doctype html><html><body>404 Not Found</body></html>\n")
    _png_bomb(put("bad/bomb.png", "decompression bomb"))
    put("bad/readme.txt", "skipped: not an image").write_text("not a picture\n")  # by its name: not a failure

    Image.new("L", (1, 1), 200).save(put("odd/one-pixel.png", None))
    Image.new("RGB", (10000, 10), (255, 0, 0)).save(put("odd/very-wide.png", None))
    Image.fromarray(np.linspace(0, 65535, 32 * 32).astype(np.uint16).reshape(32, 32)).save(put("odd/sixteen-bit.png", None))
    photo.convert("CMYK").save(put("odd/cmyk.jpg", None))
    photo.convert("P", palette=Image.Palette.ADAPTIVE).save(put("odd/palette-transparent.png", None), transparency=3)
    frames = [Image.new("P", (24, 24), c) for c in (1, 80, 160)]
    frames[0].save(put("odd/animated.gif", None), save_all=True, append_images=frames[1:], duration=50, loop=0)
    exif = Image.Exif()
    exif[0x0112] = 6
    photo.save(put("odd/exif-rotated.jpg", None), exif=exif)
    photo.save(put("names/café-日本語 ✓.png", None))

    # No read permission: an error for an ordinary user; root reads it anyway.
    p = put("bad/no-permission.png", "permission denied" if os.geteuid() != 0 else None)
    photo.save(p)
    p.chmod(0)

    os.symlink(root / "bad" / "gone.png", put("links/broken.png", "broken symlink"))
    photo.save(outside / "secret.png")
    os.symlink(outside / "secret.png", put("links/outside.png", "symlink outside the collection root"))
    os.symlink(root, root / "links" / "loop")  # a directory loop: never entered
    self_loop = put("links/self-loop.png", "symlink loop")  # ln -s self-loop.png self-loop.png
    os.symlink(self_loop.name, self_loop)
    photo.save(root / "odd" / "inside.png")
    expect["odd/inside.png"] = None
    os.symlink(root / "odd" / "inside.png", put("links/inside.png", None))  # inside the root: read

    # Names that are not UTF-8 (created through bytes), in a file and in a folder, and a folder whose name is
    # spelled like the escaped form of another: each is indexed under its own name.
    bad_name = os.fsencode(root / "names") + b"/latin1-\xe9t\xe9.png"
    photo.save(bad_name.decode("utf-8", "surrogateescape"), format="PNG")
    expect["names/latin1-\\xe9t\\xe9.png"] = None
    os.makedirs(os.fsencode(root / "names") + b"/caf\xe9")
    Image.new("RGB", (20, 20), (10, 200, 30)).save(os.fsdecode(os.fsencode(root / "names") + b"/caf\xe9/x.png"), format="PNG")
    expect["names/caf\\xe9/x.png"] = None
    (root / "names" / "caf\\xe9").mkdir()  # a backslash, an x, an e and a 9
    Image.new("RGB", (20, 20), (200, 10, 30)).save(root / "names" / "caf\\xe9" / "x.png")
    expect["names/caf\\\\xe9/x.png"] = None  # its backslash doubled in the manifest

    (root / ".hidden-dir").mkdir()
    photo.save(root / ".hidden-dir" / "x.png")
    photo.save(root / "odd" / ".hidden.png")
    return expect
