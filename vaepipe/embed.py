"""Stage 3: the VAE's posterior mean of every usable image, streamed into Parquet parts.

Keyed by content: an image whose sha256 already has an embedding for this model is not
embedded again, so a re-index only touches what changed (the plan of what is left, and the records, are
vaepipe.embeddings', which needs no torch). A shard streams its rows into its
part a row group at a time: memory holds the shard's file names, not its vectors.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from vaepipe.config import EmbedConfig, usable_cores
from vaepipe.batches import iter_image_batches, to_float
from vaepipe.images import VIEWS, ImageSpec
from vaepipe.embeddings import (Embedded, EmbedResult, ShardResult, has_grey_renderings, load_shard, plan_embedding,
                                vector_column)
from vaepipe.model import VAE, default_device, exact_cudnn, folded, load_checkpoint, model_id
from vaepipe.progress import Progress
from vaepipe.store import MODEL_FILE, atomic_path, embedding_schema, file_path

log = logging.getLogger("vaepipe")

ROW_GROUP_ROWS = 16_384  # rows a part holds in memory before writing them: ~2 MB at 32 dimensions
GREY_TOLERANCE = 3  # grey levels between an image's channels that still make it greyscale (a JPEG's chroma noise)


def encode_files(model: VAE, paths: Sequence[str | Path], batch_size: int, workers: int, threads: int | None = None
                 ) -> Iterator[tuple[list[int], Embedded, list[tuple[int, str]]]]:
    """Yield (positions in `paths`, what the encoder made of them, failures (position, reason)).

    On CPU each decoding worker also encodes its batch, on one thread: the cores then share one kind of work
    instead of decoders waiting on a main process that encodes (BENCHMARKS.md, throughput). On a GPU the
    workers decode and this process encodes. threads: torch threads for encoding in this process; None leaves
    the cores the decoding workers use to them.
    """
    encoder = PosteriorMean(folded(model))
    in_workers = encoder.device.type == "cpu"
    grey = has_grey_renderings(model.config)
    if not in_workers:
        batch_size = gpu_batch_size(batch_size, model.config.spec, len(paths), workers, 2 if grey else 1)
    with encoder_threads(threads if threads else max(1, usable_cores() - workers)):
        for out, idx, errors in iter_image_batches(paths, model.config.spec, batch_size, workers,
                                                   then=encoder if in_workers else None, grey=grey):
            embedded = out if in_workers else encoder(out)
            good = [j for j, e in enumerate(errors) if not e]
            yield [idx[j] for j in good], embedded.take(good), [(idx[j], e) for j, e in enumerate(errors) if e]


def encode_views(model: VAE, paths: Sequence[str | Path], batch_size: int = 64, workers: int | None = None
                 ) -> tuple[list[int], Embedded]:
    """(positions in `paths` that loaded, what the encoder made of their images.VIEWS): an `Embedded` of
    len(positions) * len(VIEWS) rows, image by image, each view with its grey rendering. Decoded and encoded as
    encode_files does, by `workers` processes (default: one per core, none for one batch)."""
    positions: list[int] = []
    parts: list[Embedded] = []
    for loaded, embedded in iter_encoded_views(model, paths, batch_size, workers):
        positions += loaded
        parts.append(embedded)
    return positions, Embedded.concat(parts, model.config.latent_dim)


def iter_encoded_views(model: VAE, paths: Sequence[str | Path], batch_size: int = 64, workers: int | None = None
                       ) -> Iterator[tuple[list[int], Embedded]]:
    """encode_views a decoded batch at a time, in order: for a caller that puts each batch where it goes."""
    if workers is None:  # starting decoding processes costs more than one batch
        workers = usable_cores() if len(paths) > batch_size else 0
    encoder = PosteriorMean(folded(model))
    in_workers = encoder.device.type == "cpu"
    n_views = len(VIEWS)
    with encoder_threads(1 if workers else usable_cores()):
        for out, idx, errors in iter_image_batches(paths, model.config.spec, batch_size, workers,
                                                   then=encoder if in_workers else None, what="views"):
            embedded = out if in_workers else encoder(out)
            for j, e in enumerate(errors):
                if e:
                    log.info("views: %s not looked at through edited views (%s)", paths[idx[j]], e)
            good = [j for j, e in enumerate(errors) if not e]
            yield [idx[j] for j in good], embedded.take([j * n_views + v for j in good for v in range(n_views)])


def gpu_batch_size(batch_size: int, spec: ImageSpec, n: int, workers: int, renderings: int = 1) -> int:
    """Images per decoded batch when this process encodes on a GPU: for small images up to 4x batch_size (about
    1 MB of pixels a batch), as long as every worker still gets 4 batches of the n images.

    This process takes in each batch (a shared-memory segment and a passed file descriptor) and launches the
    encoder's kernels for it, at a cost per batch whatever its size. With 16 workers decoding 28 px PNGs for an
    H100 that was the limit, and batches of 1,024 made the stage faster. Photos (64 px colour, 3 MB a batch of 256)
    keep batch_size: fewer batches than workers leave cores idle (BENCHMARKS.md, "On a GPU machine").
    renderings: arrays per image (2 where each comes with its grey rendering).
    """
    pixels = renderings * spec.channels * spec.size * spec.size
    return max(batch_size, min(4 * batch_size, (1 << 20) // pixels, n // (4 * max(1, workers))))


class PosteriorMean:
    """uint8 images (B, C, H, W), or (B, 2, C, H, W) with their grey renderings (load_batch) -> `Embedded`, numpy.

    A failed image's zeros are encoded with the rest: dropping them first would cost a copy of the batch. Numpy,
    not tensors: from a decoding worker an array comes back pickled with the batch, where a tensor goes through
    a shared-memory segment and a passed file descriptor per batch (slower on 100,000 28 px PNGs, BENCHMARKS.md).
    """

    def __init__(self, model: VAE):
        self.model = model
        self.device = next(model.parameters()).device

    @torch.no_grad()
    @exact_cudnn()  # a GPU's means equal the CPU's to float rounding, not to TF32's
    def __call__(self, pixels: torch.Tensor) -> Embedded:
        if pixels.ndim == 4:
            return Embedded(self._means(pixels))
        if pixels.ndim == 6:  # images' views (B, V, 2, C, H, W): the views image by image
            pixels = pixels.flatten(0, 1)
        mu = self._means(pixels.flatten(0, 1)).reshape(len(pixels), 2, -1)  # one pass for both renderings
        image = pixels[:, 0].float()
        spread = (image - image.mean(1, keepdim=True)).abs().amax(dim=(1, 2, 3))
        return Embedded(np.ascontiguousarray(mu[:, 0]), np.ascontiguousarray(mu[:, 1]),
                        (spread <= GREY_TOLERANCE).numpy())

    def _means(self, pixels: torch.Tensor) -> np.ndarray:
        return self.model.embed(to_float(pixels.to(self.device))).float().cpu().numpy()


@contextlib.contextmanager
def encoder_threads(n: int) -> Iterator[None]:
    """Run torch on n threads inside the block, as before it after.

    Torch's threads wait for each other at every op; when decoding workers hold some of the cores, they wait on
    descheduled threads. On 2 cores with 2 decoding workers, one encoder thread in the main process instead of two
    was faster on both small PNGs and photos (BENCHMARKS.md, throughput).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class UnderRoot(Sequence[str]):
    """Paths of files under a root from their relative names in Arrow: a shard's 50,000 files as a few buffers
    that forked decoding workers share, not 50,000 Path objects each process touches (and copies).

    Items are strings: joining a Path cost a 28 px PNG a twentieth of its time in a worker, concatenation a fifth
    of that."""

    def __init__(self, root: Path, names: pa.StringArray):
        self.prefix, self.names = os.path.join(root, ""), names

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> str:  # type: ignore[override]  # slices are not needed
        name = self.names[i].as_py()
        return self.prefix + name if "\\" not in name else file_path(self.prefix, name)


def embed_shard(root: Path, model_dir: Path, embeddings_dir: Path, plan: Path, number: int,
                cfg: EmbedConfig = EmbedConfig(), device: torch.device | None = None) -> ShardResult:
    """Embed shard `number` of the plan into its part file (rows written, files that failed now).

    Rows go into the part a row group at a time and the part is renamed into place when the shard is done, so
    a shard holds one row group of vectors, not one per image of the part.
    """
    shard = load_shard(plan, number)
    model = load_checkpoint(Path(model_dir) / MODEL_FILE, device or default_device())
    schema = embedding_schema(model.config.latent_dim, has_grey_renderings(model.config))
    mid = model_id(model)  # the weights' own id, whatever the folder they were read from is called
    part = Path(embeddings_dir) / f"part-{shard.number:05d}.parquet"
    n_rows = 0
    failed: list[tuple[str, str]] = []
    pending: list[pa.Table] = []
    progress = Progress(f"embed part {shard.number}", len(shard.paths))
    # Paths and hashes are all different: a dictionary of them would be built, held and dropped for nothing.
    with atomic_path(part) as tmp, pq.ParquetWriter(tmp, schema, use_dictionary=["model_id"]) as writer:
        files = UnderRoot(Path(root), shard.paths)
        for idx, embedded, errors in encode_files(model, files, cfg.batch_size, cfg.workers, cfg.threads):
            rows = pa.array(idx, pa.int64())
            columns = {
                "path": shard.paths.take(rows),
                "sha256": shard.shas.take(rows),
                "model_id": pa.array([mid] * len(idx), pa.string()),
                "embedding": vector_column(embedded.embedding),
            }
            if embedded.grey_embedding is not None:
                columns["grey_embedding"] = vector_column(embedded.grey_embedding)
                columns["greyscale"] = pa.array(embedded.greyscale, pa.bool_())
            pending.append(pa.table(columns, schema=schema))
            n_rows += len(idx)
            if sum(t.num_rows for t in pending) >= ROW_GROUP_ROWS:
                writer.write_table(pa.concat_tables(pending))
                pending = []
            failed += [(shard.paths[i].as_py(), reason) for i, reason in errors]
            progress.update(len(idx) + len(errors))
        if pending:
            writer.write_table(pa.concat_tables(pending))
    progress.close()
    if n_rows:
        log.info("embed: wrote %s (%d rows)", part.name, n_rows)
    else:
        part.unlink()  # every image failed: no empty part for readers to list
    for path, reason in failed:
        log.warning("embed: skipped %s: %s", path, reason)
    return ShardResult(n_rows, failed)


def embed_shards_here(root: Path, model_dir: Path, embeddings_dir: Path, plan: Path, numbers: list[int],
                      cfg: EmbedConfig = EmbedConfig(), device: torch.device | None = None
                      ) -> list[ShardResult]:
    """The shards of a plan one after another in this process."""
    return [embed_shard(root, model_dir, embeddings_dir, plan, number, cfg, device) for number in numbers]


def embed(root: Path, manifest_path: Path, model_dir: Path, embeddings_dir: Path,
          cfg: EmbedConfig = EmbedConfig(), device: torch.device | None = None) -> EmbedResult:
    """Embed everything not embedded yet, one shard after another in this process."""
    plan = plan_embedding(manifest_path, model_dir, embeddings_dir, cfg)
    results = embed_shards_here(root, model_dir, embeddings_dir, plan.plan, plan.numbers, cfg, device)
    return EmbedResult.of(Path(embeddings_dir), model_id(load_checkpoint(Path(model_dir) / MODEL_FILE)), plan, results)

