"""Folder -> embeddings throughput, side by side with its floors and a naive peer, in one run.

    .venv/bin/python benchmarks/throughput.py --sizes 10000 100000 --kinds png jpeg

For each kind of folder (a: 28x28 grey PNGs from Fashion-MNIST; b: 640x480 colour JPEG photos made by
upscaling Fashion-MNIST images and tinting them) and each size, every measurement runs in its own
process (clean peak memory) on the same files:

  pipeline     vaepipe.ingest.ingest (walk, hash and check every file -> manifest), then vaepipe.embed.embed
               (--workers DataLoader workers that decode, and on CPU also encode, batches of 256) -> Parquet parts;
               timed apart, so the table has the embedding stage alone and the whole way from folder to embeddings
  decode floor the same DataLoader (same files, same processes) without the model
  model floor  the encoder alone on uint8 tensors already in the memory of the device it runs on
  (for colour images both floors include the grey rendering each image also gets, as the pipeline does)
  naive peer   a notebook loop: PIL open -> convert -> resize -> stack 256 -> encoder, one process

--workers defaults to the product's default, one per usable core. The encoder runs where the product runs it:
on the GPU when torch sees one (every measurement starts CUDA before its clock, as a command does once), else
on the CPU.

The model is the product's default VAE for that input (28 px grey, 64 px colour), untrained: throughput
does not depend on the weights. Results go to benchmarks/results/throughput-<kinds>.json and .md.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from results_io import save_results  # benchmarks/ is on sys.path when a script runs

from vaepipe.config import usable_cores

DATA = Path(os.environ.get("VAEPIPE_BENCH_DATA", "/tmp/vaepipe-bench"))


def make_folder(kind: str, n: int) -> Path:
    """n real images (Fashion-MNIST test split, repeated with a per-copy tint or noise so every file differs),
    written by one process per core. (Folders made before 2026-11-26 12:00 UTC drew the noise from one random
    stream; each file now has its own, seeded by its number.)"""
    from concurrent.futures import ProcessPoolExecutor

    folder = DATA / f"{kind}-{n}"
    if (folder / ".done").exists():
        return folder
    with ProcessPoolExecutor() as pool:
        list(pool.map(_make_image, [(kind, folder, i) for i in range(n)], chunksize=256))
    (folder / ".done").write_text("ok")
    return folder


def _make_image(job: tuple[str, Path, int]) -> None:
    import numpy as np
    from PIL import Image

    kind, folder, i = job
    images = _test_images()
    rng = np.random.default_rng(i)
    sub = folder / f"{i // 1000:04d}"
    sub.mkdir(parents=True, exist_ok=True)
    img = images[i % len(images)]
    if kind == "png":
        noisy = np.clip(img.astype(int) + rng.integers(-3, 4, img.shape), 0, 255).astype(np.uint8)
        Image.fromarray(noisy, "L").save(sub / f"{i:06d}.png")
    else:
        tint = rng.uniform(0.6, 1.0, 3)
        rgb = (img[:, :, None] * tint[None, None, :]).astype(np.uint8)
        Image.fromarray(rgb, "RGB").resize((480, 480), Image.Resampling.BILINEAR).crop((-80, 0, 560, 480)).save(
            sub / f"{i:06d}.jpg", quality=90)


@functools.cache  # once per process of the pool
def _test_images():
    from vaepipe.fashion_mnist import load_split

    return load_split("t10k")[0]


def model_config(kind: str):
    """The product's default network for this kind of folder: 28 px grey for the PNGs, 64 px colour for the photos."""
    from vaepipe.config import TrainConfig
    from vaepipe.model import VAEConfig

    t, size = TrainConfig(), 28 if kind == "png" else 64
    return VAEConfig(image_size=size, channels=1 if kind == "png" else 3, latent_dim=t.latent_dim, width=t.width,
                     batch_norm=t.use_batch_norm(size))


def measure(what: str, kind: str, n: int, workers: int) -> dict:
    """Run one measurement in this process (called in a child): returns images/s and peak RSS."""
    import numpy as np
    import torch

    from vaepipe.config import EmbedConfig, IngestConfig
    from vaepipe.embed import embed
    from vaepipe.embeddings import has_grey_renderings
    from vaepipe.batches import iter_image_batches, to_float
    from vaepipe.images import ImageSpec
    from vaepipe.ingest import ingest
    from vaepipe.model import VAE, default_device, folded, save_checkpoint

    folder = make_folder(kind, n)
    cfg = model_config(kind)
    spec: ImageSpec = cfg.spec
    model = VAE(cfg).eval()  # untrained: throughput does not depend on the weights
    device = default_device()  # where the pipeline's embedding stage runs the encoder
    fast = folded(model).to(device)  # the floors and the naive peer get the encoder the pipeline uses, batch norm folded
    if device.type == "cuda":
        torch.zeros(1, device=device)  # CUDA's start (~1 s) is a once-per-command cost, like the imports: not timed
    # The pipeline walks the folder itself: a list of 100,000 Paths here would count in its peak memory.
    paths = [] if what == "pipeline" else sorted(folder.rglob("*.png" if kind == "png" else "*.jpg"))
    work = Path(tempfile.mkdtemp(prefix="vaepipe-tp-"))
    t0 = time.monotonic()
    if what == "pipeline":
        manifest = work / "manifest.parquet"
        ingest(folder, manifest, IngestConfig(workers=workers))
        t_ingest = time.monotonic() - t0
        save_checkpoint(model, work / "model" / "model.pt")
        t0 = time.monotonic()
        embed(folder, manifest, work / "model", work / "emb", EmbedConfig(batch_size=256, workers=workers))
    elif what == "decode floor":  # a colour model's images come with their grey renderings, as the pipeline's do
        for _ in iter_image_batches(paths, spec, batch_size=256, workers=workers, grey=has_grey_renderings(cfg)):
            pass
    elif what == "model floor":  # two encodings an image for a colour model (the image and its grey rendering)
        renderings = 2 if has_grey_renderings(cfg) else 1
        x = torch.randint(0, 256, (min(n, 20_000) * renderings, spec.channels, spec.size, spec.size), dtype=torch.uint8, device=device)
        with torch.no_grad():
            for _ in range(max(1, n // len(x))):
                for b in x.split(256):
                    fast.encode(to_float(b))
        n = max(1, n // len(x)) * len(x) // renderings
    elif what == "naive peer":
        from PIL import Image
        batch = []
        with torch.no_grad():
            for p in paths:
                img = Image.open(p).convert("L" if spec.channels == 1 else "RGB").resize((spec.size, spec.size))
                arr = np.asarray(img, dtype=np.float32) / 255.0
                batch.append(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))
                if len(batch) == 256:
                    fast.encode(torch.from_numpy(np.stack(batch)).to(device))
                    batch = []
            if batch:
                fast.encode(torch.from_numpy(np.stack(batch)).to(device))
    if device.type == "cuda":
        torch.cuda.synchronize()  # the GPU's queued work counts
    seconds = time.monotonic() - t0
    shutil.rmtree(work, ignore_errors=True)  # 100,000 embeddings per run add up
    # Peak of this process plus the largest child (decoding workers): conservative, since a forked child's RSS
    # also counts the pages it shares with this process.
    self_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    child_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    out = {"what": what, "kind": kind, "n": n, "seconds": round(seconds, 2), "images_per_s": round(n / seconds, 1),
           "peak_rss_mb": round(self_mb + child_mb), "peak_self_mb": round(self_mb), "peak_child_mb": round(child_mb)}
    if what == "pipeline":
        out["ingest_seconds"] = round(t_ingest, 2)
        out["folder_images_per_s"] = round(n / (t_ingest + seconds), 1)  # ingest + embed
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000])
    ap.add_argument("--kinds", nargs="+", default=["png", "jpeg"], choices=["png", "jpeg"])
    ap.add_argument("--repeats", type=int, default=3, help="rounds of the four measurements; the table shows each one's median")
    ap.add_argument("--workers", type=int, default=usable_cores(), help="processes that read files (default: one per usable core, %(default)s here)")
    ap.add_argument("--measure", nargs=3, metavar=("WHAT", "KIND", "N"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        what, kind, n = args.measure
        print("RESULT " + json.dumps(measure(what, kind, int(n), args.workers)))
        return
    rows = []
    for kind in args.kinds:
        for n in args.sizes:
            make_folder(kind, n)
            runs: dict[str, list[dict]] = {}
            for _ in range(args.repeats):  # rounds of all four, so a noisy minute hits every measurement alike
                for what in ("pipeline", "decode floor", "model floor", "naive peer"):
                    proc = subprocess.run([sys.executable, __file__, "--measure", what, kind, str(n), "--workers", str(args.workers)],
                                          capture_output=True, text=True, check=True)
                    row = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
                    runs.setdefault(what, []).append(row)
                    print(row, flush=True)
            for what, measured in runs.items():  # the median run by images/s, with every run's figures kept
                median = sorted(measured, key=lambda r: r["images_per_s"])[len(measured) // 2]
                rows.append({**median, **{f"runs_{key}": [r[key] for r in measured]
                                          for key in ("images_per_s", "ingest_seconds", "folder_images_per_s") if key in median}})
    lines = ["| folder | images | ingest s | embed img/s | folder -> embeddings img/s | decode floor | model floor | naive peer "
             "| folder -> embeddings / naive | embed / naive | embed / slower floor | pipeline peak RSS MB (process + largest child) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    notes = []
    for kind in args.kinds:
        for n in args.sizes:
            r = {x["what"]: x for x in rows if x["kind"] == kind and (x["n"] == n or x["what"] == "model floor" and abs(x["n"] - n) < 20_000)}
            p, naive = r["pipeline"], r["naive peer"]["images_per_s"]
            floor = min(r["decode floor"]["images_per_s"], r["model floor"]["images_per_s"])
            folder = _median(p["runs_folder_images_per_s"])
            name = "28x28 PNG" if kind == "png" else "640x480 JPEG"
            lines.append(f"| {name} | {n:,} | {_median(p['runs_ingest_seconds']):.2f} | {p['images_per_s']:,.0f} | {folder:,.0f} | "
                         f"{r['decode floor']['images_per_s']:,.0f} | {r['model floor']['images_per_s']:,.0f} | {naive:,.0f} | "
                         f"{folder / naive:.2f}x | {p['images_per_s'] / naive:.2f}x | {p['images_per_s'] / floor:.0%} | "
                         f"{p['peak_rss_mb']:,} ({p['peak_self_mb']:,} + {p['peak_child_mb']:,}) |")
            rounds = zip(p["runs_folder_images_per_s"], p["runs_images_per_s"], r["naive peer"]["runs_images_per_s"])
            notes.append(f"{name}, {n:,}: " + " / ".join(f"{f / v:.2f}x ({e / v:.2f}x)" for f, e, v in rounds))
    lines += ["", "Each round against the naive peer of the same round, folder -> embeddings (embed stage alone):", ""]
    lines += [f"* {note}" for note in notes]
    gpu = _gpu_name()
    header = (f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {platform.machine()}, {usable_cores()} cores"
              f"{', encoder on ' + gpu if gpu else ''}; command: `python benchmarks/throughput.py --sizes {' '.join(map(str, args.sizes))} "
              f"--kinds {' '.join(args.kinds)} --repeats {args.repeats} --workers {args.workers}`; each figure the median of {args.repeats} runs")
    save_results("throughput-" + "-".join(args.kinds) + ("-gpu" if gpu else ""), header, lines, {"rows": rows, "gpu": gpu})


def _gpu_name() -> str | None:
    """The GPU the encoder runs on, or None: asked in a child, so this process never starts CUDA before forking."""
    out = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.get_device_name() if torch.cuda.is_available() else '')"],
                         capture_output=True, text=True, check=True).stdout.strip()
    return out or None


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


if __name__ == "__main__":
    main()
