"""Retrieval and generation quality of the VAE on Fashion-MNIST, through the product's own code path.

    python benchmarks/quality.py --threads 1          # the full benchmark: 60k train images, 10k test queries
    python benchmarks/quality.py --split val ...      # tuning: 10k held-out *training* images as queries
                                                      # against the other 50k (the test set is not touched)
    python benchmarks/quality.py --train-images 3000 --epochs 1 --db-images 3000 --query-images 500 \
        --results-dir /tmp/q --export-root /tmp/q-data                             # quick (seconds), for tests

What runs, in order (the same call the Prefect flow makes):
  1. vaepipe.fashion_mnist.load_split + export_pngs: the database images become a folder of class
     sub-folders of PNGs (outside the repository, --export-root; exported once and reused).
  2. vaepipe.build.build: ingest -> train (TrainConfig from the flags; unset flags keep the TrainConfig
     defaults) -> embed -> index (kind="flat", metric "cosine"); then vaepipe.index.SearchIndex.search.
  3. Queries (test images, or held-out training images with --split val) are encoded directly from
     the uint8 arrays with model.encode(x / 255) (their posterior means), the same values embed()
     produces from the same pixels via PNG.
  4. Baselines with the same index and metric choices (vaepipe.index.prepare, cosine = centred on the
     database mean + L2-normalised, exact faiss inner-product search): raw pixels (784-d, x / 255),
     and PCA fitted on the database images to the VAE's latent dimension.
  5. Metrics by class label: precision@1, precision@10, mAP@10, where
     AP@10 = (1 / #relevant in the top 10) * sum_{i <= 10, rel_i} precision@i  (0 if none relevant).
  6. Test-set (or held-out) ELBO in nats per image with its likelihood named, its KL term and active
     units (vaepipe.train.evaluate), training wall time and images per second; PNGs of prior samples,
     reconstructions and an interpolation (vaepipe.generate).

Results go to benchmarks/results/<name>.{json,md} and benchmarks/results/<name>/*.png; with
--update-benchmarks-md the Markdown table also replaces the block between the quality markers in
BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import subprocess
import sys
import time
from dataclasses import asdict, fields
from pathlib import Path

import faiss
import numpy as np
import torch
from PIL import Image

from vaepipe.build import build as build_collection
from vaepipe.config import BuildConfig, IndexConfig, TrainConfig
from vaepipe.fashion_mnist import CLASSES, DEBIAN_DIR, export_pngs, load_split
from vaepipe.generate import fit_latent, fitted_latents, interpolate, reconstruct, save_png
from vaepipe.images import to_array
from vaepipe.index import SearchIndex, prepare
from vaepipe.model import folded, load_checkpoint
from vaepipe.errors import VaepipeError
from vaepipe.store import Workdir
from vaepipe.train import evaluate

log = logging.getLogger("vaepipe")

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
MD_BEGIN, MD_END = "<!-- quality:begin -->", "<!-- quality:end -->"
VAL_QUERIES = 10_000  # --split val: this many training images become the queries, the rest the database
INSTALL_HINT = ("Fashion-MNIST's training split is missing. Install Debian's package with:\n"
                "    sudo apt-get install dataset-fashion-mnist\n"
                f"(it puts train-*/t10k-* IDX files in {DEBIAN_DIR}), or pass --data-dir DIR holding them.")


# ---------------------------------------------------------------- metrics

def label_metrics(neighbour_labels: np.ndarray, query_labels: np.ndarray, k: int = 10) -> dict[str, float]:
    """precision@1, precision@k and mAP@k by class label; neighbour_labels is (Q, >= k), -1 for none found."""
    rel = (neighbour_labels[:, :k] == query_labels[:, None]).astype(np.float64)
    prec_at_i = np.cumsum(rel, axis=1) / np.arange(1, k + 1)
    n_rel = rel.sum(1)
    ap = np.where(n_rel > 0, (prec_at_i * rel).sum(1) / np.maximum(n_rel, 1), 0.0)
    return {"precision@1": float(rel[:, 0].mean()), f"precision@{k}": float(rel.mean()), f"mAP@{k}": float(ap.mean())}


def exact_cosine_search(database: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """The product's metric on any vectors: prepare() with the database mean as centre, exact inner product."""
    centre = database.mean(0).astype(np.float32)
    x = prepare(database, "cosine", centre)
    q = prepare(queries, "cosine", centre)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    return index.search(q, k)[1]


def pca_fit(x: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    mean = x.mean(0)
    cov = np.cov((x - mean).T.astype(np.float64))
    vals, vecs = np.linalg.eigh(cov)
    return mean.astype(np.float32), vecs[:, ::-1][:, :dim].astype(np.float32)


# ---------------------------------------------------------------- data

def load_data(args) -> dict:
    try:
        tr_x, tr_y = load_split("train", args.data_dir)
        te_x, te_y = load_split("t10k", args.data_dir)
    except VaepipeError:
        sys.exit(INSTALL_HINT)
    rng = np.random.default_rng(0)
    if args.split == "val":
        perm = rng.permutation(len(tr_x))
        q_idx, db_idx = np.sort(perm[:VAL_QUERIES]), np.sort(perm[VAL_QUERIES:])
        db_x, db_y, q_x, q_y = tr_x[db_idx], tr_y[db_idx], tr_x[q_idx], tr_y[q_idx]
        names = ("held-out training images", "remaining training images")
    else:
        db_x, db_y, q_x, q_y = tr_x, tr_y, te_x, te_y
        names = ("test images", "training images")
    if args.db_images and args.db_images < len(db_x):
        keep = np.sort(rng.permutation(len(db_x))[: args.db_images])
        db_x, db_y = db_x[keep], db_y[keep]
    if args.query_images and args.query_images < len(q_x):
        keep = np.sort(rng.permutation(len(q_x))[: args.query_images])
        q_x, q_y = q_x[keep], q_y[keep]
    return {"db_x": db_x, "db_y": db_y, "q_x": q_x, "q_y": q_y, "query_name": names[0], "db_name": names[1]}


def add_recipe_flags(p: argparse.ArgumentParser) -> None:
    """A flag for every TrainConfig field (--latent-dim, --invariance, ...); unset ones keep the defaults."""
    for f in fields(TrainConfig):
        kind = {"int": int, "float": float, "str": str}.get(str(f.type).split(" |")[0].replace("Literal", "str").split("[")[0])
        if str(f.type).startswith("bool"):
            p.add_argument(f"--{f.name.replace('_', '-')}", type=lambda v: v.lower() in ("1", "true", "yes"), metavar="BOOL")
        elif kind:
            p.add_argument(f"--{f.name.replace('_', '-')}", type=kind)


def recipe(args) -> TrainConfig:
    """TrainConfig with the recipe flags that were given."""
    cfg = TrainConfig()
    for f in fields(TrainConfig):
        v = getattr(args, f.name, None)
        if v is not None:
            setattr(cfg, f.name, v)
    return cfg


def train_config(args) -> TrainConfig:
    cfg = recipe(args)
    if args.train_images is not None:
        cfg.max_images = args.train_images
    return cfg


def machine() -> dict:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        model = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name")), "?")
    except OSError:
        model = platform.processor() or "?"
    import os
    return {"cpu": model, "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "device": "cuda" if torch.cuda.is_available() else "cpu",
            "loadavg_1_5_15min_at_end": os.getloadavg(), "python": platform.python_version(), "torch": torch.__version__, "faiss": faiss.__version__}


# ---------------------------------------------------------------- run

def run(args) -> dict:
    t_all = time.monotonic()
    data = load_data(args)
    db_x, db_y, q_x, q_y = data["db_x"], data["db_y"], data["q_x"], data["q_y"]
    cfg = train_config(args)
    name = args.name or f"{args.split}-" + time.strftime("%Y%m%d-%H%M%S")
    results = Path(args.results_dir) if args.results_dir else RESULTS
    out_dir = results / name

    # 1. The database as a folder of PNGs, ingested with the product's ingest (incremental on reruns).
    folder = Path(args.export_root) / f"{args.split}-db{len(db_x)}"
    t0 = time.monotonic()
    export_pngs(db_x, db_y, folder)
    workdir = Workdir(Path(args.export_root) / f"work-{args.split}-db{len(db_x)}")
    workdir.root.mkdir(parents=True, exist_ok=True)
    t_export = time.monotonic() - t0

    # 2-3. Ingest, train, embed and index (exact, cosine) through the product's build(); retrain: a workdir left by
    # an earlier run (another recipe) must not lend its model.
    built = build_collection(folder, workdir, BuildConfig(train=cfg, index=IndexConfig(kind="flat", metric="cosine")),
                             retrain=True)
    ing, tr, idx = built.ingested, built.trained, built.indexed
    t_ingest = t_export + built.seconds["ingest"]
    log.info("quality: %d database images in %s (export + ingest %.1fs)", ing.n_ok, folder, t_ingest)
    train_wall = built.seconds["model"]
    epoch_seconds = sum(m["seconds"] for m in tr.metrics)
    images_seen = sum(m["images_per_second"] * m["seconds"] for m in tr.metrics)
    t_embed = built.seconds["embed"]
    search = SearchIndex.open(idx.index_dir)
    db_labels = np.asarray([CLASSES.index(p.split("/", 1)[0]) for p in search.ids["path"].to_pylist()])

    model = folded(load_checkpoint(tr.model_dir / "model.pt"))  # as embed() encodes the database
    # The queries become the model's input as a file of theirs would (images.to_array: the border cut away, ...).
    q_t = torch.from_numpy(np.stack([to_array(Image.fromarray(x, "L"), model.config.spec) for x in q_x]))
    with torch.no_grad():
        q_mu = torch.cat([model.embed(q_t[i:i + 1000].float() / 255.0) for i in range(0, len(q_t), 1000)]).numpy()
    t0 = time.monotonic()
    rows, _, _ = search.search(q_mu, args.k)
    vae_labels = np.where(rows >= 0, db_labels[np.maximum(rows, 0)], -1)
    t_search = time.monotonic() - t0

    # 4. Baselines with the same metric: raw pixels, PCA to the VAE's dimension.
    db_pix = db_x.reshape(len(db_x), -1).astype(np.float32) / 255.0
    q_pix = q_x.reshape(len(q_x), -1).astype(np.float32) / 255.0
    raw_labels = db_y[exact_cosine_search(db_pix, q_pix, args.k)]
    mean, comps = pca_fit(db_pix, model.config.latent_dim)
    pca_labels = db_y[exact_cosine_search((db_pix - mean) @ comps, (q_pix - mean) @ comps, args.k)]
    d = model.config.latent_dim
    retrieval = {
        f"VAE ({d}-d posterior mean)": {"dim": d, **label_metrics(vae_labels, q_y, args.k)},
        f"raw pixels ({db_pix.shape[1]}-d)": {"dim": db_pix.shape[1], **label_metrics(raw_labels, q_y, args.k)},
        f"PCA-{d}": {"dim": d, **label_metrics(pca_labels, q_y, args.k)},
    }
    # For the record: the same VAE vectors under the product's other metric (plain L2 on the means).
    l2 = faiss.IndexFlatL2(d)
    l2.add(_db_means(workdir, tr.model_id))
    retrieval["VAE, metric l2 (not the default)"] = {"dim": d, **label_metrics(db_labels[l2.search(q_mu, args.k)[1]], q_y, args.k)}

    # 5. ELBO etc. on the queries (the test set, or the held-out training images with --split val).
    torch.manual_seed(0)  # evaluate() draws one z per image
    ev = evaluate(model, q_t)
    ev_db = evaluate(model, torch.from_numpy(np.stack([to_array(Image.fromarray(x, "L"), model.config.spec) for x in db_x[:10_000]])))

    # 6. Pictures.
    out_dir.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    save_png(model.sample(64, generator=gen), out_dir / "samples.png", nrow=8)
    with torch.no_grad():  # the product's second sampler: a Gaussian fitted to the database's latent means
        db_t = torch.from_numpy(np.stack([to_array(Image.fromarray(x, "L"), model.config.spec) for x in db_x[:2_000]]))
        z = fitted_latents(*fit_latent(model, db_t.float() / 255.0), 64, gen)
        save_png(torch.sigmoid(model.decode(z)), out_dir / "samples-fitted.png", nrow=8)
    picks = np.concatenate([np.flatnonzero(q_y == c)[:2] for c in range(len(CLASSES))])  # 2 per class, in class order
    x = q_t[picks].float() / 255.0
    save_png(torch.cat([x, reconstruct(model, x)]), out_dir / "reconstructions.png", nrow=len(picks))
    strips = []
    for a, b in [(5, 7), (0, 9), (1, 3)]:  # sandal -> sneaker, t-shirt -> ankle boot, trouser -> dress
        xa = q_t[np.flatnonzero(q_y == a)[0]][None].float() / 255.0
        xb = q_t[np.flatnonzero(q_y == b)[0]][None].float() / 255.0
        strips.append(torch.cat([xa, interpolate(model, xa, xb, steps=10), xb]))
    save_png(torch.cat(strips), out_dir / "interpolation.png", nrow=12)

    result = {
        "name": name, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": "python " + " ".join([str(Path(sys.argv[0]))] + sys.argv[1:]),
        "machine": machine(),
        "split": args.split, "queries": f"{len(q_x)} {data['query_name']} (encoded from arrays)",
        "database": f"{len(db_x)} {data['db_name']} (PNG folder {folder} -> ingest -> embed)",
        "train_config": asdict(cfg), "vae": asdict(model.config), "model_id": tr.model_id,
        "retrieval": retrieval, "k": args.k,
        "elbo": {"set": data["query_name"], "likelihood": model.config.likelihood, "units": "nats per image",
                 "elbo": ev["elbo"], "nll": ev["nll"], "kl": ev["kl"], "active_units": ev["active_units"],
                 "latent_dim": d, "database_elbo_first10k": ev_db["elbo"]},
        "training": {"epochs_run": len(tr.metrics), "images": int(round(images_seen / max(len(tr.metrics), 1))),
                     "epoch_seconds": epoch_seconds, "wall_seconds_train_call": train_wall,
                     "images_per_second": images_seen / max(epoch_seconds, 1e-9), "per_epoch": tr.metrics},
        "timings": {"export_ingest_s": t_ingest, "embed_s": t_embed, "search_s": t_search,
                    "total_s": time.monotonic() - t_all},
        "pictures": {p: _rel(out_dir / p) for p in ("samples.png", "samples-fitted.png", "reconstructions.png", "interpolation.png")},
    }
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{name}.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    md = markdown(result)
    (results / f"{name}.md").write_text(md)
    if args.update_benchmarks_md:
        update_benchmarks_md(md)
    print(md)
    return result


def _db_means(workdir: Workdir, model_id: str) -> np.ndarray:
    """The database's posterior means in index row order (as load_vectors returns them for build_index)."""
    from vaepipe.index import load_vectors

    return load_vectors(workdir.embeddings_dir(model_id), workdir.manifest)[1]


def _rel(path: Path) -> str:
    path = path.resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def markdown(r: dict) -> str:
    e, t, c = r["elbo"], r["training"], r["train_config"]
    lines = [
        f"Run `{r['name']}`, {r['date']}, {r['machine']['cpu']} ({r['machine']['cpu_cores']} cores, "
        f"torch {r['machine']['torch']}, faiss {r['machine']['faiss']}, {r['machine']['device']}).",
        f"Command: `{r['command']}`",
        "",
        f"Queries: {r['queries']}; database: {r['database']}. Metric: cosine (centred + L2-normalised), exact search.",
        "",
        f"| embedding | dim | precision@1 | precision@{r['k']} | mAP@{r['k']} |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, m in r["retrieval"].items():
        pk, ap = m[f"precision@{r['k']}"], m[f"mAP@{r['k']}"]
        lines.append(f"| {name} | {m['dim']} | {m['precision@1']:.4f} | {pk:.4f} | {ap:.4f} |")
    lines += [
        "",
        "| model | value |",
        "|---|---|",
        f"| recipe | width {c['width']}, latent {c['latent_dim']}{', batch norm' if r['vae'].get('batch_norm', c.get('batch_norm')) else ''}, {c['likelihood']}, beta {c['beta']}, lr {TrainConfig(**c).peak_lr(r['vae']['image_size'])}, "
        f"batch {c['batch_size'] or 'auto'}, {c['epochs'] or 'auto'} epochs (max_minutes {c['max_minutes']}), "
        f"warm-up {c['warmup_epochs']}, fit {r['vae'].get('fit', 'letterbox')}, invariance {r['vae'].get('invariance', 0)} |",
        f"| ELBO on {e['set']} ({e['likelihood']} likelihood) | {e['elbo']:.2f} nats/image |",
        f"| of which reconstruction NLL / KL | {e['nll']:.2f} / {e['kl']:.2f} nats/image |",
        f"| active latent units (Var of mean > 0.01) | {e['active_units']} / {e['latent_dim']} |",
        f"| training | {t['epochs_run']} epochs x {t['images']} images, {t['epoch_seconds']:.0f} s in epochs "
        f"({t['wall_seconds_train_call']:.0f} s for the whole train() call), {t['images_per_second']:.0f} images/s |",
        "",
        f"Pictures: {', '.join(f'[{k}]({v})' for k, v in r['pictures'].items())}",
        "",
    ]
    return "\n".join(lines)


def update_benchmarks_md(md: str) -> None:
    path = REPO / "BENCHMARKS.md"
    text = path.read_text() if path.exists() else ""
    block = f"{MD_BEGIN}\n{md}{MD_END}"
    if MD_BEGIN in text and MD_END in text:
        head, rest = text.split(MD_BEGIN, 1)
        text = head + block + rest.split(MD_END, 1)[1]
    else:
        text = text + ("\n" if text else "") + "## Quality on Fashion-MNIST\n\n" + block + "\n"
    path.write_text(text)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--split", choices=["test", "val"], default="test",
                   help="test: 10k test queries vs the 60k training images; val: 10k held-out training images vs the other 50k (for tuning)")
    p.add_argument("--train-images", type=int, help="train on a seeded sample of this many database images (TrainConfig.max_images)")
    p.add_argument("--db-images", type=int, help="use only this many database images (quick runs)")
    p.add_argument("--query-images", type=int, help="use only this many queries (quick runs)")
    p.add_argument("--k", type=int, default=10)
    add_recipe_flags(p)
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice, one per core)")
    p.add_argument("--data-dir", type=Path, help="folder with the Fashion-MNIST IDX files (default: bundled, then Debian's)")
    p.add_argument("--export-root", default="/tmp/vaepipe-fmnist", help="where the PNG folders and work dirs go (not the repo)")
    p.add_argument("--results-dir", help="where results go (default: benchmarks/results in the repository)")
    p.add_argument("--name", help="results name (default: <split>-<timestamp>)")
    p.add_argument("--update-benchmarks-md", action="store_true", help="put the table into BENCHMARKS.md")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if args.threads:
        torch.set_num_threads(args.threads)
    return run(args)


if __name__ == "__main__":
    main()
