"""Acting on duplicate groups: which file of each group to keep, and moving or linking the others away, undoably.

  plan(workdir)                    one row per file in a duplicate group of the latest `query --all` run: its group,
                                   whether it is the keeper, the keeper's path and the similarity to it (as
                                   stored, or through an edited view where that is closer, as the groups join them)
  write_plan(plan, run_dir)        duplicates-plan.parquet, .csv and .json beside the run's duplicates.parquet
  act(workdir, plan, action, ...)  move the others to a quarantine folder (keeping their relative paths), or replace
                                   them with hard or symbolic links to the keeper; a dry run unless apply=True
  undo(log)                        put back what an applied action changed, from its log

The keeper of a group is the file with the most pixels, then the largest file, then the shortest path (then the
first in path order): the copy a person would keep is usually the original, larger and less compressed.

Nothing is ever deleted. A file is only acted on if its content is still what was indexed (sha256 checked just
before); a replaced file is first moved into the action's own folder under the workdir, so undo can put it back.
Every action is appended to a log (JSON lines, flushed as it goes) before the next one starts, so a killed run
can be undone as far as it got.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from vaepipe.detail import Signatures
from vaepipe.index import SearchIndex
from vaepipe.model import default_device, load_checkpoint
from vaepipe.errors import VaepipeError
from vaepipe.store import DUPLICATES_FILE, Workdir, file_path, sha256_file, write_json, write_parquet
from vaepipe.views import ViewCache, seen_similarity, uses_views

log = logging.getLogger("vaepipe")

PLAN_SCHEMA = pa.schema([
    ("group", pa.int32()), ("kind", pa.string()), ("path", pa.string()), ("sha256", pa.string()),
    ("keep", pa.bool_()), ("keeper", pa.string()), ("similarity_to_keeper", pa.float32()),
    ("pixels_to_keeper", pa.float32()),
    ("width", pa.int32()), ("height", pa.int32()), ("bytes", pa.int64()),
])
ACTIONS = ("move", "hardlink", "symlink")


@dataclass
class ActionResult:
    action: str
    applied: bool
    done: list[tuple[str, str]] = field(default_factory=list)  # (path, what became of it)
    refused: list[tuple[str, str]] = field(default_factory=list)  # (path, why)
    log: Path | None = None  # the undo log, when applied


def latest_run_with_duplicates(workdir: Workdir) -> Path:
    runs = sorted((p for p in workdir.runs_dir.glob("*") if (p / DUPLICATES_FILE).exists()),
                  key=lambda p: p.name)
    if not runs:
        raise VaepipeError(f"no duplicate groups in {workdir.root}: run `vaepipe query {workdir.root} --all` first")
    return runs[-1]


def plan(workdir: Workdir, run_dir: Path | None = None) -> pa.Table:
    """The keeper and the others of every duplicate group of a run (default: the latest with groups)."""
    run_dir = Path(run_dir) if run_dir else latest_run_with_duplicates(workdir)
    groups = pq.read_table(run_dir / DUPLICATES_FILE)
    manifest = pq.read_table(workdir.manifest, columns=["path", "width", "height", "bytes"])
    facts = {p: (w or 0, h or 0, b or 0) for p, w, h, b in zip(*(manifest[c].to_pylist() for c in manifest.column_names))}
    collection = workdir.read_collection()
    index = SearchIndex.open(workdir.index_dir(collection["model_id"]))
    model = load_checkpoint(workdir.model_file(collection["model_id"]), default_device())
    row_of = {p: i for i, p in enumerate(index.ids["path"].to_pylist())}
    rows = []
    for gid in sorted(set(groups["group"].to_pylist())):
        members = groups.filter(pc.equal(groups["group"], gid)).to_pylist()
        for m in members:
            m["width"], m["height"], m["bytes"] = facts.get(m["path"], (0, 0, 0))
        keeper = min(members, key=lambda m: (-m["width"] * m["height"], -m["bytes"], len(m["path"]), m["path"]))
        sims = index.pair_similarity(np.asarray([row_of[m["path"]] for m in members]),
                                     np.full(len(members), row_of[keeper["path"]]))
        for m, sim in zip(members, sims):
            rows.append({"group": gid, "kind": m["kind"], "path": m["path"], "sha256": m["sha256"],
                         "keep": m is keeper, "keeper": keeper["path"], "similarity_to_keeper": float(sim),
                         "pixels_to_keeper": None,
                         "width": m["width"], "height": m["height"], "bytes": m["bytes"]})
    if uses_views(model, index):  # near groups also join pairs through edited views: say how alike they are so
        near = [i for i, r in enumerate(rows) if r["kind"] == "near" and not r["keep"]]
        seen = seen_similarity(index, model, Path(collection["image_root"]),
                               np.asarray([row_of[rows[i]["path"]] for i in near], np.int64),
                               np.asarray([row_of[rows[i]["keeper"]] for i in near], np.int64),
                               ViewCache(workdir.views_dir(collection["model_id"])))
        for i, sim in zip(near, seen):
            rows[i]["similarity_to_keeper"] = max(rows[i]["similarity_to_keeper"], float(sim))
        # How well the pixels follow the keeper's (detail.correlation): the evidence for a member that the pixel
        # check joined, whose code may be far less alike.
        a = np.asarray([row_of[r["path"]] for r in rows], np.int64)
        b = np.asarray([row_of[r["keeper"]] for r in rows], np.int64)
        signatures = Signatures.of(index, Path(collection["image_root"]), np.unique(np.concatenate([a, b])),
                                   ViewCache(workdir.views_dir(collection["model_id"])))
        for r, corr in zip(rows, signatures.correlation(a, b) if len(rows) else []):
            r["pixels_to_keeper"] = float(corr) if np.isfinite(corr) else None
    return pa.Table.from_pylist(rows, schema=PLAN_SCHEMA)


def write_plan(table: pa.Table, run_dir: Path) -> list[Path]:
    """The plan as Parquet, CSV and JSON (a list of groups, each with its keeper and the others)."""
    import pyarrow.csv as pacsv

    out = [write_parquet(table, run_dir / "duplicates-plan.parquet")]
    csv = run_dir / "duplicates-plan.csv"
    pacsv.write_csv(table, csv)
    out.append(csv)
    groups: dict[int, dict] = {}
    for r in table.to_pylist():
        g = groups.setdefault(r["group"], {"group": r["group"], "kind": r["kind"], "keep": r["keeper"], "others": []})
        if not r["keep"]:
            g["others"].append({"path": r["path"], "similarity_to_keeper": round(r["similarity_to_keeper"], 6),
                                "pixels_to_keeper": None if r["pixels_to_keeper"] is None
                                else round(r["pixels_to_keeper"], 6)})
    out.append(write_json(list(groups.values()), run_dir / "duplicates-plan.json"))
    return out


def act(workdir: Workdir, table: pa.Table, action: str, quarantine: Path | None = None, apply: bool = False
        ) -> ActionResult:
    """Move the files that are not their group's keeper to `quarantine` (action "move"), or replace them with links
    to the keeper ("hardlink", "symlink"). A dry run (the default) checks every file and reports what it would do."""
    if action not in ACTIONS:
        raise VaepipeError(f"unknown action {action!r}: use one of {', '.join(ACTIONS)}")
    root = Path(workdir.read_collection()["image_root"])
    if action == "move":
        if quarantine is None:
            raise VaepipeError("moving needs a quarantine folder to move the files to")
        quarantine = Path(quarantine).resolve()
        if quarantine.is_relative_to(root.resolve()):
            raise VaepipeError(f"the quarantine folder {quarantine} lies inside the collection: a re-index would read it")
    result = ActionResult(action, apply)
    sha_of = dict(zip(table["path"].to_pylist(), table["sha256"].to_pylist()))
    stamp = f"{time.strftime('%Y%m%d-%H%M%S')}-{action}-{os.urandom(2).hex()}"
    backup = workdir.actions_dir / stamp
    log_file = None
    if apply:
        backup.mkdir(parents=True)
        result.log = backup / "actions.jsonl"
        log_file = open(result.log, "a")
    try:
        for r in table.filter(pc.invert(table["keep"])).to_pylist():
            if r["kind"] == "links":
                result.refused.append((r["path"], "already the same file as the keeper (a link)"))
                continue
            src = Path(file_path(root, r["path"]))
            keeper = Path(file_path(root, r["keeper"]))
            why = _refusal(src, r["sha256"]) or (_refusal(keeper, sha_of[r["keeper"]]) if action != "move" else None)
            if why:
                result.refused.append((r["path"], why))
                continue
            dest = quarantine / Path(file_path("", r["path"])) if action == "move" else backup / "originals" / Path(file_path("", r["path"]))
            if dest.exists() or dest.is_symlink():
                result.refused.append((r["path"], f"{dest} already exists"))
                continue
            if apply:
                # Logged before the file is touched: an action killed halfway is still in the log, for undo.
                log_file.write(json.dumps({"action": action, "path": str(src), "moved_to": str(dest), "keeper": str(keeper),
                                           "sha256": r["sha256"]}) + "\n")
                log_file.flush()
                os.fsync(log_file.fileno())
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(src, dest)
                try:
                    if action == "hardlink":
                        os.link(keeper, src)
                    elif action == "symlink":
                        os.symlink(os.path.relpath(keeper, src.parent), src)
                except OSError as e:  # (a hard link across file systems, say): the file goes back where it was
                    shutil.move(dest, src)
                    result.refused.append((r["path"], f"cannot make the {action}: {e.strerror or e}"))
                    continue
            result.done.append((r["path"], str(dest) if action == "move" else f"{action} to {r['keeper']}"))
    finally:
        if log_file is not None:
            log_file.close()
    log.info("duplicates: %s %d files%s, %d refused", action, len(result.done), "" if apply else " (dry run)",
             len(result.refused))
    return result


def undo(log_path: Path) -> ActionResult:
    """Put back, last first, what an applied action did: links removed, moved files moved back. A file that is not
    as the action left it (its place taken, its moved copy gone) is left alone and reported."""
    entries = [json.loads(line) for line in Path(log_path).read_text().splitlines() if line.strip()]
    result = ActionResult("undo", True)
    for e in reversed(entries):
        src, moved = Path(e["path"]), Path(e["moved_to"])
        if not moved.exists():
            if (src.exists() or src.is_symlink()) and not _is_link_to(src, e):
                continue  # the action stopped, or failed, before it moved the file: it is where it was
            result.refused.append((str(src), f"{moved} is gone"))
            continue
        if e["action"] != "move" and (src.exists() or src.is_symlink()):  # absent: killed before the link was made
            if not _is_link_to(src, e):
                result.refused.append((str(src), "no longer the link the action made"))
                continue
            src.unlink()
        if src.exists() or src.is_symlink():
            result.refused.append((str(src), "its place is taken"))
            continue
        src.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(moved, src)
        result.done.append((str(src), "restored"))
    log.info("duplicates: undo put back %d files, %d left alone", len(result.done), len(result.refused))
    return result


def _is_link_to(src: Path, entry: dict) -> bool:
    """Whether src is the link that an action's log entry made to its keeper."""
    if entry["action"] == "symlink":
        return src.is_symlink()
    return entry["action"] == "hardlink" and src.exists() and os.path.samefile(src, entry["keeper"])


def _refusal(path: Path, sha256: str) -> str | None:
    """Why a file must not be acted on, or None: gone, not a plain file any more, or changed since it was indexed."""
    try:
        if path.is_symlink() or not path.is_file():
            return "not a plain file any more"
        if sha256_file(path) != sha256:
            return "changed since it was indexed"
    except OSError as e:
        return f"cannot be read: {e.strerror or e}"
    return None


def clean(workdir: Workdir, run: str | None = None, action: str | None = None, quarantine: Path | None = None,
          apply: bool = False, undo_log: Path | None = None) -> dict:
    """The duplicates job: with `undo_log`, undo an applied action; else write the keeper plan of a `query --all`
    run (default: the latest with groups) and, with `action`, act on the others (a dry run unless apply). Returns
    what a person reads after it (the CLI prints it, the flow makes it an artifact)."""
    if undo_log is not None:
        result = undo(undo_log)
        summary: dict = {"restored": len(result.done), "left alone": len(result.refused)}
        summary.update({f"left alone: {p}": why for p, why in result.refused[:10]})
        return summary
    run_dir = workdir.run_dir(run) if run else latest_run_with_duplicates(workdir)
    table = plan(workdir, run_dir)
    files = write_plan(table, run_dir)
    summary = {"run": run_dir.name, "groups": len(set(table["group"].to_pylist())), "files in groups": table.num_rows,
               "plan": ", ".join(str(f) for f in files)}
    if action:
        result = act(workdir, table, action, quarantine, apply)
        summary.update({"action": action if apply else f"{action} (dry run: nothing changed; add --apply)",
                        "files acted on" if apply else "files it would act on": len(result.done),
                        "refused": len(result.refused)})
        summary.update({f"refused: {p}": why for p, why in result.refused[:10]})
        if result.log:
            summary["undo with"] = f"vaepipe duplicates {workdir.root} --undo {result.log}"
    return summary
