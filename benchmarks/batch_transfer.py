"""How a decoded batch should come back from a decoding worker on the GPU path: as a tensor, or as a numpy array.

    .venv/bin/python benchmarks/batch_transfer.py --png 100000 --batches 256 1024 --repeats 5

On a GPU the embedding stage's main process takes in every uint8 batch the workers decode (`iter_image_batches`
without `then`), and with 16 workers and tiny PNGs that process was the limit (BENCHMARKS.md, "On a GPU
machine"). A tensor crosses in a shared-memory segment whose file descriptor is passed over a socket; an array is
pickled through the worker's pipe. This runs the decode floor both ways on throughput.py's PNG folder, in
alternating rounds, and reports the main process's CPU seconds (what the GPU path is short of) and the wall
clock. The transfer is the same with or without a GPU, so it is measured wherever it runs.
Results go to benchmarks/results/batch_transfer.json and .md.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch
from results_io import save_results  # benchmarks/ is on sys.path when a script runs
from throughput import make_folder, model_config
from torch.utils.data import DataLoader

from vaepipe.config import EmbedConfig, usable_cores
from vaepipe.batches import ImageFiles
from vaepipe.images import load_batch


class ArrayFiles(ImageFiles):
    """ImageFiles whose batches come back as the numpy array load_batch made, not a tensor over it."""

    def __getitems__(self, indices: list[int]) -> tuple[np.ndarray, list[int], list[str]]:
        batch, errors = load_batch([self.paths[i] for i in indices], self.spec, self.max_pixels)
        return batch, list(indices), errors


def as_is(batch):
    return batch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--png", type=int, default=100_000, help="28x28 PNGs")
    ap.add_argument("--batches", type=int, nargs="+", default=[256, 1024])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    files = [str(p) for p in sorted(make_folder("png", args.png).rglob("*.png"))]  # as throughput.py's floors list them
    spec, workers = model_config("png").spec, EmbedConfig().workers

    ways = {"tensor (as the product does)": ImageFiles, "numpy array": ArrayFiles}
    runs: dict[str, list[tuple[float, float]]] = {}
    for _ in range(args.repeats):
        for batch in args.batches:
            for way, dataset in ways.items():
                loader = DataLoader(dataset(files, spec), batch_size=batch, num_workers=workers, shuffle=False,
                                    collate_fn=as_is)
                t0, cpu0, n = time.monotonic(), time.process_time(), 0
                for pixels, _, _ in loader:
                    n += len(torch.as_tensor(pixels))  # as the encoder would take it
                assert n == len(files)
                row = (round(time.process_time() - cpu0, 3), round(time.monotonic() - t0, 2))
                runs.setdefault(f"{batch}|{way}", []).append(row)
                print(batch, way, row, flush=True)

    lines = ["| batch | way | main process CPU s, each round | median | wall s, each round |", "|---:|---|---|---:|---|"]
    for key, rows in runs.items():
        batch, way = key.split("|")
        cpu = [c for c, _ in rows]
        lines.append(f"| {batch} | {way} | {' / '.join(f'{c:.2f}' for c in cpu)} | {sorted(cpu)[len(cpu) // 2]:.2f} | "
                     f"{' / '.join(f'{w:.2f}' for _, w in rows)} |")
    header = (f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {platform.machine()}, {usable_cores()} cores, "
              f"{workers} decoding workers, {len(files):,} 28x28 PNGs; command: `python benchmarks/batch_transfer.py "
              f"--png {args.png} --batches {' '.join(map(str, args.batches))} --repeats {args.repeats}`")
    save_results("batch_transfer", header, lines, {"runs": runs})


if __name__ == "__main__":
    main()
