"""Stage 3: the VAE's posterior mean of every usable image, streamed into Parquet parts.

Keyed by content: an image whose sha256 already has an embedding for this model is not
embedded again, so a re-index only touches what changed. Memory is bounded by
`part_rows` whatever the folder size.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from vaepipe.config import EmbedConfig
from vaepipe.images import ImageSpec, iter_image_batches, to_float
from vaepipe.ingest import read_ok
from vaepipe.model import VAE, default_device, load_checkpoint
from vaepipe.progress import Progress
from vaepipe.store import embedding_schema, write_parquet

log = logging.getLogger("vaepipe")


@dataclass
class EmbedResult:
    embeddings_dir: Path
    model_id: str
    n_embedded: int  # newly embedded now
    n_reused: int  # already embedded by an earlier run
    quarantined: list[Path] = field(default_factory=list)  # damaged parts found and set aside
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, reason): changed or vanished since ingest


@torch.no_grad()
def encode_files(model: VAE, paths: Sequence[Path], batch_size: int, workers: int
                 ) -> Iterator[tuple[list[int], np.ndarray, list[tuple[int, str]]]]:
    """Yield (positions in `paths`, their posterior means float32 (B, d), failures (position, reason))."""
    device = next(model.parameters()).device
    spec: ImageSpec = model.config.spec
    for batch, idx, errors in iter_image_batches(paths, spec, batch_size, workers):
        good = [j for j, e in enumerate(errors) if not e]
        failed = [(idx[j], errors[j]) for j, e in enumerate(errors) if e]
        mu = model.encode(to_float(batch[good]).to(device))[0].float().cpu().numpy() if good else np.zeros((0, model.config.latent_dim), np.float32)
        yield [idx[j] for j in good], mu, failed


def embedded_shas(embeddings_dir: Path, dim: int) -> tuple[set[str], list[Path]]:
    """The sha256s already embedded, and the parts set aside because they were damaged (renamed *.corrupt).

    A part left damaged by a crash or a full disk is never read as whole: its images are embedded again.
    """
    done: set[str] = set()
    quarantined: list[Path] = []
    for part in sorted(Path(embeddings_dir).glob("part-*.parquet")):
        try:
            table = pq.read_table(part)
            if not table.schema.equals(embedding_schema(dim)):
                raise ValueError(f"schema {table.schema} is not the embedding schema for dimension {dim}")
            done.update(table["sha256"].to_pylist())
        except (OSError, ValueError, pa.ArrowException) as e:
            bad = part.with_name(part.name + ".corrupt")
            part.rename(bad)
            quarantined.append(bad)
            log.warning("embed: %s is damaged (%s); set aside as %s, its images will be embedded again", part, e, bad.name)
    return done, quarantined


def embed(root: Path, manifest_path: Path, model_dir: Path, embeddings_dir: Path,
          cfg: EmbedConfig = EmbedConfig(), device: torch.device | None = None) -> EmbedResult:
    model = load_checkpoint(model_dir / "model.pt", device or default_device())
    mid = Path(model_dir).name
    ok = read_ok(manifest_path)
    done, quarantined = embedded_shas(embeddings_dir, model.config.latent_dim)
    todo: dict[str, str] = {}  # sha256 -> first path with that content
    for path, sha in zip(ok["path"].to_pylist(), ok["sha256"].to_pylist()):
        if sha not in done:
            todo.setdefault(sha, path)
    paths, shas = list(todo.values()), list(todo.keys())
    log.info("embed: %d distinct images to embed with model %s, %d already embedded", len(paths), mid, len(done))

    schema = embedding_schema(model.config.latent_dim)
    part_no = _next_part_number(embeddings_dir)
    buffer: list[tuple[list[int], np.ndarray]] = []  # (positions, means) per batch, until a part is full
    failed: list[tuple[str, str]] = []
    n_written = 0

    def flush() -> None:
        nonlocal part_no, n_written, buffer
        if not buffer:
            return
        rows = [i for idx, _ in buffer for i in idx]
        vectors = np.concatenate([v for _, v in buffer]).astype(np.float32)
        table = pa.table({
            "path": pa.array([paths[i] for i in rows], pa.string()),
            "sha256": pa.array([shas[i] for i in rows], pa.string()),
            "model_id": pa.array([mid] * len(rows), pa.string()),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel(), pa.float32()), model.config.latent_dim),
        }, schema=schema)
        write_parquet(table, embeddings_dir / f"part-{part_no:05d}.parquet")
        log.info("embed: wrote part-%05d.parquet (%d rows)", part_no, len(rows))
        part_no += 1
        n_written += len(rows)
        buffer = []

    progress = Progress("embed", len(paths))
    pending = 0
    for idx, mu, errors in encode_files(model, [Path(root) / p for p in paths], cfg.batch_size, cfg.workers):
        failed += [(paths[i], reason) for i, reason in errors]
        buffer.append((idx, mu))
        pending += len(idx)
        progress.update(len(idx) + len(errors))
        if pending >= cfg.part_rows:
            flush()
            pending = 0
    flush()
    progress.close()
    for path, reason in failed:
        log.warning("embed: skipped %s: %s", path, reason)
    return EmbedResult(Path(embeddings_dir), mid, n_written, len(done), quarantined, failed)


def _next_part_number(embeddings_dir: Path) -> int:
    numbers = [int(m.group(1)) for p in Path(embeddings_dir).glob("part-*.parquet")
               if (m := re.fullmatch(r"part-(\d+)\.parquet", p.name))]
    return max(numbers, default=-1) + 1
