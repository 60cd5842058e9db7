"""The `vaepipe` command: each subcommand runs the Prefect flow of the same job.

Without PREFECT_API_URL, Prefect runs the flow against a temporary local server; with it, the run
shows up on that server like any other.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
from dataclasses import replace
from pathlib import Path

from vaepipe.config import BuildConfig, EmbedConfig, IndexConfig, IngestConfig, TrainConfig
from vaepipe.errors import VaepipeError
from vaepipe.store import REPORT_FILE, Workdir

DEMO_IMAGES = Path("demo-data/fashion-mnist-test")
DEMO_WORKDIR = Path("work/demo")


def _build_options(p: argparse.ArgumentParser) -> None:
    t, i = TrainConfig(), IndexConfig()
    g = p.add_argument_group("model and training (defaults: the recipe in BENCHMARKS.md)")
    g.add_argument("--model", metavar="CHECKPOINT", help="use this checkpoint (model.pt) instead of training")
    g.add_argument("--retrain", action="store_true", help="train a new model even if the collection has one")
    g.add_argument("--replace", action="store_true",
                   help="index this folder into a workdir that holds another folder's collection (refused otherwise)")
    g.add_argument("--epochs", type=int, default=t.epochs,
                   help=f"training epochs (default: enough for {t.image_passes:,} images, at least {t.min_epochs})")
    g.add_argument("--max-minutes", type=float, default=t.max_minutes, help="stop training after this many minutes")
    g.add_argument("--image-size", type=int, default=t.image_size, help="model input side in pixels (default: 28 for small opaque images, else 32)")
    g.add_argument("--fit", choices=("trim", "letterbox"), default=t.fit,
                   help="trim: cut borders and transparent padding, stretch to the square; letterbox: keep the aspect "
                        "ratio (default: letterbox for small opaque images, else trim)")
    g.add_argument("--background", type=int, default=t.background, metavar="0-255",
                   help="grey behind transparent pixels (default %(default)s)")
    g.add_argument("--invariance", type=float, default=t.invariance,
                   help="weight of training for invariance to everyday edits, 0 for a plain VAE (default: 0.03 for trimmed inputs, else 0)")
    g.add_argument("--channels", type=int, choices=(1, 3), default=t.channels, help="1 = grey, 3 = colour (default: from the data)")
    g.add_argument("--latent-dim", type=int, default=t.latent_dim, help="embedding dimension (default %(default)s)")
    g.add_argument("--beta", type=float, default=t.beta, help="KL weight (default %(default)s)")
    g.add_argument("--likelihood", choices=("bernoulli", "gaussian"), default=t.likelihood,
                   help="decoder's pixel model (default %(default)s)")
    g.add_argument("--lr", type=float, default=t.lr, help="peak learning rate (default: 4e-3 for inputs up to 32 px, else 1e-3)")
    g.add_argument("--seed", type=int, default=t.seed, help="training seed (default %(default)s)")
    g = p.add_argument_group("index")
    g.add_argument("--index-kind", choices=("auto", "flat", "hnsw", "ivf", "ivf-disk"), default=i.kind,
                   help="FAISS index (default auto: exact when small, HNSW, then IVF on disk)")
    g.add_argument("--metric", choices=("cosine", "l2"), default=i.metric, help="similarity (default %(default)s)")
    g = p.add_argument_group("input files")
    g.add_argument("--max-pixels", type=int, default=IngestConfig().max_pixels,
                   help="images declaring more pixels are rejected unread (default %(default)s)")
    g.add_argument("--include-hidden", action="store_true", help="also read dot-files and dot-folders")
    g.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                   help="skip files whose path in the folder matches (repeatable; '*' also matches '/'), e.g. '*.json'")
    g.add_argument("--follow-symlinks-outside", action="store_true", help="read symlinked files whose target is outside the folder")
    p.add_argument("--workers", type=int, default=EmbedConfig().workers, help="processes that hash, decode and (on CPU) encode images (default: one per core, %(default)s here)")
    g = p.add_argument_group("past one machine")
    g.add_argument("--dask-address", metavar="tcp://HOST:8786", help="embed shards on this Dask cluster")
    g.add_argument("--dask-workers", type=int, default=0, metavar="N", help="embed shards on a local Dask cluster of N processes")
    g.add_argument("--shard-size", type=int, default=EmbedConfig().part_rows, help="images per shard task and Parquet part (default %(default)s)")


# Fields of BuildConfig the CLI leaves at their defaults: the recipe's inner knobs, chosen by measurement
# (BENCHMARKS.md) and set, when at all, through the flows' `config` parameter or from Python. Every other field has a
# flag (build_config); tests/test_cli.py fails on a field in neither, so that flags and config cannot drift apart.
NOT_ON_THE_CLI = {
    "ingest.checkpoint_every",
    "train.extra_dim", "train.normalised_means", "train.standardised_input", "train.width", "train.batch_norm",
    "train.temperature", "train.batch_size", "train.warmup_epochs", "train.val_fraction", "train.max_images",
    "train.min_epochs", "train.image_passes", "train.checkpoint_minutes", "train.max_restarts",
    "train.retrain_when_grown",
    "embed.batch_size", "embed.threads",
    "index.exact_below", "index.in_ram_below", "index.target_recall", "index.recall_sample",
}


def build_config(a: argparse.Namespace) -> BuildConfig:
    """The flags as a config; a setting the config refuses is a VaepipeError (exit 2) naming it."""
    try:
        return _config_of(a)
    except ValueError as e:
        raise VaepipeError(str(e)) from None


def _config_of(a: argparse.Namespace) -> BuildConfig:
    return BuildConfig(
        ingest=replace(IngestConfig(), workers=a.workers, max_pixels=a.max_pixels, include_hidden=a.include_hidden,
                       follow_symlinks_outside=a.follow_symlinks_outside, exclude=tuple(a.exclude)),
        train=replace(TrainConfig(), epochs=a.epochs, max_minutes=a.max_minutes, image_size=a.image_size, fit=a.fit,
                      background=a.background, invariance=a.invariance, channels=a.channels, latent_dim=a.latent_dim,
                      beta=a.beta, likelihood=a.likelihood, lr=a.lr, seed=a.seed),
        embed=replace(EmbedConfig(), workers=a.workers, part_rows=a.shard_size),
        index=replace(IndexConfig(), kind=a.index_kind, metric=a.metric),
    )


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("vaepipe")
    except PackageNotFoundError:  # run from a checkout that was not installed
        return "0.1.0+checkout"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vaepipe", description="Image search over a folder: VAE embeddings, FAISS index, bulk neighbour tables.")
    p.add_argument("--quiet", action="store_true", help="print only warnings and errors (for cron)")
    p.add_argument("--no-prefect", action="store_true",
                   help="run the job in this process without Prefect: no flow run is recorded, and no temporary "
                        "Prefect server is started when PREFECT_API_URL is not set (~4 s less per command)")
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("index", help="ingest a folder, train or load a model, embed, build the index")
    s.add_argument("images", type=Path, help="folder of images (searched recursively)")
    s.add_argument("--workdir", type=Path, required=True, help="where the collection's files go")
    _build_options(s)

    s = sub.add_parser("query", help="bulk neighbour search against an indexed workdir")
    s.add_argument("workdir", type=Path, help="a workdir that `vaepipe index` built")
    what = s.add_mutually_exclusive_group(required=True)
    what.add_argument("--queries", type=Path, metavar="DIR", help="folder of query images (not added to the index)")
    what.add_argument("--list", type=Path, metavar="FILE", help="text file of collection paths, one per line")
    what.add_argument("--all", action="store_true", help="every indexed image against the rest")
    what.add_argument("--image", type=Path, action="append", metavar="FILE",
                      help="look up one image file (repeatable): prints its neighbours, writes no run folder")
    s.add_argument("-k", type=int, default=10, help="neighbours per query (default %(default)s)")
    s.add_argument("--threshold", type=float, help="with --all: similarity for near-duplicate pairs "
                   "(default: 0.97 for models trained for copies, the default for photos, art and icons; for "
                   "plain models the similarity 95%% of JPEG re-saves keep to their image)")
    s.add_argument("--no-duplicates", action="store_true", help="with --all: skip duplicate groups")

    s = sub.add_parser("sample", help="prior samples, reconstructions and an interpolation as PNG")
    s.add_argument("workdir", type=Path, help="a workdir that `vaepipe index` built")
    s.add_argument("-n", type=int, default=64, help="number of prior samples (default %(default)s)")
    s.add_argument("--seed", type=int, default=0, help="random seed of the samples (default %(default)s)")
    s.add_argument("--between", nargs=2, metavar=("A", "B"), help="two collection paths to interpolate between")

    s = sub.add_parser("duplicates", help="each duplicate group's keeper; move or link the others away (a dry run "
                       "unless --apply), or undo")
    s.add_argument("workdir", type=Path, help="a workdir that `vaepipe query --all` made duplicate groups in")
    s.add_argument("--run", help="the run whose groups to use (default: the latest with duplicate groups)")
    what = s.add_mutually_exclusive_group()
    what.add_argument("--move-to", type=Path, metavar="DIR",
                      help="move the files that are not their group's keeper here, keeping their paths")
    what.add_argument("--hardlink", action="store_true", help="replace them with hard links to the keeper")
    what.add_argument("--symlink", action="store_true", help="replace them with symbolic links to the keeper")
    what.add_argument("--undo", type=Path, metavar="LOG", help="put back what an applied action changed")
    s.add_argument("--apply", action="store_true", help="do it (without: a dry run that changes nothing)")

    s = sub.add_parser("serve", help="show the workdir's reports and samples pages at http://127.0.0.1 (browsers "
                       "do not open file:// links from the Prefect UI)")
    s.add_argument("workdir", type=Path, help="a workdir with query runs or samples")
    s.add_argument("--port", type=int, default=8765, help="port on 127.0.0.1 (default %(default)s; 0: any free port)")

    s = sub.add_parser("pipeline", help="index, then all-against-all neighbours, then samples")
    s.add_argument("images", type=Path, help="folder of images (searched recursively)")
    s.add_argument("--workdir", type=Path, required=True, help="where the collection's files go")
    s.add_argument("-k", type=int, default=10, help="neighbours per image (default %(default)s)")
    s.add_argument("-n", type=int, default=64, help="number of prior samples (default %(default)s)")
    _build_options(s)

    s = sub.add_parser("demo", help="the whole pipeline on the bundled Fashion-MNIST test split (10,000 images)")
    s.add_argument("--workdir", type=Path, default=DEMO_WORKDIR, help="default %(default)s")
    s.add_argument("--images", type=Path, default=DEMO_IMAGES, help="where the demo PNGs are written (default %(default)s)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Exit status: 0 done, 1 unexpected failure (with a traceback), 2 bad input or request (one line, nothing changed)."""
    args = parser().parse_args(argv)
    if args.quiet:
        os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"  # read when prefect is first imported
        logging.getLogger("vaepipe").setLevel(logging.WARNING)
    try:
        if args.command == "query" and args.image:
            return _look_up(args)
        if args.command == "serve":
            return _serve(args)
        summary = _dispatch(args)
    except VaepipeError as e:
        print(f"vaepipe: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        # What was written so far is whole (atomic writes) and the run resumes where it stopped.
        print(f"vaepipe: error: no space left on device{f' writing {e.filename}' if e.filename else ''}: free some "
              "space and run the same command again; it resumes where it stopped", file=sys.stderr)
        return 1
    if args.quiet:
        return 0
    from flows.text import format_value

    print()
    for key, value in summary.items():
        print(f"{key:>28}: {format_value(value)}")
    return 0


def _look_up(a: argparse.Namespace) -> int:
    """`query --image`: a lookup, not a job; the library answers in this process (no Prefect run, no run folder)."""
    _require_dir(a.workdir, "workdir")
    from vaepipe.query import search_files  # checks k against the collection

    found = search_files(Workdir(a.workdir), a.image, k=a.k)
    for name, reason in found.skipped:
        print(f"vaepipe: skipped {name}: {reason}", file=sys.stderr)
    current = None
    for r in found.table.to_pylist():  # in query order, each query's rows by rank
        if r["query_path"] != current:
            current = r["query_path"]
            print(current)
        print(f"  {r['rank']:>3}  {r['similarity']:.4f}  {r['neighbour_path']}")
    return 0


def _serve(a: argparse.Namespace) -> int:
    """`serve`: pages over HTTP until Ctrl+C; no flow (it changes nothing)."""
    _require_dir(a.workdir, "workdir")
    from vaepipe.serve import latest_pages, make_server, page_url

    workdir = Workdir(a.workdir)
    try:
        server = make_server(workdir, a.port)
    except OSError as e:
        raise VaepipeError(f"cannot serve on 127.0.0.1:{a.port} ({e.strerror or e}): choose another --port, or "
                           "--port 0 for any free one") from None
    port = server.server_address[1]
    print(f"serving the pages of {a.workdir} at http://127.0.0.1:{port}/ (Ctrl+C to stop)", flush=True)
    for page in latest_pages(workdir):
        print(f"  latest {'report' if page.name == REPORT_FILE else 'samples'}: "
              f"{page_url(page, workdir.root, port)}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def _dispatch(a: argparse.Namespace) -> dict:
    # Cheap checks first: a typo should not cost a server start.
    if a.command in ("index", "pipeline"):
        _require_dir(a.images, "image folder")
    if a.command in ("query", "sample", "duplicates"):
        _require_dir(a.workdir, "workdir")
    if a.command == "duplicates" and a.undo and not a.undo.is_file():
        raise VaepipeError(f"undo log {a.undo} does not exist")
    if a.command == "duplicates" and a.apply and not (a.move_to or a.hardlink or a.symlink):
        raise VaepipeError("--apply needs an action: --move-to DIR, --hardlink or --symlink")
    if a.command == "query" and a.queries:
        _require_dir(a.queries, "query folder")
    if a.command == "query" and a.list and not a.list.is_file():
        raise VaepipeError(f"list file {a.list} does not exist")
    if getattr(a, "k", 1) <= 0:
        raise VaepipeError(f"-k must be at least 1, got {a.k}")
    if not 1 <= getattr(a, "n", 1) <= MAX_SAMPLES:
        raise VaepipeError(f"-n must be from 1 to {MAX_SAMPLES:,}, got {a.n}")
    if a.command == "sample" and a.seed < 0:  # index's and pipeline's flags are checked by their config
        raise VaepipeError(f"--seed must be at least 0, got {a.seed}")
    if a.command in ("index", "pipeline"):
        images, workdir = a.images.resolve(), a.workdir.resolve()
        if images.is_relative_to(workdir):
            raise VaepipeError(f"the image folder {a.images} lies inside the workdir {a.workdir}: the workdir's own "
                               "outputs would be indexed; choose a workdir outside the image folder")
        Workdir(a.workdir).check_image_root(a.images, getattr(a, "replace", False))
    if a.command in ("index", "pipeline"):
        build_config(a)  # refused settings stop here, before anything is read or written
    if getattr(a, "threshold", None) is not None and not a.all:
        raise VaepipeError("--threshold is for duplicate groups, which only `query --all` makes")
    if getattr(a, "threshold", None) is not None:
        from vaepipe.duplicates import check_threshold  # here: it imports torch, which --help need not wait for

        check_threshold(a.threshold)

    if a.no_prefect:
        if getattr(a, "dask_address", None) or getattr(a, "dask_workers", 0):
            raise VaepipeError("--dask-address and --dask-workers run shards as Prefect tasks: drop --no-prefect")
        return _run_here(a)

    import flows  # noqa: F401  (sets Prefect logging up before prefect is imported)
    from flows.temporary_server import start_api_early

    api_ready = start_api_early()  # boots on the other core while the checks below import Prefect, torch and FAISS
    from flows.common import hide_expected_tracebacks

    _checks_that_import_torch(a)
    hide_expected_tracebacks()
    with api_ready():
        return _run_flow(a)


def _checks_that_import_torch(a: argparse.Namespace) -> None:
    """A bad model, k or workdir refused before any work starts (after the cheap checks: these import torch, so only
    where the command will: an `index` of a folder with nothing new never does)."""
    if getattr(a, "model", None):
        from vaepipe.model import load_checkpoint

        load_checkpoint(Path(a.model))  # a damaged or unsafe file
    if a.command == "query":
        from vaepipe.query import preflight

        preflight(Workdir(a.workdir), a.k, exclude_self=not a.queries)
    if a.command == "sample":
        Workdir(a.workdir).read_collection()


def _action(a: argparse.Namespace) -> str | None:
    """`duplicates`: what to do with the files that are not their group's keeper."""
    return "move" if a.move_to else "hardlink" if a.hardlink else "symlink" if a.symlink else None


def _run_flow(a: argparse.Namespace) -> dict:
    if a.command == "index":
        from flows.build_index import build_index
        return build_index(str(a.images.resolve()), str(a.workdir.resolve()), model=a.model, retrain=a.retrain,
                           config=build_config(a), dask_address=a.dask_address, dask_workers=a.dask_workers,
                           replace=a.replace)
    if a.command == "query":
        from flows.bulk_query import bulk_query
        return bulk_query(str(a.workdir.resolve()), queries=str(a.queries.resolve()) if a.queries else None,
                          list_file=str(a.list.resolve()) if a.list else None, all_images=a.all, k=a.k,
                          duplicates=not a.no_duplicates, threshold=a.threshold)
    if a.command == "sample":
        from flows.generate_samples import generate_samples
        return generate_samples(str(a.workdir.resolve()), n=a.n, seed=a.seed, between=tuple(a.between) if a.between else None)
    if a.command == "duplicates":
        from flows.duplicates import clean_duplicates
        return clean_duplicates(str(a.workdir.resolve()), run=a.run, action=_action(a),
                                quarantine=str(a.move_to.resolve()) if a.move_to else None, apply=a.apply,
                                undo_log=str(a.undo.resolve()) if a.undo else None)
    if a.command == "pipeline":
        from flows.pipeline import pipeline
        return pipeline(str(a.images.resolve()), str(a.workdir.resolve()), model=a.model, retrain=a.retrain, k=a.k,
                        n_samples=a.n, config=build_config(a), dask_address=a.dask_address, dask_workers=a.dask_workers,
                        replace=a.replace)
    if a.command == "demo":
        from flows.pipeline import pipeline
        from vaepipe.fashion_mnist import export_pngs, load_split

        images = export_pngs(*load_split("t10k"), a.images)
        return pipeline(str(images.resolve()), str(a.workdir.resolve()))
    raise AssertionError(a.command)


def _run_here(a: argparse.Namespace) -> dict:
    """--no-prefect: the library calls each flow's tasks make, in this process; the same summary."""
    if not a.quiet:
        logging.basicConfig(format="%(asctime)s | %(levelname)-7s | %(message)s", datefmt="%H:%M:%S")
        logging.getLogger("vaepipe").setLevel(logging.INFO)
    _checks_that_import_torch(a)
    workdir = Workdir(a.workdir.resolve())
    model = Path(a.model) if getattr(a, "model", None) else None
    if a.command == "index":
        from vaepipe.build import build
        return build(a.images.resolve(), workdir, build_config(a), model, a.retrain, a.replace).summary()
    if a.command == "query":
        from vaepipe.query import run_query
        return run_query(workdir, a.queries.resolve() if a.queries else None, a.list.resolve() if a.list else None,
                         a.all, a.k, not a.no_duplicates, a.threshold).summary()
    if a.command == "sample":
        from vaepipe.generate import generate_for
        return generate_for(workdir, n=a.n, seed=a.seed, between=tuple(a.between) if a.between else None).summary()
    if a.command == "duplicates":
        from vaepipe.cleanup import clean
        return clean(workdir, a.run, _action(a), a.move_to.resolve() if a.move_to else None, a.apply,
                     a.undo.resolve() if a.undo else None)
    from vaepipe.pipeline import run_pipeline

    if a.command == "pipeline":
        return run_pipeline(a.images.resolve(), workdir, build_config(a), model, a.retrain, a.replace, a.k, a.n)
    if a.command == "demo":
        from vaepipe.fashion_mnist import export_pngs, load_split

        return run_pipeline(export_pngs(*load_split("t10k"), a.images).resolve(), workdir)
    raise AssertionError(a.command)


MAX_SAMPLES = 4096  # prior samples a run writes as PNGs: more is a typo (10 million tried to allocate 10 GB)


def _require_dir(path: Path, what: str) -> None:
    if not Path(path).is_dir():
        raise VaepipeError(f"{what} {path} does not exist or is not a directory")


if __name__ == "__main__":
    sys.exit(main())
