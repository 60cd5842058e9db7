"""Stage 1: walk a folder, hash and check every file, write manifest.parquet.

A file that cannot be used is a manifest row with status="error" and the reason; the run goes on.
Unchanged files (same path, size and mtime as in the previous manifest) are not read again.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from vaepipe.config import IngestConfig
from vaepipe.images import IMAGE_SUFFIXES, ImageError, open_image
from vaepipe.progress import Progress
from vaepipe.store import MANIFEST_SCHEMA, VaepipeError, atomic_path, sha256_file, write_parquet

log = logging.getLogger("vaepipe")


@dataclass
class IngestResult:
    manifest: Path
    n_files: int
    n_ok: int
    n_error: int
    n_reused: int  # files not read again: same size and mtime as in the last manifest
    errors_by_kind: dict[str, int]  # e.g. {"corrupt or truncated image": 2, "empty file": 1}
    added: int = 0  # usable images, compared with the previous manifest
    changed: int = 0
    removed: int = 0
    kept: int = 0


def scan(root: Path, include_hidden: bool = False) -> list[Path]:
    """Every file under root, sorted; directories reached through symlinks are not entered."""
    root = Path(root)
    if not root.is_dir():
        raise VaepipeError(f"image folder {root} does not exist or is not a directory")
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        if not include_hidden:
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            filenames = [f for f in filenames if not f.startswith(".")]
        dirnames.sort()
        found.extend(Path(dirpath) / f for f in filenames)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def relative_name(root: Path, path: Path) -> str:
    """The manifest's name for a file: relative, '/'-separated; bytes that are not UTF-8 shown as \\xNN."""
    return os.fsencode(path.relative_to(root).as_posix()).decode("utf-8", "backslashreplace")


def inspect_file(root: Path, path: Path, config: IngestConfig) -> dict:
    """One manifest row: hash and fully decode the file; any failure becomes status=error with the reason."""
    row = {"path": relative_name(root, path), "bytes": None, "mtime": None, "sha256": None,
           "width": None, "height": None, "mode": None, "status": "error", "error": None}
    try:
        if os.fsencode(path.name).decode("utf-8", "replace") != path.name:
            # Arrow strings must be UTF-8; a lossy name could not be opened again from the manifest.
            raise ImageError("file name not valid UTF-8: rename the file to index it")
        if path.is_symlink():
            target = path.resolve()
            if not target.exists():
                raise ImageError("broken symlink: its target does not exist")
            if not config.follow_symlinks_outside and not target.is_relative_to(Path(root).resolve()):
                raise ImageError("symlink outside the collection root: not followed (see follow_symlinks_outside)")
        st = path.stat()
        row["bytes"], row["mtime"] = st.st_size, st.st_mtime
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise ImageError(f"not an image: file type {path.suffix or '(no suffix)'} is not read")
        if st.st_size == 0:
            raise ImageError("empty file: 0 bytes")
        row["sha256"] = sha256_file(path)
        img = open_image(path, config.max_pixels)
        row["width"], row["height"] = img.size
        row["mode"] = img.mode
        row["status"] = "ok"
    except ImageError as e:
        row["error"] = str(e)
    except PermissionError:
        row["error"] = "permission denied: the file cannot be read by this user"
    except FileNotFoundError:
        row["error"] = "file vanished: deleted or moved while the folder was being read"
    except OSError as e:
        row["error"] = f"cannot read file: {e.strerror or e}"
    return row


def error_kind(error: str) -> str:
    return error.split(":", 1)[0]


def ingest(root: Path, manifest_path: Path, config: IngestConfig = IngestConfig()) -> IngestResult:
    """Write manifest.parquet for every file under root, in path order.

    Rows go to disk in chunks of `checkpoint_every` files (manifest.partial/chunk-*.parquet) as they are made, so a
    killed run resumes from its last chunk and memory holds one chunk of rows, not one per file of the folder.
    """
    root = Path(root).resolve()
    manifest_path = Path(manifest_path)
    chunks_dir = manifest_path.with_name(manifest_path.stem + ".partial")
    files = scan(root, config.include_hidden)
    if not files:
        raise VaepipeError(f"no files in {root} (hidden files are skipped unless include_hidden is set)")
    previous = _read_manifest(manifest_path)
    known = _Known(pa.concat_tables([previous, *_read_chunks(chunks_dir)]))  # later rows (the killed run's) win

    progress = Progress("ingest", len(files), unit="files")
    n_ok, n_reused, by_kind, written = 0, 0, Counter(), []
    pool = ProcessPoolExecutor(config.workers) if config.workers > 1 and len(files) > 256 else None
    try:
        for start in range(0, len(files), config.checkpoint_every):
            chunk = files[start : start + config.checkpoint_every]
            names = [relative_name(root, p) for p in chunk]
            reuse = [known.unchanged_row(name, path) for name, path in zip(names, chunk)]
            todo = [path for path, row in zip(chunk, reuse) if row is None]
            new_rows = list(_inspect_all(root, todo, config, pool))
            table = _in_order(known.table.take(pa.array([r for r in reuse if r is not None], pa.int64())), new_rows, names)
            n_reused += len(chunk) - len(todo)
            status = table["status"].to_pylist()
            n_ok += status.count("ok")
            by_kind.update(error_kind(e) for e, st in zip(table["error"].to_pylist(), status) if st != "ok")
            written.append(write_parquet(table, chunks_dir / f"chunk-{len(written):05d}.parquet"))
            progress.update(len(chunk))
            if start + len(chunk) < len(files):
                log.info("ingest: checkpoint after %d of %d files", start + len(chunk), len(files))
    finally:
        if pool is not None:
            pool.shutdown()
    progress.close()

    by_kind = dict(by_kind.most_common())
    if n_ok == 0:
        # Nothing to index: leave the workdir as it was rather than replace a good manifest with this one.
        shutil.rmtree(chunks_dir, ignore_errors=True)
        reasons = "; ".join(f"{kind}: {n}" for kind, n in by_kind.items())
        raise VaepipeError(f"no usable images in {root}: all {len(files)} files failed ({reasons})")
    with atomic_path(manifest_path) as tmp, pq.ParquetWriter(tmp, MANIFEST_SCHEMA) as writer:
        for part in written:  # only this run's chunks: a longer killed run may have left more
            writer.write_table(pq.read_table(part, schema=MANIFEST_SCHEMA))
    shutil.rmtree(chunks_dir, ignore_errors=True)
    result = IngestResult(manifest_path, len(files), n_ok, len(files) - n_ok, n_reused, by_kind,
                          **_changes(previous, manifest_path, n_ok))
    log.info("ingest: %d files, %d ok, %d error; since the last run %d added, %d changed, %d removed, %d kept",
             result.n_files, result.n_ok, result.n_error, result.added, result.changed, result.removed, result.kept)
    return result


class _Known:
    """Rows of the previous manifest and of a killed run's chunks, looked up by path (the last row of a path wins)."""

    def __init__(self, table: pa.Table):
        self.table = table
        self.row = {path: i for i, path in enumerate(table["path"].to_pylist())}
        # numpy arrays, not a Python object per row: at a million files those objects would be the memory peak.
        self.ok = pc.equal(table["status"], "ok").to_numpy(zero_copy_only=False)
        self.bytes = table["bytes"].to_numpy(zero_copy_only=False)
        self.mtime = table["mtime"].to_numpy(zero_copy_only=False)

    def unchanged_row(self, name: str, path: Path) -> int | None:
        """The row to reuse for this file: it was usable and has the same size and mtime now."""
        i = self.row.get(name)
        if i is None or not self.ok[i]:
            return None
        try:
            st = path.stat()
        except OSError:
            return None
        return i if st.st_size == self.bytes[i] and st.st_mtime == self.mtime[i] else None


def _in_order(reused: pa.Table, new_rows: list[dict], names: list[str]) -> pa.Table:
    """Reused and new rows of one chunk, in the chunk's path order."""
    table = pa.concat_tables([reused, pa.Table.from_pylist(new_rows, schema=MANIFEST_SCHEMA)])
    position = {name: i for i, name in enumerate(names)}
    order = sorted(range(table.num_rows), key=lambda i, paths=table["path"].to_pylist(): position[paths[i]])
    return table.take(pa.array(order, pa.int64()))


def _inspect_all(root: Path, paths: list[Path], config: IngestConfig, pool: ProcessPoolExecutor | None) -> Iterator[dict]:
    if pool is not None and len(paths) > 256:
        yield from pool.map(inspect_file, [root] * len(paths), paths, [config] * len(paths), chunksize=64)
    else:
        for path in paths:
            yield inspect_file(root, path, config)


def _changes(previous: pa.Table, manifest_path: Path, n_ok: int) -> dict[str, int]:
    """Usable images added, changed (same path, new content), removed and kept since the previous manifest."""
    if previous.num_rows == 0:  # a first run: everything usable is new; no need to read the manifest back
        return {"added": n_ok, "changed": 0, "removed": 0, "kept": 0}
    now = pq.read_table(manifest_path, columns=["path", "sha256", "status"])

    def usable(t: pa.Table, sha: str) -> pa.Table:
        return t.filter(pc.equal(t["status"], "ok")).select(["path", "sha256"]).rename_columns(["path", sha])

    both = usable(previous, "before").join(usable(now, "after"), "path", join_type="full outer")
    added = pc.sum(pc.is_null(both["before"])).as_py() or 0
    removed = pc.sum(pc.is_null(both["after"])).as_py() or 0
    changed = pc.sum(pc.not_equal(both["before"], both["after"])).as_py() or 0  # null where one side is missing
    return {"added": added, "changed": changed, "removed": removed, "kept": both.num_rows - added - removed - changed}


def read_ok(manifest_path: Path) -> pa.Table:
    """The usable rows of a manifest, in manifest order."""
    table = pq.read_table(manifest_path, schema=MANIFEST_SCHEMA)
    return table.filter(pc.equal(table["status"], "ok"))


def _read_manifest(manifest_path: Path) -> pa.Table:
    """An earlier manifest; a damaged one is reported and treated as empty (its files are read again)."""
    if not Path(manifest_path).exists():
        return MANIFEST_SCHEMA.empty_table()
    try:
        return pq.read_table(manifest_path, schema=MANIFEST_SCHEMA)
    except (OSError, ValueError, pa.ArrowException) as e:
        log.warning("ingest: %s is unreadable (%s); re-reading the files it listed", manifest_path, e)
        return MANIFEST_SCHEMA.empty_table()


def _read_chunks(chunks_dir: Path) -> list[pa.Table]:
    """The chunks a killed run left; a damaged one costs the files it held, nothing else."""
    return [t for t in (_read_manifest(p) for p in sorted(Path(chunks_dir).glob("chunk-*.parquet"))) if t.num_rows]
