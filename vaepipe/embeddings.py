"""Stage 3's records, without torch: what is embedded already, what is left (the plan of shards), what a run did.

The encoding itself is vaepipe.embed's; this half is what a re-index that changes nothing runs, so it imports no
torch (the model's latent size comes from vaepipe.model_dir). Keyed by content: an image whose sha256 already has an
embedding for this model is not embedded again.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from vaepipe.config import EmbedConfig, VAEConfig
from vaepipe.model_dir import model_config
from vaepipe.store import PLAN_FILE, atomic_path, checked_row_groups, embedding_schema, next_number, row_groups

log = logging.getLogger("vaepipe")


@dataclass
class EmbedResult:
    embeddings_dir: Path
    model_id: str
    n_embedded: int  # newly embedded now
    n_reused: int  # already embedded by an earlier run
    quarantined: list[Path] = field(default_factory=list)  # damaged or outdated parts found and set aside
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, reason): changed or vanished since ingest

    @classmethod
    def of(cls, embeddings_dir: Path, model_id: str, plan: EmbeddingPlan, shards: list[ShardResult]) -> EmbedResult:
        return cls(embeddings_dir, model_id, sum(s.n_rows for s in shards), plan.n_done, plan.quarantined,
                   [f for s in shards for f in s.failed])


@dataclass
class EmbeddingPlan:
    """What an embedding run has to do (plan_shards): the plan file, its shard numbers (one part file each), how
    many contents were embedded already, and the damaged or outdated parts set aside."""
    plan: Path
    numbers: list[int]
    n_done: int
    quarantined: list[Path] = field(default_factory=list)


@dataclass
class ShardResult:
    """One embedded shard: rows written to its part, and the files that failed now, (path, reason)."""
    n_rows: int
    failed: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Embedded:
    """What the encoder makes of a batch of images: each image's posterior mean (float32 (n, d)); for a colour model
    also its grey rendering's (images.grey_rendering) and whether the image is greyscale itself.

    A greyscale copy of a colour picture is searched among the collection's grey renderings, where its original
    looks as it does (BENCHMARKS.md, "Greyscale copies"); a grey-input model has neither (None)."""

    embedding: np.ndarray
    grey_embedding: np.ndarray | None = None
    greyscale: np.ndarray | None = None  # bool (n,)

    def __len__(self) -> int:
        return len(self.embedding)

    def take(self, rows: Sequence[int] | np.ndarray | slice) -> Embedded:
        return Embedded(self.embedding[rows], None if self.grey_embedding is None else self.grey_embedding[rows],
                        None if self.greyscale is None else self.greyscale[rows])

    @staticmethod
    def concat(parts: Sequence[Embedded], dim: int) -> Embedded:
        if not parts:
            return Embedded(np.zeros((0, dim), np.float32))
        grey = parts[0].grey_embedding is not None
        return Embedded(np.concatenate([p.embedding for p in parts]),
                        np.concatenate([p.grey_embedding for p in parts]) if grey else None,  # type: ignore[misc]
                        np.concatenate([p.greyscale for p in parts]) if grey else None)  # type: ignore[misc]


def has_grey_renderings(config: VAEConfig) -> bool:
    return config.spec.channels == 3


class Contents:
    """A set of image contents that grows by batches: 128 bits of each sha256 (32 hex bytes) in sorted runs.

    32 bytes an image instead of a Python string or an Arrow hash table's ~100: planning a re-index of a million
    images holds ~32 MB for what is already embedded. Runs merge like a binary counter (a run is merged into the
    one before it once it is at least half its size), so each key is copied O(log n) times in all and a lookup
    searches O(log n) runs, however small the batches.
    """

    def __init__(self) -> None:
        self.runs: list[np.ndarray] = []  # sorted, disjoint, each more than twice the size of the next

    def __len__(self) -> int:
        return sum(len(run) for run in self.runs)

    def has(self, keys: np.ndarray) -> np.ndarray:
        found = np.zeros(len(keys), bool)
        for run in self.runs:
            found |= run[np.searchsorted(run, keys).clip(max=len(run) - 1)] == keys
        return found

    def add(self, keys: np.ndarray) -> None:
        new = np.unique(keys)
        new = new[~self.has(new)]
        if len(new):
            self.runs.append(new)
        while len(self.runs) > 1 and len(self.runs[-2]) <= 2 * len(self.runs[-1]):
            merged = np.concatenate(self.runs[-2:])
            merged.sort(kind="stable")  # two sorted runs: the stable sort (timsort) merges them in one pass
            self.runs[-2:] = [merged]


def content_keys(shas: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """The keys `Contents` holds: the first 32 hex digits (128 bits) of each sha256, as fixed-width bytes."""
    return np.asarray(pc.utf8_slice_codeunits(shas, 0, 32).to_numpy(zero_copy_only=False), dtype="S32")


def embedded_contents(embeddings_dir: Path, dim: int, grey: bool = False) -> tuple[Contents, list[Path]]:
    """The contents already embedded, and the parts set aside because they were damaged (moved to _damaged/) or
    written before this model's parts had grey renderings (moved to _outdated/).

    A part left damaged by a crash or a full disk is never read as whole: its images are embedded again.
    """
    done = Contents()
    quarantined: list[Path] = []
    for part in sorted(Path(embeddings_dir).glob("part-*.parquet")):
        try:
            if grey and _schema_or_none(part) == embedding_schema(dim, grey=False):
                aside = part.parent / "_outdated" / part.name
                aside.parent.mkdir(exist_ok=True)
                part.rename(aside)
                quarantined.append(aside)
                log.warning("embed: %s was written without grey renderings (by an earlier vaepipe); set aside as %s, "
                            "its images will be embedded again", part, aside)
                continue
            for group in checked_row_groups(part, embedding_schema(dim, grey)):
                done.add(content_keys(group["sha256"]))
                # Arrow's allocator (mimalloc) keeps the pages of every group read unless asked: reading two parts
                # of 50,000 rows left the process 74 MB larger, 38 MB when handing them back after each group.
                pa.default_memory_pool().release_unused()
        except (OSError, ValueError, pa.ArrowException) as e:
            bad = part.parent / "_damaged" / part.name  # out of the way of dataset readers and of the index
            bad.parent.mkdir(exist_ok=True)
            part.rename(bad)
            quarantined.append(bad)
            log.warning("embed: %s is damaged (%s); set aside as %s, its images will be embedded again", part, e, bad.name)
    return done, quarantined


def _schema_or_none(part: Path) -> pa.Schema | None:
    try:
        return pq.read_schema(part).remove_metadata()
    except (OSError, pa.ArrowException):
        return None  # damaged: checked_row_groups says how


@dataclass
class Shard:
    """One unit of embedding work: these images become one Parquet part (part-<number>.parquet)."""

    number: int
    paths: pa.StringArray  # relative to the collection root; Arrow, not a Python string per image (memory)
    shas: pa.StringArray


PLAN_SCHEMA = pa.schema([("shard", pa.int32()), ("path", pa.string()), ("sha256", pa.string())])


def plan_shards(manifest_path: Path, embeddings_dir: Path, dim: int, shard_rows: int, grey: bool = False
                ) -> EmbeddingPlan:
    """Split what is not embedded yet (one image per distinct sha256, its first path) into shards of at most `shard_rows`.

    The plan is a file (embeddings_dir/_plan.parquet), so shard tasks are handed a path and a number, not
    lists of files: a million files stay out of task and flow-run parameters. The manifest is read a row group
    at a time and contents are held as 32-byte keys (`Contents`), so planning does not hold the manifest.
    """
    seen, quarantined = embedded_contents(embeddings_dir, dim, grey)
    n_done = len(seen)
    first_number = next_number(embeddings_dir, "part")
    plan = Path(embeddings_dir) / PLAN_FILE
    n_todo = 0
    with atomic_path(plan) as tmp, pq.ParquetWriter(tmp, PLAN_SCHEMA) as writer:
        for batch in row_groups(manifest_path, columns=["path", "sha256", "status"]):
            ok = batch.filter(pc.equal(batch["status"], "ok"))
            keys = content_keys(ok["sha256"])
            _, first = np.unique(keys, return_index=True)  # the first row of each content in this batch ...
            first = np.sort(first[~seen.has(keys[first])])  # ... not embedded and not planned, in manifest order
            seen.add(keys[first])
            shard = first_number + (n_todo + np.arange(len(first))) // shard_rows
            writer.write_table(pa.table({"shard": pa.array(shard, pa.int32()), "path": ok["path"].take(first),
                                         "sha256": ok["sha256"].take(first)}, schema=PLAN_SCHEMA))
            n_todo += len(first)
    numbers = list(range(first_number, first_number + -(-n_todo // shard_rows)))
    log.info("embed: %d images to embed in %d parts, %d already embedded", n_todo, len(numbers), n_done)
    return EmbeddingPlan(plan, numbers, n_done, quarantined)


def load_shard(plan: Path, number: int) -> Shard:
    table = pq.read_table(plan, filters=[("shard", "=", number)])
    return Shard(number, table["path"].combine_chunks(), table["sha256"].combine_chunks())


def vector_column(vectors: np.ndarray) -> pa.FixedSizeListArray:
    return pa.FixedSizeListArray.from_arrays(pa.array(vectors.astype(np.float32).ravel(), pa.float32()), vectors.shape[1])


def plan_embedding(manifest_path: Path, model_dir: Path, embeddings_dir: Path, cfg: EmbedConfig = EmbedConfig()
                   ) -> EmbeddingPlan:
    """plan_shards for this model's embeddings, in parts of cfg.part_rows."""
    config = model_config(Path(model_dir))
    return plan_shards(manifest_path, embeddings_dir, config.latent_dim, cfg.part_rows, has_grey_renderings(config))
