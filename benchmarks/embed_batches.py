"""The embedding stage's batch size on this machine, side by side in one process.

    .venv/bin/python benchmarks/embed_batches.py --png 100000 --jpeg 20000 --repeats 3

For each folder (throughput.py's, made if missing) and in alternating rounds: vaepipe.embed.embed over the
folder's manifest in its default parts with fixed batches of 256, with fixed batches of 1,024, and as the product
runs it (on a GPU `gpu_batch_size` picks the batch from the image size; on a CPU it is the configured 256, so that
row runs the same code as the first); and the decode floor (the same DataLoader without the model) at 256.
The encoder is the product's default network for the input, untrained. Results go to
benchmarks/results/embed_batches[-gpu].json and .md.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch
from results_io import save_results  # benchmarks/ is on sys.path when a script runs
from throughput import make_folder, model_config

import vaepipe.embed
from vaepipe.config import EmbedConfig, IngestConfig, usable_cores
from vaepipe.embed import UnderRoot, embed
from vaepipe.batches import iter_image_batches
from vaepipe.ingest import ingest, read_ok
from vaepipe.model import VAE, default_device, save_checkpoint

PRODUCT_RULE = vaepipe.embed.gpu_batch_size


def run(kind: str, n: int, repeats: int) -> dict[str, list[float]]:
    folder = make_folder(kind, n)
    cfg = model_config(kind)
    work = Path(tempfile.mkdtemp(prefix="vaepipe-eb-"))
    manifest = work / "manifest.parquet"
    ingest(folder, manifest, IngestConfig())
    save_checkpoint(VAE(cfg).eval(), work / "model" / "model.pt")
    files = UnderRoot(folder, read_ok(manifest)["path"].combine_chunks())
    workers = EmbedConfig().workers

    def stage(batch: int, rule) -> None:
        vaepipe.embed.gpu_batch_size = rule  # encode_files looks it up at each call
        try:
            out = work / f"emb-{time.monotonic_ns()}"
            assert embed(folder, manifest, work / "model", out, EmbedConfig(batch_size=batch)).n_embedded == n
        finally:
            vaepipe.embed.gpu_batch_size = PRODUCT_RULE

    def fixed(batch: int, spec, n, workers) -> int:
        return batch

    ways = {
        "decode floor, batches of 256": lambda: [None for _ in iter_image_batches(files, cfg.spec, 256, workers)],
        "embed, batches of 256": lambda: stage(256, fixed),
        "embed, batches of 1,024": lambda: stage(1024, fixed),
        "embed as the product runs it": lambda: stage(EmbedConfig().batch_size, PRODUCT_RULE),
    }
    seconds: dict[str, list[float]] = {way: [] for way in ways}
    for _ in range(repeats):
        for way, f in ways.items():
            t0 = time.monotonic()
            f()
            seconds[way].append(round(time.monotonic() - t0, 2))
            print(kind, n, way, seconds[way][-1], flush=True)
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--png", type=int, default=100_000, help="28x28 PNGs (0: none)")
    ap.add_argument("--jpeg", type=int, default=20_000, help="640x480 JPEG photos (0: none)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    device = default_device()
    if device.type == "cuda":
        torch.zeros(1, device=device)  # CUDA's start is a once-per-command cost: not in the first round's figures
    gpu = torch.cuda.get_device_name() if device.type == "cuda" else None
    lines = ["| folder | way | seconds, each round | images/s (median round) |", "|---|---|---|---:|"]
    record = {}
    for kind, n in (("png", args.png), ("jpeg", args.jpeg)):
        if not n:
            continue
        seconds = run(kind, n, args.repeats)
        record[f"{kind}-{n}"] = seconds
        name = f"{n:,} {'28x28 PNG' if kind == 'png' else '640x480 JPEG'}"
        for way, runs in seconds.items():
            lines.append(f"| {name} | {way} | {' / '.join(f'{s:.2f}' for s in runs)} | {n / sorted(runs)[len(runs) // 2]:,.0f} |")
    header = (f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {platform.machine()}, {usable_cores()} cores"
              f"{', encoder on ' + gpu if gpu else ''}; command: `python benchmarks/embed_batches.py --png {args.png} "
              f"--jpeg {args.jpeg} --repeats {args.repeats}`")
    save_results("embed_batches" + ("-gpu" if gpu else ""), header, lines, {"seconds": record, "gpu": gpu})


if __name__ == "__main__":
    main()
