"""Decoding image files into model inputs: vaepipe's own path against torchvision.io (libpng, libjpeg-turbo) and
plain Pillow, side by side on one core, in one run.

    .venv/bin/python benchmarks/decoders.py --png 10000 --jpeg 1000 --repeats 3

Each method turns every file of a folder into uint8 pixels the model can take, in this process, one thread:

  vaepipe           images.load_batch, 256 files a call: the product's path (small plain PNGs decoded straight
                    from their IDAT stream; JPEGs decoded at the smallest DCT scale that covers the input), with
                    the input's fitting (letterbox for the 28 px PNGs, trim for the photos)
  open_image        images.open_image as load_batch calls it for a JPEG (drafted), without the fitting after it
  torchvision       torchvision.io.decode_image(read_file(path)): the whole file decoded to a uint8 tensor, then
                    (photos) resized to the input's side; no fitting at all, so a lower bound of what a
                    torchvision path would cost
  Pillow            Image.open(path), convert, (photos) draft and resize to the side: the same, with Pillow

Folders: benchmarks/throughput.py's (Fashion-MNIST as 28 px grey PNGs; 640x480 colour JPEGs made from it).
Results go to benchmarks/results/decoders.json and .md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torchvision.io as tio
import torchvision.transforms.v2.functional as F
from PIL import Image

from results_io import save_results  # benchmarks/ is on sys.path when a script runs
from throughput import make_folder
from vaepipe.images import ImageSpec, load_batch, open_image

SPECS = {"png": ImageSpec(28, 1, 255, "letterbox"), "jpeg": ImageSpec(32, 3, 255, "trim")}


def by_vaepipe(paths: list[Path], spec: ImageSpec) -> int:
    n = 0
    for s in range(0, len(paths), 256):
        batch, errors = load_batch(paths[s:s + 256], spec)
        n += sum(not e for e in errors)
    return n


def by_open_image(paths: list[Path], spec: ImageSpec) -> int:
    for p in paths:  # what load_batch decodes a JPEG (or a PNG its own path does not take) with, before fitting
        np.asarray(open_image(p, 64_000_000, draft_size=spec.size * 5 // 4, shorter=True))
    return len(paths)


def by_torchvision(paths: list[Path], spec: ImageSpec) -> int:
    mode = tio.ImageReadMode.GRAY if spec.channels == 1 else tio.ImageReadMode.RGB
    for p in paths:
        x = tio.decode_image(tio.read_file(str(p)), mode=mode)
        if x.shape[-1] != spec.size:
            x = F.resize(x, [spec.size], antialias=True)
    return len(paths)


def by_pillow(paths: list[Path], spec: ImageSpec) -> int:
    for p in paths:
        with Image.open(p) as img:
            if img.format == "JPEG":
                img.draft("RGB", (spec.size * 2, spec.size * 2))
            img = img.convert("L" if spec.channels == 1 else "RGB")
            if img.width != spec.size:
                img = img.resize((spec.size, round(img.height * spec.size / img.width)), Image.Resampling.BILINEAR)
            np.asarray(img)
    return len(paths)


METHODS = {"vaepipe": by_vaepipe, "vaepipe open_image, no fitting": by_open_image, "torchvision": by_torchvision,
           "Pillow": by_pillow}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--png", type=int, default=10_000)
    ap.add_argument("--jpeg", type=int, default=1_000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    folders = {"png": make_folder("png", args.png), "jpeg": make_folder("jpeg", args.jpeg)}
    files = {kind: sorted(f.rglob("*.png" if kind == "png" else "*.jpg")) for kind, f in folders.items()}
    times: dict[str, list[float]] = {}
    for _ in range(args.repeats):  # alternating, so a noisy neighbour slows every method alike
        for kind, paths in files.items():
            for name, method in METHODS.items():
                t0 = time.perf_counter()
                assert method(paths, SPECS[kind]) == len(paths)
                times.setdefault(f"{kind}|{name}", []).append((time.perf_counter() - t0) / len(paths) * 1e6)
    lines = ["| files | method | median us per file | runs (us) | x vaepipe |", "|---|---|---:|---|---:|"]
    for key, ts in times.items():
        kind, name = key.split("|")
        base = statistics.median(times[f"{kind}|vaepipe"])
        label = f"{len(files[kind]):,} {'28 px grey PNGs' if kind == 'png' else '640x480 JPEGs'}"
        lines.append(f"| {label} | {name} | {statistics.median(ts):.0f} | {', '.join(f'{t:.0f}' for t in ts)} | "
                     f"{statistics.median(ts) / base:.2f} |")
    header = (f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {platform.machine()}, {os.cpu_count()} "
              f"cores (one thread used); command: `python benchmarks/decoders.py --png {args.png} --jpeg {args.jpeg} "
              f"--repeats {args.repeats}`")
    save_results("decoders", header, lines, {"us_per_file": times})


if __name__ == "__main__":
    main()
