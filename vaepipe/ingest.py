"""Stage 1: walk a folder, hash and check every file, write manifest.parquet.

A file that cannot be used is a manifest row with status="error" and the reason; the run goes on.
Unchanged files (same path, size and mtime as in the previous manifest) are not read again.
"""

from __future__ import annotations

import logging
import os
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
from vaepipe.store import MANIFEST_SCHEMA, VaepipeError, sha256_file, write_parquet

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
    root = Path(root).resolve()
    manifest_path = Path(manifest_path)
    partial_path = manifest_path.with_suffix(".partial.parquet")  # progress of a run that was killed
    files = scan(root, config.include_hidden)
    if not files:
        raise VaepipeError(f"no files in {root} (hidden files are skipped unless include_hidden is set)")
    previous = _read_rows(manifest_path)
    known = {**previous, **_read_rows(partial_path)}
    rows: dict[str, dict] = {}
    todo: list[Path] = []
    for path in files:
        rel = relative_name(root, path)
        old = known.get(rel)
        if old is not None and old["status"] == "ok" and _unchanged(path, old):
            rows[rel] = old
        else:
            todo.append(path)
    n_reused = len(rows)

    progress = Progress("ingest", len(todo), unit="files")
    since_checkpoint = 0
    for row in _inspect_all(root, todo, config):
        rows[row["path"]] = row
        progress.update()
        since_checkpoint += 1
        if since_checkpoint >= config.checkpoint_every:
            write_parquet(pa.Table.from_pylist(list(rows.values()), schema=MANIFEST_SCHEMA), partial_path)
            log.info("ingest: checkpoint after %d of %d files", progress.done, len(todo))
            since_checkpoint = 0
    progress.close()

    ordered = [rows[relative_name(root, p)] for p in files]
    n_ok = sum(r["status"] == "ok" for r in ordered)
    by_kind = dict(Counter(error_kind(r["error"]) for r in ordered if r["status"] != "ok").most_common())
    if n_ok == 0:
        # Nothing to index: leave the workdir as it was rather than replace a good manifest with this one.
        partial_path.unlink(missing_ok=True)
        reasons = "; ".join(f"{kind}: {n}" for kind, n in by_kind.items())
        raise VaepipeError(f"no usable images in {root}: all {len(ordered)} files failed ({reasons})")
    write_parquet(pa.Table.from_pylist(ordered, schema=MANIFEST_SCHEMA), manifest_path)
    partial_path.unlink(missing_ok=True)
    result = IngestResult(manifest_path, len(ordered), n_ok, len(ordered) - n_ok, n_reused, by_kind,
                          **_changes(previous, ordered))
    log.info("ingest: %d files, %d ok, %d error; since the last run %d added, %d changed, %d removed, %d kept",
             result.n_files, result.n_ok, result.n_error, result.added, result.changed, result.removed, result.kept)
    return result


def _inspect_all(root: Path, paths: list[Path], config: IngestConfig) -> Iterator[dict]:
    if config.workers > 1 and len(paths) > 256:
        with ProcessPoolExecutor(config.workers) as pool:
            yield from pool.map(inspect_file, [root] * len(paths), paths, [config] * len(paths), chunksize=64)
    else:
        for path in paths:
            yield inspect_file(root, path, config)


def _changes(previous: dict[str, dict], now: list[dict]) -> dict[str, int]:
    """Usable images added, changed (same path, new content), removed and kept since the previous manifest."""
    before = {p: r["sha256"] for p, r in previous.items() if r["status"] == "ok"}
    after = {r["path"]: r["sha256"] for r in now if r["status"] == "ok"}
    both = before.keys() & after.keys()
    changed = sum(before[p] != after[p] for p in both)
    return {"added": len(after.keys() - before.keys()), "changed": changed,
            "removed": len(before.keys() - after.keys()), "kept": len(both) - changed}


def read_ok(manifest_path: Path) -> pa.Table:
    """The usable rows of a manifest, in manifest order."""
    table = pq.read_table(manifest_path, schema=MANIFEST_SCHEMA)
    return table.filter(pc.equal(table["status"], "ok"))


def _read_rows(manifest_path: Path) -> dict[str, dict]:
    """Rows of an earlier manifest by path; a damaged one is reported and ignored (its files are read again)."""
    if not Path(manifest_path).exists():
        return {}
    try:
        return {r["path"]: r for r in pq.read_table(manifest_path, schema=MANIFEST_SCHEMA).to_pylist()}
    except (OSError, ValueError, pa.ArrowException) as e:
        log.warning("ingest: %s is unreadable (%s); re-reading the files it listed", manifest_path, e)
        return {}


def _unchanged(path: Path, old: dict) -> bool:
    try:
        st = path.stat()
    except OSError:
        return False
    return st.st_size == old["bytes"] and st.st_mtime == old["mtime"]
