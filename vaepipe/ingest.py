"""Stage 1: walk a folder, hash and check every file, write manifest.parquet.

A file that cannot be used is a manifest row with status="error" and the reason; the run goes on.
Unchanged files (same path, size and mtime as in the previous manifest) are not read again.
"""

from __future__ import annotations

import logging
import os
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
    n_reused: int


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


def inspect_file(root: Path, path: Path, max_pixels: int) -> dict:
    """One manifest row: hash and fully decode the file; any failure becomes status=error with the reason."""
    row = {"path": path.relative_to(root).as_posix(), "bytes": None, "mtime": None, "sha256": None,
           "width": None, "height": None, "mode": None, "status": "error", "error": None}
    try:
        if path.is_symlink():
            target = path.resolve()
            if not target.exists():
                raise ImageError("broken symlink")
            if not target.is_relative_to(root.resolve()):
                raise ImageError("symlink points outside the collection root (not followed)")
        st = path.stat()
        row["bytes"], row["mtime"] = st.st_size, st.st_mtime
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise ImageError(f"not an image file type ({path.suffix or 'no suffix'})")
        if st.st_size == 0:
            raise ImageError("empty file (0 bytes)")
        row["sha256"] = sha256_file(path)
        img = open_image(path, max_pixels)
        row["width"], row["height"] = img.size
        row["mode"] = img.mode
        row["status"] = "ok"
    except ImageError as e:
        row["error"] = str(e)
    except PermissionError:
        row["error"] = "permission denied"
    except FileNotFoundError:
        row["error"] = "file vanished while reading"
    except OSError as e:
        row["error"] = f"cannot read file ({e.strerror or e})"
    return row


def ingest(root: Path, manifest_path: Path, config: IngestConfig = IngestConfig()) -> IngestResult:
    root = Path(root).resolve()
    files = scan(root, config.include_hidden)
    previous = _previous_rows(manifest_path)
    rows: dict[str, dict] = {}
    todo: list[Path] = []
    for path in files:
        rel = path.relative_to(root).as_posix()
        old = previous.get(rel)
        if old is not None and old["status"] == "ok" and _unchanged(path, old):
            rows[rel] = old
        else:
            todo.append(path)

    progress = Progress("ingest", len(todo), unit="files")
    if config.workers > 1 and len(todo) > 256:
        with ProcessPoolExecutor(config.workers) as pool:
            results = pool.map(inspect_file, [root] * len(todo), todo, [config.max_pixels] * len(todo), chunksize=64)
            for row in results:
                rows[row["path"]] = row
                progress.update()
    else:
        for path in todo:
            row = inspect_file(root, path, config.max_pixels)
            rows[row["path"]] = row
            progress.update()
    progress.close()

    ordered = [rows[p.relative_to(root).as_posix()] for p in files]
    write_parquet(pa.Table.from_pylist(ordered, schema=MANIFEST_SCHEMA), manifest_path)
    n_ok = sum(r["status"] == "ok" for r in ordered)
    result = IngestResult(manifest_path, len(ordered), n_ok, len(ordered) - n_ok, len(files) - len(todo))
    log.info("ingest: %d files, %d ok, %d error, %d unchanged since last run",
             result.n_files, result.n_ok, result.n_error, result.n_reused)
    return result


def read_ok(manifest_path: Path) -> pa.Table:
    """The usable rows of a manifest, in manifest order."""
    table = pq.read_table(manifest_path, schema=MANIFEST_SCHEMA)
    return table.filter(pc.equal(table["status"], "ok"))


def _previous_rows(manifest_path: Path) -> dict[str, dict]:
    if not Path(manifest_path).exists():
        return {}
    try:
        return {r["path"]: r for r in pq.read_table(manifest_path, schema=MANIFEST_SCHEMA).to_pylist()}
    except (OSError, pa.ArrowInvalid) as e:
        log.warning("ingest: previous manifest unreadable (%s); re-reading every file", e)
        return {}


def _unchanged(path: Path, old: dict) -> bool:
    try:
        st = path.stat()
    except OSError:
        return False
    return st.st_size == old["bytes"] and st.st_mtime == old["mtime"]
