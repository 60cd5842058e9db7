"""duplicates: each duplicate group's keeper and the others; move or link the others away (dry run unless applied), or
undo an applied action from its log."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.common import summary_artifact
from vaepipe.cleanup import act, latest_run_with_duplicates, plan, undo, write_plan
from vaepipe.store import Workdir


@task(name="plan-duplicates", cache_policy=NO_CACHE)
def plan_task(workdir: str, run: str | None) -> tuple[Path, list[Path], int, int]:
    wd = Workdir(Path(workdir))
    run_dir = wd.run_dir(run) if run else latest_run_with_duplicates(wd)
    table = plan(wd, run_dir)
    return run_dir, write_plan(table, run_dir), len(set(table["group"].to_pylist())), table.num_rows


@task(name="act-on-duplicates", cache_policy=NO_CACHE)
def act_task(workdir: str, plan_file: Path, action: str, quarantine: str | None, apply: bool):
    import pyarrow.parquet as pq

    return act(Workdir(Path(workdir)), pq.read_table(plan_file), action, Path(quarantine) if quarantine else None, apply)


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
    if undo_log:
        result = undo(Path(undo_log))
        summary = {"restored": len(result.done), "left alone": len(result.refused)}
        summary.update({f"left alone: {p}": why for p, why in result.refused[:10]})
        summary_artifact("duplicates-undo", "vaepipe duplicates --undo", summary)
        return summary
    run_dir, files, n_groups, n_files = plan_task(workdir, run)
    summary: dict = {"run": run_dir.name, "groups": n_groups, "files in groups": n_files,
                     "plan": ", ".join(str(f) for f in files)}
    if action:
        result = act_task(workdir, files[0], action, quarantine, apply)
        summary.update({"action": action if apply else f"{action} (dry run: nothing changed; add --apply)",
                        "files acted on" if apply else "files it would act on": len(result.done),
                        "refused": len(result.refused)})
        summary.update({f"refused: {p}": why for p, why in result.refused[:10]})
        if result.log:
            summary["undo with"] = f"vaepipe duplicates {workdir} --undo {result.log}"
    summary_artifact("duplicates-summary", "vaepipe duplicates", summary)
    return summary
