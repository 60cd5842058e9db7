"""What tests share besides fixtures: real image files, short training recipes, process control.

Tests import these by name (`from helpers import write_fmnist`); tests/ is on pytest's pythonpath (pyproject.toml).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
from PIL import Image

from vaepipe.config import EmbedConfig, TrainConfig
from vaepipe.fashion_mnist import CLASSES, load_split
from vaepipe.index import SearchIndex

N_FMNIST = 600  # enough for neighbours to mean something, small enough to train in seconds
# The default recipe, short: 6 epochs of small batches. (At 3 the latent carried ~6 nats and a resized copy of an
# image did not always land nearest its original.)
FAST_TRAIN = TrainConfig(epochs=6, batch_size=32, seed=0)
SERIAL = EmbedConfig(workers=0)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_group(proc: subprocess.Popen, timeout: float) -> None:
    """SIGTERM a process started with start_new_session=True and its children, SIGKILL them if they outlast
    `timeout` seconds: nothing a test starts may outlive the session. (Prefect's worker once hung in its own
    shutdown after its runs had completed, CI 2026-11-26.)"""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def write_fmnist(folder: Path, start: int = 0, n: int = N_FMNIST) -> list[Path]:
    """Real Fashion-MNIST test images as PNGs in class sub-folders (from the bundled split)."""
    images, labels = load_split("t10k")
    paths = []
    for i in range(start, start + n):
        p = folder / CLASSES[labels[i]] / f"{i:05d}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i], "L").save(p)
        paths.append(p)
    return paths


def write_mixed(folder: Path) -> dict[str, Path]:
    """One real file per format and mode the ingest stage must handle, plus three bad files."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8), "RGB")
    files = {
        "png_rgb": folder / "colour" / "rgb.png",
        "jpeg": folder / "colour" / "photo.jpg",
        "webp": folder / "colour" / "deep" / "pic.webp",
        "bmp": folder / "colour" / "pic.bmp",
        "tiff": folder / "colour" / "pic.tiff",
        "gif": folder / "anim.gif",
        "rgba": folder / "alpha.png",
        "grey": folder / "grey.png",
        "palette": folder / "palette.png",
        "grey16": folder / "grey16.png",
        "cmyk": folder / "cmyk.jpg",
        "corrupt": folder / "bad" / "truncated.png",
        "text": folder / "bad" / "notes.jpg",
        "empty": folder / "bad" / "empty.png",
    }
    for p in files.values():
        p.parent.mkdir(parents=True, exist_ok=True)
    rgb.save(files["png_rgb"])
    rgb.save(files["jpeg"], quality=90)
    rgb.save(files["webp"])
    rgb.save(files["bmp"])
    rgb.save(files["tiff"])
    frames = [Image.new("P", (20, 20), i) for i in (10, 200)]
    frames[0].save(files["gif"], save_all=True, append_images=frames[1:], duration=100, loop=0)
    rgba = Image.new("RGBA", (30, 30), (255, 0, 0, 0))  # fully transparent
    rgba.paste((0, 255, 0, 255), (10, 10, 20, 20))
    rgba.save(files["rgba"])
    Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8), "L").save(files["grey"])
    rgb.convert("P", palette=Image.Palette.ADAPTIVE).save(files["palette"], transparency=0)
    Image.fromarray(np.full((16, 16), 65535, dtype=np.uint16)).save(files["grey16"])
    rgb.convert("CMYK").save(files["cmyk"])
    full = (folder / "colour" / "rgb.png").read_bytes()
    files["corrupt"].write_bytes(full[: len(full) // 2])
    files["text"].write_text("this is not a picture\n")
    files["empty"].write_bytes(b"")
    return files


def flat_index(vectors: np.ndarray, paths: list[str], shas: list[str]) -> SearchIndex:
    """A real flat FAISS index over the vectors made unit length, opened as search sees it (centre 0)."""
    x = np.ascontiguousarray(vectors, np.float32)
    faiss.normalize_L2(x)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    meta = {"n": len(x), "dim": x.shape[1], "metric": "cosine", "centre": [0.0] * x.shape[1], "kind": "flat", "params": {}}
    return SearchIndex(index, pa.table({"path": paths, "sha256": shas}), meta)
