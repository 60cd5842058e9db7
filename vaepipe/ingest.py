"""Stage 1: walk a folder, hash and check every file, write manifest.parquet.

A file that cannot be used is a manifest row with status="error" and the reason; the run goes on.
Unchanged files (same path, size and mtime as in the previous manifest) are not read again.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
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
    errors_by_kind: dict[str, int]  # e.g. {"corrupt or truncated image": 2, "empty file": 1}


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
    files = scan(root, config.include_hidden)
    previous = _previous_rows(manifest_path)
    rows: dict[str, dict] = {}
    todo: list[Path] = []
    if not files:
        raise VaepipeError(f"no files in {root} (hidden files are skipped unless include_hidden is set)")
    for path in files:
        rel = relative_name(root, path)
        old = previous.get(rel)
        if old is not None and old["status"] == "ok" and _unchanged(path, old):
            rows[rel] = old
        else:
            todo.append(path)

    progress = Progress("ingest", len(todo), unit="files")
    if config.workers > 1 and len(todo) > 256:
        with ProcessPoolExecutor(config.workers) as pool:
            results = pool.map(inspect_file, [root] * len(todo), todo, [config] * len(todo), chunksize=64)
            for row in results:
                rows[row["path"]] = row
                progress.update()
    else:
        for path in todo:
            row = inspect_file(root, path, config)
            rows[row["path"]] = row
            progress.update()
    progress.close()

    ordered = [rows[relative_name(root, p)] for p in files]
    n_ok = sum(r["status"] == "ok" for r in ordered)
    by_kind = dict(Counter(error_kind(r["error"]) for r in ordered if r["status"] != "ok").most_common())
    if n_ok == 0:
        # Nothing to index: leave the workdir as it was rather than replace a good manifest with this one.
        reasons = "; ".join(f"{kind}: {n}" for kind, n in by_kind.items())
        raise VaepipeError(f"no usable images in {root}: all {len(ordered)} files failed ({reasons})")
    write_parquet(pa.Table.from_pylist(ordered, schema=MANIFEST_SCHEMA), manifest_path)
    result = IngestResult(manifest_path, len(ordered), n_ok, len(ordered) - n_ok, len(files) - len(todo), by_kind)
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
