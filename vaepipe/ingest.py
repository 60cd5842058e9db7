"""Stage 1: walk a folder, hash and check every file, write manifest.parquet.

A file that cannot be used is a manifest row with status="error" and the reason; the run goes on. A file that is
plainly not an image by its name (notes.txt, index.json) is a row with status="skipped": not a failure.
Unchanged files (same path, size and mtime as in the previous manifest) are not read again.
"""

from __future__ import annotations

import fnmatch
import heapq
import json
import logging
import os
import shutil
import stat
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from itertools import islice
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from vaepipe.config import IngestConfig
from vaepipe.errors import ImageError
from vaepipe.images import IMAGE_SUFFIXES, inspect_image
from vaepipe.progress import Progress
from vaepipe.errors import VaepipeError
from vaepipe.store import (MANIFEST_SCHEMA, atomic_path, checked_row_groups, name_of, next_number, read_manifest,
                           sha256_and_bytes, upgrade_manifest, write_parquet)

log = logging.getLogger("vaepipe")

# Files up to this size are read once, hashed and checked from the same bytes: no second open and read, and no
# chance that a file written meanwhile is hashed as one content and checked as another.
READ_ONCE_BYTES = 1 << 20


@dataclass
class IngestResult:
    manifest: Path
    n_files: int
    n_ok: int
    n_error: int
    n_reused: int  # files not read again: same size and mtime as in the last manifest
    errors_by_kind: dict[str, int]  # e.g. {"corrupt or truncated image": 2, "empty file": 1}
    n_skipped: int = 0  # files that are plainly not images by their name (notes.txt, index.json): not failures
    added: int = 0  # usable images, compared with the previous manifest
    changed: int = 0
    removed: int = 0
    kept: int = 0


def walk(root: Path, include_hidden: bool = False, skip: Path | None = None,
         unlisted: list[str] | None = None) -> Iterator[str]:
    """The path of every file under root (as a string: ingest makes no Path of a file it has no use for), in the
    order of their relative '/'-separated names, one directory listed at a time.

    Sorting each directory's entries with a '/' after every sub-directory's name gives the order a sort of all the
    tree's relative names would, without holding the tree: a million files are not a million Paths in memory.
    Directories reached through symlinks are not entered; a directory that cannot be listed is reported and skipped;
    `skip` (a directory under root: the workdir, whose thumbnails and samples are not the collection's) is not
    entered; directories that could not be listed are appended to `unlisted`.
    """
    root = Path(root)
    if not root.is_dir():
        raise VaepipeError(f"image folder {root} does not exist or is not a directory")
    skip_dir = str(skip) if skip is not None else None
    stack = [_listing(str(root), include_hidden, unlisted)]
    while stack:
        entry = next(stack[-1], None)
        if entry is None:
            stack.pop()
        elif entry[1] is None:
            yield entry[0]
        elif entry[1] and entry[0] != skip_dir:
            stack.append(_listing(entry[0], include_hidden, unlisted))


def _listing(directory: str, include_hidden: bool, unlisted: list[str] | None = None
             ) -> Iterator[tuple[str, bool | None]]:
    """A directory's entries in walk order: (path, None) for a file, (path, True) for a directory to enter,
    (path, False) for a symlink to a directory, which is not entered.

    Files are held by name alone until they are yielded: ~75 bytes a file, where a (path, flags, name) tuple each
    took ~300 (a flat folder of 300,000 files: BENCHMARKS.md, Memory).
    """
    def is_dir(entry: os.DirEntry) -> bool:
        try:
            return entry.is_dir()  # follows symlinks: a link to a directory is not a file (and is not entered)
        except OSError:
            return False

    files: list[str] = []
    dirs: list[tuple[str, bool]] = []  # (name + "/", is a real directory)
    try:
        with os.scandir(directory) as it:
            for e in it:
                if include_hidden or not e.name.startswith("."):
                    if is_dir(e):
                        dirs.append((e.name + "/", not e.is_symlink()))
                    else:
                        files.append(e.name)
    except OSError as e:
        log.warning("ingest: cannot list %s (%s)", directory, e.strerror or e)
        if unlisted is not None:
            unlisted.append(directory)
        return
    files.sort()
    dirs.sort()
    prefix = os.path.join(directory, "")
    for name, enter in heapq.merge(((name, None) for name in files), dirs, key=lambda entry: entry[0]):
        yield prefix + name.rstrip("/"), enter


def _files(root: Path, config: IngestConfig, skip: Path | None, unlisted: list[str] | None = None) -> Iterator[str]:
    """walk(), less the files config.exclude names."""
    files = walk(root, config.include_hidden, skip, unlisted)
    if not config.exclude:
        return files
    return (p for p in files if not any(fnmatch.fnmatchcase(relative_name(root, p), g) for g in config.exclude))


def scan(root: Path, include_hidden: bool = False) -> list[Path]:
    """Every file under root, in walk order (for small folders such as a query folder; ingest streams walk())."""
    return [Path(p) for p in walk(root, include_hidden)]


def relative_name(root: Path, path: str) -> str:
    """The manifest's name for a file that `walk(root)` yielded: relative, '/'-separated, reversible (store.name_of)."""
    return name_of(path[len(os.path.join(root, "")):])


def inspect_file(root: Path, path: str, config: IngestConfig) -> dict:
    """One manifest row for a file that `walk(root)` yielded: hash and decode the whole file (`inspect_image`); any
    failure becomes status=error with the reason (status=skipped for a file that is not an image by its name)."""
    row = {"path": relative_name(root, path), "bytes": None, "mtime": None, "sha256": None,
           "width": None, "height": None, "mode": None, "status": "error", "error": None}
    try:
        name = os.path.basename(path)
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            target = Path(path).resolve()
            if not target.exists():
                raise ImageError("broken symlink: its target does not exist")
            if not config.follow_symlinks_outside and not target.is_relative_to(Path(root).resolve()):
                raise ImageError("symlink outside the collection root: not followed (see follow_symlinks_outside)")
            st = os.stat(path)
        row["bytes"], row["mtime"] = st.st_size, st.st_mtime_ns
        suffix = os.path.splitext(name)[1]
        if suffix.lower() not in IMAGE_SUFFIXES:  # a file of another kind beside the images: skipped, not failed
            row["status"] = "skipped"
            row["error"] = f"not an image: file type {suffix if len(suffix) > 1 else '(no suffix)'} is not read"
            return row
        if st.st_size == 0:
            raise ImageError("empty file: 0 bytes")
        row["sha256"], data = sha256_and_bytes(path, keep_up_to=READ_ONCE_BYTES)
        row["width"], row["height"], row["mode"] = inspect_image(path, config.max_pixels, data)
        row["status"] = "ok"
    except ImageError as e:
        row["error"] = str(e)
    except PermissionError:
        row["error"] = "permission denied: the file cannot be read by this user"
    except FileNotFoundError:
        row["error"] = "file vanished: deleted or moved while the folder was being read"
    except OSError as e:
        row["error"] = f"cannot read file: {e.strerror or e}"
    except RuntimeError as e:  # Path.resolve on a symlink loop
        row["error"] = f"symlink loop: {e}"
    return row


def error_kind(error: str) -> str:
    return error.split(":", 1)[0]


def ingest(root: Path, manifest_path: Path, config: IngestConfig = IngestConfig()) -> IngestResult:
    """Write manifest.parquet for every file under root, in path order.

    Rows go to disk in chunks of `checkpoint_every` files (manifest.partial/chunk-*.parquet) as they are made, so a
    killed run resumes from its last chunk. Files are walked, matched with earlier rows and counted as added or
    changed a chunk at a time: memory holds one chunk of rows and one directory's listing, whatever the folder.
    """
    root = Path(root).resolve()
    manifest_path = Path(manifest_path)
    chunks_dir = manifest_path.with_name(manifest_path.stem + ".partial")
    workdir = manifest_path.parent.resolve()
    skip = workdir if workdir != root and workdir.is_relative_to(root) else None
    if skip is not None:
        log.warning("ingest: the workdir %s lies inside the image folder: its files (thumbnails, samples) are not indexed",
                    workdir)
    n_listed = sum(1 for _ in _files(root, config, skip))  # for progress; a listing costs little next to reading
    if not n_listed:
        raise VaepipeError(f"no files in {root} (hidden files are skipped unless include_hidden is set)")
    settings = rules_of(config)
    earlier = _Earlier(manifest_path, chunks_dir, settings)
    # Numbered after a killed run's chunks: those are read range by range while this run writes its own.
    first_chunk = next_number(chunks_dir, "chunk")

    progress = Progress("ingest", n_listed, unit="files")
    n_files, n_ok, n_skipped, n_reused, by_kind, changes, written = 0, 0, 0, 0, Counter(), Counter(), []
    pool = ProcessPoolExecutor(config.workers) if config.workers > 1 and n_listed > 256 else None
    unlisted: list[str] = []
    files = _files(root, config, skip, unlisted)
    try:
        while chunk := list(islice(files, config.checkpoint_every)):
            names = [relative_name(root, p) for p in chunk]
            previous, known = earlier.rows_up_to(max(names))
            reuse = [known.unchanged_row(name, path) for name, path in zip(names, chunk)]
            todo = [path for path, row in zip(chunk, reuse) if row is None]
            new_rows = list(_inspect_all(root, todo, config, pool))
            table = _in_order(known.table.take(pa.array([r for r in reuse if r is not None], pa.int64())), new_rows, names)
            n_files += len(chunk)
            n_reused += len(chunk) - len(todo)
            status = table["status"].to_pylist()
            n_ok += status.count("ok")
            n_skipped += status.count("skipped")
            by_kind.update(error_kind(e) for e, st in zip(table["error"].to_pylist(), status) if st == "error")
            changes.update(_changes(previous, table))
            written.append(write_parquet(table.replace_schema_metadata(settings),
                                         chunks_dir / f"chunk-{first_chunk + len(written):05d}.parquet"))
            progress.update(len(chunk))
            if n_files < n_listed:
                log.info("ingest: checkpoint after %d of %d files", n_files, n_listed)
    finally:
        if pool is not None:
            pool.shutdown()
    progress.close()
    changes.update(_changes(earlier.rows_up_to(None)[0], MANIFEST_SCHEMA.empty_table()))  # after the last file: removed
    kept = _rows_under(earlier.previous, [relative_name(root, d) + "/" for d in unlisted])
    if kept.num_rows:
        # A folder that could not be listed this time (permissions, a flaky mount) is not a folder emptied: its
        # files keep their last rows rather than leave the index quietly.
        log.warning("ingest: %d files under %d folders that could not be listed keep their rows from the last run",
                    kept.num_rows, len(unlisted))
        n_kept_ok = pc.sum(pc.equal(kept["status"], "ok")).as_py() or 0
        changes["removed"] -= n_kept_ok
        changes["kept"] += n_kept_ok
        n_files, n_ok = n_files + kept.num_rows, n_ok + n_kept_ok
        n_skipped += pc.sum(pc.equal(kept["status"], "skipped")).as_py() or 0
        by_kind.update(error_kind(e) for e, st in zip(kept["error"].to_pylist(), kept["status"].to_pylist()) if st == "error")

    by_kind = dict(by_kind.most_common())
    if n_ok == 0:
        # Nothing to index: leave the workdir as it was rather than replace a good manifest with this one.
        shutil.rmtree(chunks_dir, ignore_errors=True)
        reasons = "; ".join(f"{kind}: {n}" for kind, n in by_kind.items())
        raise VaepipeError(f"no usable images in {root}: all {n_files} files failed ({reasons})")
    with atomic_path(manifest_path) as tmp, pq.ParquetWriter(tmp, MANIFEST_SCHEMA.with_metadata(settings)) as writer:
        if kept.num_rows:  # rare: merged into path order in memory
            merged = pa.concat_tables([pq.read_table(part, schema=MANIFEST_SCHEMA) for part in written] + [kept])
            writer.write_table(merged.sort_by("path"), row_group_size=config.checkpoint_every)
        for part in written if not kept.num_rows else []:  # only this run's chunks: a longer killed run may have left more
            writer.write_table(pq.read_table(part, schema=MANIFEST_SCHEMA))
    shutil.rmtree(chunks_dir, ignore_errors=True)
    result = IngestResult(manifest_path, n_files, n_ok, n_files - n_ok - n_skipped, n_reused, by_kind, n_skipped,
                          **{k: changes[k] for k in ("added", "changed", "removed", "kept")})
    log.info("ingest: %d files, %d ok, %d error, %d skipped (not images); since the last run %d added, %d changed, "
             "%d removed, %d kept", result.n_files, result.n_ok, result.n_error, result.n_skipped, result.added,
             result.changed, result.removed, result.kept)
    return result


def rules_of(config: IngestConfig) -> dict[bytes, bytes]:
    """The settings that decide whether a file is usable, as Parquet metadata of the rows they decided: a row is
    reused only under the same rules, so that an incremental run gives what a rebuild with its settings gives."""
    return {b"vaepipe.ingest_rules": json.dumps({"max_pixels": config.max_pixels,
                                                 "follow_symlinks_outside": config.follow_symlinks_outside},
                                                sort_keys=True).encode()}


class _Earlier:
    """Rows of the previous manifest and of a killed run's chunks, read one range of paths at a time.

    Chunks of files come in path order, so each asks for the rows after the previous chunk's last name up to its
    own; Arrow skips the row groups outside that range on their statistics. A file that does not read as a
    manifest is reported once and not used (its files are read again). Rows decided under other rules (rules_of)
    count for what changed, and are not reused.
    """

    def __init__(self, manifest_path: Path, chunks_dir: Path, rules: dict[bytes, bytes]):
        self.previous = _dataset([manifest_path])
        self.killed = _dataset([p for p in sorted(Path(chunks_dir).glob("chunk-*.parquet")) if _rules(p) == rules])
        self.reuse_previous = self.previous is not None and _rules(manifest_path) == rules
        if self.previous is not None and not self.reuse_previous:
            log.info("ingest: the rules for usable files changed since the last run (%s); every file is read again",
                     rules[b"vaepipe.ingest_rules"].decode())
        self.after: str | None = None

    def rows_up_to(self, last: str | None) -> tuple[pa.Table, _Known]:
        """(previous manifest's rows, known rows to reuse) for paths after the last call's `last` up to this one's.

        `last` None: every row that is left. Known rows are the previous manifest's and the killed run's; where
        both have a path, the killed run's (later) row wins.
        """
        if last is not None and self.after is not None and last <= self.after:
            return MANIFEST_SCHEMA.empty_table(), _Known(MANIFEST_SCHEMA.empty_table())  # out-of-order names: read again
        in_range = None if self.after is None else pc.field("path") > self.after
        if last is not None:
            in_range = pc.field("path") <= last if in_range is None else in_range & (pc.field("path") <= last)
        self.after = last
        previous, killed = (d.to_table(filter=in_range) if d is not None else MANIFEST_SCHEMA.empty_table()
                            for d in (self.previous, self.killed))
        return previous, _Known(pa.concat_tables([previous, killed] if self.reuse_previous else [killed]))


def _rules(path: Path) -> dict[bytes, bytes] | None:
    try:
        metadata = pq.read_schema(path).metadata or {}
    except (OSError, pa.ArrowException):
        return None
    return {b"vaepipe.ingest_rules": metadata[b"vaepipe.ingest_rules"]} if b"vaepipe.ingest_rules" in metadata else None


def _rows_under(previous: ds.Dataset | None, prefixes: list[str]) -> pa.Table:
    """The previous manifest's rows under any of these folders ('a/b/')."""
    if previous is None or not prefixes:
        return MANIFEST_SCHEMA.empty_table()
    under = None
    for prefix in prefixes:
        match = pc.starts_with(pc.field("path"), prefix)
        under = match if under is None else under | match
    return previous.to_table(filter=under)


def _dataset(paths: list[Path]) -> ds.Dataset | None:
    """The manifest files among paths that read whole with the manifest's schema, as one dataset (in this order)."""
    good = []
    for path in paths:
        if not path.exists():
            continue
        upgrade_manifest(path)
        try:
            for _ in checked_row_groups(path, MANIFEST_SCHEMA):  # a damaged page shows now, not halfway through
                pass
            good.append(str(path))
        except (OSError, ValueError, pa.ArrowException) as e:
            log.warning("ingest: %s is unreadable (%s); re-reading the files it listed", path, e)
    return ds.dataset(good, schema=MANIFEST_SCHEMA, format="parquet") if good else None


class _Known:
    """Earlier rows of one range of paths, looked up by path (the last row of a path wins)."""

    def __init__(self, table: pa.Table):
        self.table = table
        self.row = {path: i for i, path in enumerate(table["path"].to_pylist())}
        self.ok = pc.equal(table["status"], "ok").to_numpy(zero_copy_only=False)
        self.bytes = table["bytes"].to_numpy(zero_copy_only=False)
        self.mtime_ns = pc.fill_null(table["mtime"].cast(pa.int64()), 0).to_numpy()  # null: a file that failed

    def unchanged_row(self, name: str, path: str) -> int | None:
        """The row to reuse for this file: it was usable and has the same size and mtime now."""
        i = self.row.get(name)
        if i is None or not self.ok[i]:
            return None
        try:
            st = os.stat(path)
        except OSError:
            return None
        if st.st_size != self.bytes[i]:
            return None
        # The float comparison is the one made before mtime was kept in nanoseconds: rows of an upgraded manifest
        # hold the float's value, so their files are not all read again once.
        was = int(self.mtime_ns[i])
        return i if st.st_mtime_ns == was or st.st_mtime == was / 1_000_000_000 else None


def _in_order(reused: pa.Table, new_rows: list[dict], names: list[str]) -> pa.Table:
    """Reused and new rows of one chunk, in the chunk's path order."""
    table = pa.concat_tables([reused, pa.Table.from_pylist(new_rows, schema=MANIFEST_SCHEMA)])
    position = {name: i for i, name in enumerate(names)}
    order = sorted(range(table.num_rows), key=lambda i, paths=table["path"].to_pylist(): position[paths[i]])
    return table.take(pa.array(order, pa.int64()))


def _inspect_all(root: Path, paths: list[str], config: IngestConfig, pool: ProcessPoolExecutor | None) -> Iterator[dict]:
    inspect = partial(inspect_file, root, config=config)  # root and config go to a worker once a chunk, not once a file
    if pool is not None and len(paths) > 256:
        yield from pool.map(inspect, paths, chunksize=64)
    else:
        yield from map(inspect, paths)


def _changes(before: pa.Table, after: pa.Table) -> Counter:
    """Usable images added, changed (same path, new content), removed and kept between two sets of manifest rows."""
    def usable(t: pa.Table) -> dict[str, str]:
        ok = t.filter(pc.equal(t["status"], "ok"))
        return dict(zip(ok["path"].to_pylist(), ok["sha256"].to_pylist()))

    was, now = usable(before), usable(after)
    kept = sum(1 for path, sha in now.items() if was.get(path) == sha)
    changed = sum(1 for path, sha in now.items() if path in was and was[path] != sha)
    return Counter(added=len(now) - kept - changed, changed=changed, removed=len(was.keys() - now.keys()), kept=kept)


def read_ok(manifest_path: Path) -> pa.Table:
    """The usable rows of a manifest, in manifest order."""
    table = read_manifest(manifest_path)
    return table.filter(pc.equal(table["status"], "ok"))
