"""Fashion-MNIST (Zalando, MIT) as real image folders: the demo collection and the benchmark's data.

The test split ships in this repository (data/fashion-mnist); the full set comes from Debian's
package dataset-fashion-mnist (/usr/share/datasets/fashion-mnist). Nothing is downloaded.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
from PIL import Image

from vaepipe.errors import VaepipeError

from vaepipe.store import write_json

CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot"]
BUNDLED_DIR = Path(__file__).resolve().parent.parent / "data" / "fashion-mnist"
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (gzipped or not): the format MNIST-style data sets are shipped in."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_split(split: str = "t10k", data_dir: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 28, 28), labels uint8 (N,)) for split 't10k' (test) or 'train'."""
    candidates = [data_dir] if data_dir else [BUNDLED_DIR, DEBIAN_DIR]
    for d in candidates:
        img, lbl = Path(d) / f"{split}-images-idx3-ubyte.gz", Path(d) / f"{split}-labels-idx1-ubyte.gz"
        if img.exists() and lbl.exists():
            return read_idx(img), read_idx(lbl)
    raise VaepipeError(f"Fashion-MNIST split {split!r} not found in {', '.join(map(str, candidates))}; "
                       "install it with: sudo apt-get install dataset-fashion-mnist")


def export_pngs(images: np.ndarray, labels: np.ndarray, out_dir: Path, prefix: str = "") -> Path:
    """Write <out_dir>/<class>/<prefix><index>.png for each image; skips work already done."""
    out_dir = Path(out_dir)
    marker = out_dir / ".exported.json"
    if marker.exists():
        return out_dir
    for c in CLASSES:
        (out_dir / c).mkdir(parents=True, exist_ok=True)
    for i, (img, label) in enumerate(zip(images, labels)):
        Image.fromarray(img, "L").save(out_dir / CLASSES[label] / f"{prefix}{i:05d}.png")
    write_json({"images": len(images), "classes": CLASSES, "source": "Fashion-MNIST (Zalando SE, MIT)"}, marker)
    return out_dir
