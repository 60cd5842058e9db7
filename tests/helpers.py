"""What tests share besides fixtures: real image files, damaged files, vector collections, short training recipes,
the command and build drivers in fresh processes, process control.

Tests import these by name (`from helpers import write_fmnist`); tests/ is on pytest's pythonpath (pyproject.toml).
benchmarks/reliability.py runs some of them at a larger scale.
"""

from __future__ import annotations

import gzip
import io
import os
import random
import signal
import socket
import subprocess
import sys
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from vaepipe.config import EmbedConfig, TrainConfig
from vaepipe.fashion_mnist import CLASSES, load_split
from vaepipe.index import SearchIndex
from vaepipe.query import query_all
from vaepipe.store import MANIFEST_SCHEMA, Workdir, embedding_schema

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


FORMATS = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP", "gif": "GIF", "tif": "TIFF", "bmp": "BMP", "svg": "SVG",
           "svgz": "SVGZ"}


SVG_ICON = Path("/usr/share/icons/Tango/scalable/actions/go-up.svg")  # a real icon (tango-icon-theme, `make test`)


def format_sample(fmt: str) -> bytes:
    """A small valid file of a Pillow format (an EXIF orientation where the format has one), or the Tango SVG."""
    if fmt in ("SVG", "SVGZ"):
        return SVG_ICON.read_bytes() if fmt == "SVG" else gzip.compress(SVG_ICON.read_bytes())
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), "RGB").resize((40, 30), Image.Resampling.BICUBIC)
    if fmt == "GIF":
        img = img.convert("P")
    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # an orientation, so that EXIF transposing is exercised too
    img.save(buf, format=fmt, **({"exif": exif} if fmt in ("JPEG", "PNG", "WEBP", "TIFF") else {}))
    return buf.getvalue()


def mutated(data: bytes, rng: random.Random) -> bytes:
    """The bytes damaged one of the ways files are: bytes flipped, cut short, bytes inserted, a run zeroed."""
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


def temporary_servers(home: Path) -> list[bytes]:
    """Command lines of the Prefect API servers running with this PREFECT_HOME."""
    found = []
    for proc_dir in Path("/proc").iterdir():
        try:
            cmdline = (proc_dir / "cmdline").read_bytes()
            environ = (proc_dir / "environ").read_bytes()
        except OSError:
            continue
        if b"create_app" in cmdline and f"PREFECT_HOME={home}".encode() in environ:
            found.append(cmdline)
    return found


def clustered_vectors(n: int = 6000, d: int = 16, seed: int = 0) -> np.ndarray:
    """n vectors around 30 random centres: neighbours that mean something, for index tests without a model."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(30, d))
    return (centres[rng.integers(0, 30, n)] + 0.3 * rng.normal(size=(n, d))).astype(np.float32)


def write_vector_collection(tmp_path: Path, vectors: np.ndarray, n_parts: int = 1) -> tuple[Path, Path]:
    """Embedding parts and a manifest for `vectors`, as the embed stage writes them; row i is i.png."""
    parts = tmp_path / "emb"
    parts.mkdir()
    shas = [f"{i:064x}" for i in range(len(vectors))]
    for j, rows in enumerate(np.array_split(np.random.default_rng(3).permutation(len(vectors)), n_parts)):
        pq.write_table(pa.table({"path": [f"{i}.png" for i in rows], "sha256": [shas[i] for i in rows],
                                 "model_id": ["m"] * len(rows),
                                 "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors[rows].ravel()), vectors.shape[1])},
                                schema=embedding_schema(vectors.shape[1])), parts / f"part-{j:05d}.parquet")
    manifest = tmp_path / "manifest.parquet"
    pq.write_table(pa.Table.from_pylist([{"path": f"{i}.png", "sha256": s, "status": "ok"} for i, s in enumerate(shas)],
                                        schema=MANIFEST_SCHEMA), manifest)
    return parts, manifest


BUILD_DRIVER = Path(__file__).parent / "build_driver.py"


def neighbour_rows(workdir: Path, k: int = 5) -> list[tuple]:
    """(query, rank, neighbour) of a `query --all` run on the workdir, sorted: two builds' answers compared."""
    table = pq.read_table(query_all(Workdir(workdir), k=k).neighbours).to_pandas()
    return sorted(zip(table["query_path"], table["rank"], table["neighbour_path"]))


def run_build_driver(images: Path, workdir: Path, kill_on: str | None = None) -> tuple[str, str]:
    """Run a build in a subprocess; with kill_on, SIGKILL it as soon as a log line contains that text."""
    from prefect.settings import PREFECT_API_URL

    proc = subprocess.Popen([sys.executable, str(BUILD_DRIVER), str(images), str(workdir)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PYTHONUNBUFFERED": "1"})
    out = []
    for line in proc.stdout:
        out.append(line)
        if kill_on and kill_on in line:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=300)
    proc.stdout.close()
    log = "".join(out)
    if kill_on:
        assert proc.returncode == -signal.SIGKILL, f"never reached {kill_on!r}:\n{log}"
        return "", log
    assert proc.returncode == 0, log
    return next(line.split()[1] for line in out if line.startswith("MODEL_ID")), log


def run_cli(*args, env=None, check=True):
    """The `vaepipe` command in a fresh process, as a user runs it; check: a non-zero exit fails the test."""
    proc = subprocess.run([sys.executable, "-m", "flows.cli", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"vaepipe {args} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc
