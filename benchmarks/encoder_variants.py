"""The encoder's known CPU speed-ups, side by side with what the product runs, and whether search quality holds.

    .venv/bin/python benchmarks/encoder_variants.py [--workdir work/demo]

The trained model of a built workdir (default work/demo, from `make demo`) encodes the 10,000 Fashion-MNIST
test images (real images, uint8 in memory: the model floor of benchmarks/throughput.py) in batches of 256:

  product        vaepipe.model.folded: batch norm folded into the convolutions, float32, channels-last weights
  NCHW weights   the same in the default (NCHW) layout: what the product ran before
  channels_last input too   also the input batches converted to channels-last
  jit frozen     torch.jit.trace + torch.jit.freeze (oneDNN fusions)
  bf16 autocast  torch.autocast("cpu", bfloat16)
  int8 linear    dynamic int8 quantization of the Linear layers

Then the product's 64 px colour encoder (for photos; untrained, timing only) with and without channels-last weights.
For each: images/s with 1 and 2 torch threads (median of 7 passes, interleaved with the other variants), the largest difference of the posterior
means from the product's, and how many of each image's 10 nearest neighbours (cosine on centred means, as
the index searches) stay the same. Results go to benchmarks/results/encoder_variants.json and .md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np
import torch
from torch import nn

from vaepipe.fashion_mnist import load_split
from vaepipe.batches import to_float
from vaepipe.index import prepare
from vaepipe.config import TrainConfig
from vaepipe.model import VAE, VAEConfig, folded, load_checkpoint
from vaepipe.store import Workdir

from results_io import save_results  # benchmarks/ is on sys.path when a script runs

REPO = Path(__file__).resolve().parents[1]


class Means(nn.Module):
    """The embedding: posterior means only (what vaepipe.embed stores)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.encode(x)[0]


def variants(model: nn.Module, example: torch.Tensor) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    base = Means(folded(model)).eval()
    out: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"product": base}
    out["NCHW weights"] = Means(folded(model)).eval().to(memory_format=torch.contiguous_format)  # before 2026-11-26
    cl = Means(folded(model)).eval()
    out["channels_last input too"] = lambda x: cl(x.contiguous(memory_format=torch.channels_last))
    with torch.no_grad():
        out["jit frozen"] = torch.jit.freeze(torch.jit.trace(Means(folded(model)).eval(), example))

    def bf16(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return base(x).float()

    out["bf16 autocast"] = bf16
    try:
        out["int8 linear"] = torch.ao.quantization.quantize_dynamic(Means(folded(model)).eval(), {nn.Linear}, dtype=torch.qint8)
    except Exception as e:  # noqa: BLE001  (removed from some torch builds: record it, do not fail the run)
        print(f"int8 linear unavailable: {e}")
    return out


def time_variants(found: dict[str, Callable[[torch.Tensor], torch.Tensor]], batches: tuple[torch.Tensor, ...],
                  rows: list[dict]) -> None:
    """Fill images_per_s_1t / _2t of each row: medians of 7 rounds over every variant (this machine's noise comes in
    minutes, not passes)."""
    n = sum(len(b) for b in batches)
    for threads in (1, 2):
        torch.set_num_threads(threads)
        rates: dict[str, list[float]] = {name: [] for name in found}
        for _ in range(7):
            for name, encode in found.items():
                t0 = time.perf_counter()
                for b in batches:
                    encode(b)
                rates[name].append(n / (time.perf_counter() - t0))
        for row in rows:
            row[f"images_per_s_{threads}t"] = round(statistics.median(rates[row["variant"]]))


def neighbours(mu: np.ndarray) -> np.ndarray:
    x = prepare(mu, "cosine", mu.mean(0))
    _, rows = faiss.knn(x, x, 11, metric=faiss.METRIC_INNER_PRODUCT)
    return rows[:, 1:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=REPO / "work" / "demo")
    args = ap.parse_args()
    wd = Workdir(args.workdir)
    model = load_checkpoint(wd.model_file(wd.read_collection()["model_id"]), torch.device("cpu")).eval()
    images, _ = load_split("t10k")
    x = to_float(torch.from_numpy(images[:, None]))
    batches = x.split(256)
    before = torch.get_num_threads()
    rows = []
    with torch.no_grad():
        found = variants(model, batches[0])
        reference = torch.cat([found["product"](b) for b in batches]).numpy()
        truth = neighbours(reference)
        for name, encode in found.items():
            mu = torch.cat([encode(b) for b in batches]).numpy()
            rows.append({"variant": name, "max_abs_diff": float(np.abs(mu - reference).max()),
                         "neighbours_kept": float(np.mean([len(set(a) & set(b)) / 10 for a, b in
                                                           zip(neighbours(mu).tolist(), truth.tolist())]))})
        time_variants(found, batches, rows)
        # The 64 px colour encoder (photos), untrained: timing does not depend on the weights.
        colour = VAE(VAEConfig(image_size=64, channels=3, latent_dim=32, width=TrainConfig().width,
                               batch_norm=TrainConfig().use_batch_norm(64))).eval()
        photos = to_float(torch.randint(0, 256, (2_048, 3, 64, 64), dtype=torch.uint8)).split(256)
        colour_variants = {"product, 64 px colour": Means(folded(colour)),
                           "NCHW weights, 64 px colour": Means(folded(colour)).to(memory_format=torch.contiguous_format)}
        diff = (colour_variants["product, 64 px colour"](photos[0]) - colour_variants["NCHW weights, 64 px colour"](photos[0])).abs().max()
        colour_rows = [{"variant": name, "max_abs_diff": float(diff) if "NCHW" in name else 0.0, "neighbours_kept": None}
                       for name in colour_variants]
        time_variants(colour_variants, photos, colour_rows)
        rows += colour_rows
        torch.set_num_threads(before)
    for row in rows:
        print(row, flush=True)
    header = (f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {platform.machine()}, {os.cpu_count()} cores, "
              f"torch {torch.__version__}; the trained model of {args.workdir.name} ({model.config.image_size} px, width "
              f"{model.config.width}) on the 10,000 Fashion-MNIST test images; command: "
              f"`python benchmarks/encoder_variants.py --workdir {args.workdir}`")
    lines = ["| variant | images/s, 1 thread | images/s, 2 threads | largest difference in a mean | neighbours@10 kept |",
             "|---|---:|---:|---:|---:|"]
    for r in rows:
        kept = "-" if r["neighbours_kept"] is None else f"{r['neighbours_kept']:.4f}"
        lines.append(f"| {r['variant']} | {r['images_per_s_1t']:,} | {r['images_per_s_2t']:,} | {r['max_abs_diff']:.2g} | {kept} |")
    save_results("encoder_variants", header, lines, {"rows": rows})


if __name__ == "__main__":
    main()
