"""duplicates: each duplicate group's keeper and the others; move or link the others away (dry run unless applied), or
undo an applied action from its log."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.common import summary_artifact
from vaepipe.cleanup import clean
from vaepipe.store import Workdir


@task(name="clean-duplicates", cache_policy=NO_CACHE)
def clean_task(workdir: str, run: str | None, action: str | None, quarantine: str | None, apply: bool,
               undo_log: str | None) -> dict:
    return clean(Workdir(Path(workdir)), run, action, Path(quarantine) if quarantine else None, apply,
                 Path(undo_log) if undo_log else None)


@flow(name="duplicates")
def clean_duplicates(workdir: str, run: str | None = None, action: str | None = None, quarantine: str | None = None,
                     apply: bool = False, undo_log: str | None = None) -> dict:
    """Write the keeper plan of a `query --all` run (default: the latest); with `action` ("move" to `quarantine`,
    "hardlink", "symlink") act on the others, a dry run unless apply=True; with `undo_log`, undo an applied action.

    Args:
        workdir: A workdir where a bulk-query run with all_images made duplicate groups.
        run: The run whose groups to use; empty: the latest with duplicate groups.
        action: What to do with the files that are not their group's keeper: move, hardlink or symlink.
        quarantine: With action move, the folder the others move to, keeping their paths.
        apply: Do it; without it the run is a dry run that changes nothing.
        undo_log: The undo log of an applied action, to put everything back.
    """
    summary = clean_task(workdir, run, action, quarantine, apply, undo_log)
    if undo_log:
        summary_artifact("duplicates-undo", "vaepipe duplicates --undo", summary)
    else:
        summary_artifact("duplicates-summary", "vaepipe duplicates", summary)
    return summary
