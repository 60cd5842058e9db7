"""Print a Markdown table of the Fashion-MNIST quality runs (benchmarks/quality.py) saved in benchmarks/results.

    python benchmarks/tuning_table.py            # every quality run kept
    python benchmarks/tuning_table.py 'test-*'   # any glob over result names
"""

from __future__ import annotations

import json
import sys
from dataclasses import fields
from pathlib import Path

from vaepipe.config import TrainConfig

KNOWN = {f.name for f in fields(TrainConfig)}  # older runs may carry settings that were tried and dropped
RESULTS = Path(__file__).resolve().parent / "results"


def _batch_norm(run: dict) -> str:
    used = run["vae"].get("batch_norm", run["train_config"].get("batch_norm"))  # what the model had; older runs: none
    return " BN" if used is True else f" BN {used}" if isinstance(used, str) else ""


def main(pattern: str = "*") -> None:
    print("| run | split | train imgs x epochs | recipe | VAE p@1 | VAE p@10 | VAE mAP@10 | raw p@10 | PCA p@10 "
          "| ELBO (lik.) | KL | active | train s | img/s |")
    print("|---|---|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|")
    runs = [json.loads(p.read_text()) for p in sorted(RESULTS.glob(f"{pattern}.json"))]
    runs = [r for r in runs if "train_config" in r and "retrieval" in r]  # quality.py's records, not other benchmarks'
    for r in sorted(runs, key=lambda r: r["date"]):
        c, e, t = r["train_config"], r["elbo"], r["training"]
        vae, raw, pca = list(r["retrieval"].values())[:3]
        lr = TrainConfig(**{k: v for k, v in c.items() if k in KNOWN}).peak_lr(r["vae"]["image_size"])
        recipe = f"w{c['width']} {c['likelihood']} β{c['beta']} lr{lr} bs{c['batch_size']}" + (" flip" if c.get("flip") else "") + _batch_norm(r)
        print(f"| {r['name']} | {r['split']} | {t['images']} x {t['epochs_run']} | {recipe} "
              f"| {vae['precision@1']:.4f} | {vae['precision@10']:.4f} | {vae['mAP@10']:.4f} "
              f"| {raw['precision@10']:.4f} | {pca['precision@10']:.4f} | {e['elbo']:.1f} ({e['likelihood']}) "
              f"| {e['kl']:.1f} | {e['active_units']}/{e['latent_dim']} | {t['epoch_seconds']:.0f} | {t['images_per_second']:.0f} |")


if __name__ == "__main__":
    main(*sys.argv[1:])
