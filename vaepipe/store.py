"""The on-disk layout of a collection (one workdir), atomic writes and Parquet schemas.

Every file is written to a temporary name in the same directory and renamed into
place, so a killed run never leaves a half file that a later run reads as whole.
Schemas are plain Arrow types: pandas, pyarrow and DuckDB read them without vaepipe.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import functools
import hashlib
import json
import logging
import mmap
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from vaepipe.errors import VaepipeError

log = logging.getLogger("vaepipe")

# vaepipe/__init__.py names Arrow's pool before pyarrow loads; this covers a pyarrow loaded before vaepipe.
if os.environ.get("ARROW_DEFAULT_MEMORY_POOL") == "system":
    pa.set_memory_pool(pa.system_memory_pool())


MANIFEST_SCHEMA = pa.schema(
    [
        ("path", pa.string()),  # relative to the collection root, '/'-separated
        ("bytes", pa.int64()),
        ("mtime", pa.timestamp("ns", tz="UTC")),  # os.stat's st_mtime_ns: a timestamp to pandas and DuckDB
        ("sha256", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("mode", pa.string()),
        ("status", pa.string()),  # "ok" | "error" | "skipped" (plainly not an image by its name)
        ("error", pa.string()),
    ]
)

# Manifests written before mtime was a timestamp held os.stat's st_mtime, float seconds.
_FLOAT_MTIME_SCHEMA = MANIFEST_SCHEMA.set(MANIFEST_SCHEMA.get_field_index("mtime"), pa.field("mtime", pa.float64()))


def _timestamped(rows: pa.Table) -> pa.Table:
    """Manifest rows with float-seconds mtimes, with the nanosecond timestamp that converts back to the same float
    (whole seconds and their fraction apart: the fraction times 1e9 is exact in a double)."""
    seconds = rows["mtime"].to_numpy(zero_copy_only=False)
    missing = np.isnan(seconds)
    seconds = np.where(missing, 0.0, seconds)
    whole = np.floor(seconds)
    ns = whole.astype(np.int64) * 1_000_000_000 + np.rint((seconds - whole) * 1e9).astype(np.int64)
    mtime = pa.array(ns, type=MANIFEST_SCHEMA.field("mtime").type, mask=missing)
    return rows.set_column(rows.schema.get_field_index("mtime"), MANIFEST_SCHEMA.field("mtime"), mtime)


def upgrade_manifest(path: Path) -> None:
    """Rewrite, once, a manifest written before mtime was a timestamp, with the timestamp; any other file is left
    as it is for its reader's own checks."""
    try:
        found = pq.read_schema(path)
        if not found.equals(_FLOAT_MTIME_SCHEMA):
            return
        with atomic_path(path) as tmp, pq.ParquetWriter(tmp, MANIFEST_SCHEMA.with_metadata(found.metadata)) as writer:
            for rows in row_groups(path):
                writer.write_table(_timestamped(rows))
        log.info("%s: mtime rewritten as a timestamp (was float seconds)", path)
    except (OSError, pa.ArrowException) as e:  # damaged: its reader says so and reads the files again
        log.debug("%s: not upgraded (%s)", path, e)


def read_manifest(path: Path) -> pa.Table:
    """A whole manifest with MANIFEST_SCHEMA, one written before mtime was a timestamp included."""
    if pq.read_schema(path).equals(_FLOAT_MTIME_SCHEMA):
        return _timestamped(pq.read_table(path))
    return pq.read_table(path, schema=MANIFEST_SCHEMA)


NEIGHBOURS_SCHEMA = pa.schema(
    [
        ("query_path", pa.string()),
        ("query_sha256", pa.string()),
        ("rank", pa.int32()),  # 1 = nearest
        ("neighbour_path", pa.string()),
        ("neighbour_sha256", pa.string()),
        ("distance", pa.float32()),
        ("similarity", pa.float32()),
        ("run_id", pa.string()),  # which run and model answered: rows of several runs can be read as one table
        ("model_id", pa.string()),
    ]
)


def embedding_schema(dim: int, grey: bool = False) -> pa.Schema:
    """An embeddings part; grey (colour models): also each image's grey rendering's embedding and whether the image
    is greyscale itself (embed.Embedded)."""
    fields = [("path", pa.string()), ("sha256", pa.string()), ("model_id", pa.string()),
              ("embedding", pa.list_(pa.float32(), dim))]
    if grey:
        fields += [("grey_embedding", pa.list_(pa.float32(), dim)), ("greyscale", pa.bool_())]
    return pa.schema(fields)


# The files inside a workdir's folders (Workdir names the folders): README's "What comes out" lists them all.
MODEL_FILE = "model.pt"  # in models/<model_id>/
MODEL_CONFIG_FILE = "config.json"  # ... its architecture and training record
METRICS_FILE = "metrics.json"  # ... its per-epoch losses
INDEX_FILE = "index.faiss"  # in index/<model_id>/
GREY_INDEX_FILE = "grey.faiss"  # ... the grey renderings' index, beside it
IDS_FILE = "ids.parquet"  # ... the path and sha256 of each vector
INDEX_META_FILE = "index.json"  # ... kind, parameters, measured recall, fingerprint of its source
PLAN_FILE = "_plan.parquet"  # in embeddings/<model_id>/: a leading "_", so readers of the folder as a dataset skip it
NEIGHBOURS_FILE = "neighbours.parquet"  # in runs/<run_id>/: the neighbour rows (NEIGHBOURS_SCHEMA)
DUPLICATES_FILE = "duplicates.parquet"  # ... the duplicate groups, for --all runs
RUN_FILE = "run.json"  # ... what was asked, the parameters used, the queries skipped with the reasons
REPORT_FILE = "report.html"  # ... the report's first page (report-0002.html and on, likely-duplicates.html)


@dataclass(frozen=True)
class Workdir:
    """Where each artefact of a collection lives. Nothing else in vaepipe builds these paths."""

    root: Path

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.parquet"

    @property
    def collection(self) -> Path:
        """Which model and index the collection currently answers with (written last by a build)."""
        return self.root / "collection.json"

    def model_dir(self, model_id: str) -> Path:
        return self.root / "models" / model_id

    def model_file(self, model_id: str) -> Path:
        """The model's checkpoint (model.save_checkpoint), beside its config.json and metrics.json."""
        return self.model_dir(model_id) / MODEL_FILE

    @property
    def training_dir(self) -> Path:
        return self.root / "models" / "_training"

    def embeddings_dir(self, model_id: str) -> Path:
        return self.root / "embeddings" / model_id

    def index_dir(self, model_id: str) -> Path:
        return self.root / "index" / model_id

    def views_dir(self, model_id: str) -> Path:
        """The model's embeddings of collection images seen through edited views (views.ViewCache)."""
        return self.root / "views" / model_id

    @property
    def thumbs_dir(self) -> Path:
        """Report thumbnails kept across runs by content (report.Thumbs.cache); safe to delete."""
        return self.root / "thumbs"

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    def run_dir(self, run_id: str) -> Path:
        return self.runs_dir / run_id

    @property
    def actions_dir(self) -> Path:
        """The undo logs of applied clean-up actions (cleanup.apply), one folder per action."""
        return self.root / "actions"

    def samples_dir(self, run_id: str) -> Path:
        return self.root / "samples" / run_id

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """One build at a time per workdir; a second one is refused with a clear message.

        flock is released by the kernel when the holder dies, even by SIGKILL, so a killed run never
        leaves a stale lock. The file is removed afterwards so a workdir looks the same before and after.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / ".lock"
        while True:
            f = open(path, "a+")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                holder = f.read().strip() or "another process"
                f.close()
                raise VaepipeError(f"workdir {self.root} is in use by another vaepipe build ({holder}); "
                                   "wait for it to finish, or use another --workdir") from None
            try:
                if os.fstat(f.fileno()).st_ino == os.stat(path).st_ino:
                    break  # still the file at the path, not one an earlier holder unlinked
            except FileNotFoundError:
                pass
            f.close()
        try:
            f.truncate(0)
            f.write(f"pid {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
            f.flush()
            self.remove_stale_temporaries()
            yield
        finally:
            path.unlink(missing_ok=True)
            f.close()

    def remove_stale_temporaries(self, older_than_s: float = 3600) -> int:
        """Delete the temporary files (atomic_path's) and unfinished run folders that a killed run left, if older
        than an hour: a query that is writing its run folder while a build starts keeps its fresh ones. Returns how
        many were deleted."""
        cutoff, removed = time.time() - older_than_s, 0
        partial_runs = [p for folder in ("runs", "samples") for p in (self.root / folder).glob(".*.partial")]
        temporaries = []
        for folder, dirs, files in os.walk(self.root):
            # Thumbnails are written in place (or linked), not through a temporary: a report's thousands, and the
            # ones kept in thumbs/, are not walked.
            dirs[:] = [d for d in dirs if d != "thumbs"]
            temporaries += [Path(folder) / f for f in files if f.startswith(".") and f.endswith(".tmp")]
        for tmp in [*temporaries, *partial_runs]:
            try:
                if tmp.stat().st_mtime < cutoff:
                    shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()
                    removed += 1
            except OSError:
                continue  # gone already, or not ours to delete: not worth failing a build for
        if removed:
            log.info("workdir: deleted %d temporary files left by killed runs", removed)
        return removed

    def write_collection(self, image_root: Path, model_id: str) -> Path:
        """Point the collection at a model and its index; written last by a build, so queries never see half a build."""
        return write_json({"image_root": str(Path(image_root).resolve()), "model_id": model_id,
                           "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, self.collection)

    def check_image_root(self, image_root: Path, replace: bool = False) -> bool:
        """Whether a build of image_root replaces another folder's collection: refused (VaepipeError) unless
        `replace`, as it would silently take the place of what the workdir answers for. A collection.json that
        cannot be read is no collection (the build rebuilds it)."""
        if not self.collection.exists():
            return False
        try:
            current = self.read_collection().get("image_root")
        except VaepipeError:
            return False
        if current is None or Path(current) == Path(image_root).resolve():
            return False
        if not replace:
            raise VaepipeError(f"workdir {self.root} holds the collection of {current}; pass --replace (replace=True) "
                               f"to index {image_root} into it instead, or use another --workdir")
        return True

    def read_collection(self) -> dict[str, Any]:
        if not self.collection.exists():
            raise VaepipeError(
                f"{self.root} holds no built collection (no collection.json). "
                f"Run `vaepipe index IMAGES --workdir {self.root}` first."
            )
        try:
            return read_json(self.collection)
        except (ValueError, OSError) as e:
            raise VaepipeError(f"{self.collection} is unreadable ({e}); run `vaepipe index` again to rebuild it") from None


def name_of(relative: str) -> str:
    """The manifest's name for a file's path relative to the collection root, as os gives it (bytes that are not
    UTF-8 arrive as surrogates): valid UTF-8 as it stands, other bytes as \\xNN and a backslash doubled, so that
    Arrow can store every name and `file_path` gets the exact bytes back (two names never share a string)."""
    raw = os.fsencode(relative)
    return raw.replace(b"\\", b"\\\\").decode("utf-8", "backslashreplace")


_ESCAPED = re.compile(rb"\\(\\|x[0-9a-f]{2})")


def file_path(root: str | Path, name: str) -> str:
    """The path of a manifest name under root (the inverse of name_of)."""
    if "\\" not in name:
        return os.path.join(root, name)
    raw = _ESCAPED.sub(lambda m: b"\\" if m.group(1) == b"\\" else bytes([int(m.group(1)[1:], 16)]), name.encode("utf-8"))
    return os.path.join(root, os.fsdecode(raw))


def new_run_id(kind: str) -> str:
    """Sortable, unique enough for one workdir: 20261125-163502-all-3f2a."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{kind}-{os.urandom(2).hex()}"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# What open() would give a new file: mkstemp makes its files 0600 whatever the umask, and a colleague who can see
# the report's thumbnails (written by Pillow, 0644) should see the report too.
FILE_MODE = 0o666 & ~_umask()


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it over `path`, on failure delete it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, FILE_MODE)
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def scratch_array(shape: tuple[int, ...], dtype: np.dtype | type, folder: Path | None = None) -> np.ndarray:
    """An empty array in a file under `folder` (the system's temporary folder if None), mapped into memory, for
    working data that grows with the folder (the duplicate check's signatures and views). The file is unlinked at
    once, so nothing is left behind, killed or not. With `release` after each block of work the process holds a
    block of it, not all of it: the rest waits in the kernel's page cache, which can write it out or drop it. Where
    the file cannot be made (no room), an ordinary array."""
    count = int(np.prod(shape))
    nbytes = max(count * np.dtype(dtype).itemsize, 1)
    try:
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".scratch-", dir=folder)
        try:
            os.unlink(name)
            os.posix_fallocate(fd, 0, nbytes)  # no room is an error now, not a SIGBUS on first touch
            mapped = mmap.mmap(fd, nbytes)
            # Rows are read in any order (an image's others are anywhere in the folder): without this, each read
            # also maps the pages read ahead after it, and the process holds them until released.
            mapped.madvise(mmap.MADV_RANDOM)
        finally:
            os.close(fd)
    except OSError as e:
        log.warning("scratch: %d MB held in memory instead of a file under %s (%s)", nbytes >> 20,
                    folder or tempfile.gettempdir(), e)
        return np.empty(shape, dtype)
    return np.frombuffer(mapped, dtype, count=count).reshape(shape)


def release(array: np.ndarray | None) -> None:
    """Give back the pages of a scratch_array (or a view of one) the process has touched: they stay in the file.
    Nothing for an ordinary array, or None."""
    base = _mapping(array)
    if isinstance(base, mmap.mmap):
        base.madvise(mmap.MADV_DONTNEED)


def _mapping(array: np.ndarray | None) -> object:
    """What an array's memory is at the bottom: the mmap.mmap of a scratch_array, else anything else."""
    base: object = array
    while isinstance(base, (np.ndarray, memoryview)):
        base = base.base if isinstance(base, np.ndarray) else base.obj
    return base


GATHER_STEP = 64  # rows a scratch_array gives is read between releases by `gathered`


def gathered(array: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """array[rows], for a scratch_array (or a view of one) given back every GATHER_STEP rows read. Reading a page of a
    file mapping also maps the neighbours the kernel has cached (fault-around, madvise or not), so a block of rows
    from all over the file held most of the file; this holds the rows. An ordinary array is indexed as it is."""
    if not isinstance(_mapping(array), mmap.mmap):
        return array[rows]
    out = np.empty((len(rows), *array.shape[1:]), array.dtype)
    for s in range(0, len(rows), GATHER_STEP):
        out[s:s + GATHER_STEP] = array[rows[s:s + GATHER_STEP]]
        release(array)
    return out


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(None).malloc_trim  # glibc's; absent from other C libraries
    except (AttributeError, OSError):
        return None


def trim_heap() -> None:
    """Give what the C heap holds freed back to the system (glibc's malloc_trim; nothing where there is none).

    glibc keeps freed blocks for reuse, and its mmap threshold rises as large blocks are freed, so after a stage
    that made and dropped many arrays of a few megabytes the process stays near its high-water mark for the rest of
    the run: a nightly query held ~100 MB this way after its duplicate check (BENCHMARKS.md, "Memory of the nightly
    query"). Cheap: called between stages, not in loops."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def kept_rows(array: np.ndarray, keep: np.ndarray, block: int = 1024) -> np.ndarray:
    """The rows of `array` where `keep`, moved up in place a block at a time (a scratch_array's first rows, released
    as it goes): the whole array copied with array[keep] would be in memory at once."""
    kept = 0
    for s in range(0, len(array), block):
        take = s + np.flatnonzero(keep[s:s + block])
        array[kept:kept + len(take)] = array[take]
        kept += len(take)
        release(array)
    return array[:kept]


def image_sizes(manifest: Path, paths: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """(width, height) as ingested of each of the manifest's `paths`, (n, 2) int64; (0, 0) where unknown."""
    table = pq.read_table(manifest, columns=["path", "width", "height"])
    at = pc.index_in(paths, value_set=table["path"])
    out = np.zeros((len(paths), 2), np.int64)
    for k, column in enumerate(("width", "height")):
        out[:, k] = pc.fill_null(pc.take(table[column], at), 0).to_numpy(zero_copy_only=False)
    return out


def write_parquet(table: pa.Table, path: Path, row_group_size: int | None = None) -> Path:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, row_group_size=row_group_size)
    return path


def next_number(directory: Path, prefix: str) -> int:
    """The number after the highest of the files `<prefix>-<number>.parquet` in directory (0 if none)."""
    pattern = re.compile(rf"{re.escape(prefix)}-(\d+)\.parquet")
    numbers = [int(m.group(1)) for p in Path(directory).glob(f"{prefix}-*.parquet") if (m := pattern.fullmatch(p.name))]
    return max(numbers, default=-1) + 1


def row_groups(path: Path, columns: list[str] | None = None) -> Iterator[pa.Table]:
    """A Parquet file one row group at a time (the manifest's are ingest checkpoints, 5,000 rows).

    Not ParquetFile.iter_batches: over a 100,000-row manifest it raised Arrow's peak from 3 to 11 MB and the
    process by 17 MB, where reading the row groups one by one raised it by under 1 MB.
    """
    with pq.ParquetFile(path) as f:
        for i in range(f.num_row_groups):
            yield f.read_row_group(i, columns=columns)


def checked_row_groups(path: Path, schema: pa.Schema) -> Iterator[pa.Table]:
    """Every row group of a Parquet file that must have `schema`, every column decoded, so that damage anywhere in
    the file shows before its rows are trusted: ValueError for other columns, OSError or an ArrowException for a
    damaged file. Schema metadata is not compared."""
    found = pq.read_schema(path)
    if not found.equals(schema):
        raise ValueError(f"columns {found.names} ({found.types}) are not the expected {schema.names} ({schema.types})")
    yield from row_groups(path)


def write_json(obj: Any, path: Path) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
    return path


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def sha256_file(path: str | Path) -> str:
    return sha256_and_bytes(path, keep_up_to=0)[0]


def sha256_and_bytes(path: str | Path, keep_up_to: int) -> tuple[str, bytes | None]:
    """A file's sha256, and its bytes if it is at most `keep_up_to` bytes long (else None), from one read: ingest
    hashes and checks the same bytes instead of reading a small file twice.

    Through a file descriptor, not a buffered file object: half the time for a small image, which counts when
    ingest hashes 100,000 files of 700 bytes.
    """
    h = hashlib.sha256()
    kept: list[bytes] | None = [] if keep_up_to > 0 else None
    size = 0
    fd = os.open(path, os.O_RDONLY)
    try:
        while block := os.read(fd, 1 << 20):
            h.update(block)
            size += len(block)
            if kept is not None and size <= keep_up_to:
                kept.append(block)
            else:
                kept = None
    finally:
        os.close(fd)
    return h.hexdigest(), None if kept is None else b"".join(kept)


def fingerprint(*parts: str) -> str:
    """Short stable hash of strings: the identity of an artefact's inputs."""
    return fingerprint_of(parts)


def fingerprint_of(parts: Iterable[str]) -> str:
    """`fingerprint` of strings that arrive one by one (a million paths need not be a list first)."""
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]
