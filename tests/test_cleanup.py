"""Acting on duplicate groups as a user would, from the command line: the keeper plan, a dry run that changes
nothing, a real move, links, a changed file that is refused, and an undo that restores the folder byte for byte."""

import errno
import json
import os
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from helpers import run_cli, write_fmnist
from vaepipe.cleanup import act, latest_run_with_duplicates, plan, undo
from vaepipe.store import Workdir

pytestmark = pytest.mark.integration  # subprocesses, servers and clusters: minutes (make test-fast skips)


@pytest.fixture(autouse=True)
def _the_suite_s_server(prefect_server, monkeypatch):
    """The commands report to the suite's Prefect server rather than each starting a temporary one (test_cli tests
    that path)."""
    monkeypatch.setenv("PREFECT_API_URL", prefect_server)


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() or p.is_symlink()}


@pytest.fixture
def folder_with_copies(built, tmp_path, prefect_server):
    """40 Fashion-MNIST images, three byte-identical copies and two upscaled ones, indexed with the suite's model,
    and a `query --all` run that grouped them."""
    images = tmp_path / "images"
    originals = write_fmnist(images / "orig", n=40)
    (images / "copies").mkdir()
    for i in range(3):
        shutil.copyfile(originals[i], images / "copies" / f"same-{i}.png")
    os.link(originals[5], images / "copies" / "hard-5.png")  # one file at two paths: marked, never acted on
    os.symlink(originals[6], images / "copies" / "soft-6.png")
    for i in range(3, 5):  # a larger copy: the keeper, by the most-pixels rule
        Image.open(originals[i]).resize((56, 56), Image.Resampling.NEAREST).save(images / "copies" / f"big-{i}.png")
    model = built.model_dir(json.loads(built.collection.read_text())["model_id"]) / "model.pt"
    wd = tmp_path / "wd"
    run_cli("index", images, "--workdir", wd, "--model", model)
    run_cli("query", wd, "--all", "-k", "3")
    return images, wd, originals


def test_plan_dry_run_move_and_undo(folder_with_copies, tmp_path):
    images, wd, originals = folder_with_copies
    before = _snapshot(images)

    out = run_cli("duplicates", wd, "--move-to", tmp_path / "quarantine").stdout
    assert "dry run: nothing changed" in out and _snapshot(images) == before and not (tmp_path / "quarantine").exists()
    run = sorted((wd / "runs").iterdir())[-1]
    plan = pq.read_table(run / "duplicates-plan.parquet").to_pylist()
    assert (run / "duplicates-plan.csv").exists() and json.loads((run / "duplicates-plan.json").read_text())
    by_group: dict[int, list[dict]] = {}
    for r in plan:
        by_group.setdefault(r["group"], []).append(r)
    assert all(sum(r["keep"] for r in g) == 1 for g in by_group.values())
    keepers = {r["path"] for r in plan if r["keep"]}
    with_big = [g for g in by_group.values() if any(r["path"].startswith("copies/big-") for r in g)]
    assert with_big and all(r["keeper"].startswith("copies/big-") for g in with_big for r in g)  # the most pixels
    exact = [g for g in by_group.values() if g[0]["kind"] == "exact"]
    assert len(exact) == 3 and all(r["similarity_to_keeper"] > 0.999 for g in exact for r in g)
    assert all(r["pixels_to_keeper"] is None for r in plan)  # a plain VAE: no pixel check, nothing to show
    links = sorted(r["path"] for g in by_group.values() if g[0]["kind"] == "links" for r in g)
    assert links == sorted(["copies/hard-5.png", "copies/soft-6.png", originals[5].relative_to(images).as_posix(),
                            originals[6].relative_to(images).as_posix()])

    # One file changes after it was indexed: it is refused, the others move.
    changed = next(r["path"] for r in plan if not r["keep"] and r["kind"] != "links")
    Image.open(images / changed).rotate(90).save(images / changed)
    before = _snapshot(images)
    proc = run_cli("duplicates", wd, "--move-to", tmp_path / "quarantine", "--apply")
    moved = [r["path"] for r in plan if not r["keep"] and r["path"] != changed and r["kind"] != "links"]
    assert all((tmp_path / "quarantine" / p).exists() and not (images / p).exists() for p in moved)
    assert (images / changed).exists() and "refused: " + changed in proc.stdout
    assert all((images / p).exists() for p in keepers)
    log = next(line.split("--undo ", 1)[1].strip() for line in proc.stdout.splitlines() if "--undo " in line)

    run_cli("duplicates", wd, "--undo", log)
    assert _snapshot(images) == before  # byte for byte
    assert not any(p.is_file() for p in (tmp_path / "quarantine").rglob("*"))


def test_links_replace_the_others_and_undo_restores_them(folder_with_copies):
    images, wd, _ = folder_with_copies
    before = _snapshot(images)
    proc = run_cli("duplicates", wd, "--symlink", "--apply")
    plan = pq.read_table(sorted((wd / "runs").iterdir())[-1] / "duplicates-plan.parquet").to_pylist()
    others = [r for r in plan if not r["keep"] and r["kind"] != "links"]
    assert others and all((images / r["path"]).is_symlink() for r in others)
    assert all((images / r["path"]).read_bytes() == (images / r["keeper"]).read_bytes() for r in others)
    log = next(line.split("--undo ", 1)[1].strip() for line in proc.stdout.splitlines() if "--undo " in line)
    run_cli("duplicates", wd, "--undo", log)
    assert _snapshot(images) == before and not any((images / r["path"]).is_symlink() for r in others)

    proc = run_cli("duplicates", wd, "--hardlink", "--apply")
    assert all(os.path.samefile(images / r["path"], images / r["keeper"]) for r in others)
    log = next(line.split("--undo ", 1)[1].strip() for line in proc.stdout.splitlines() if "--undo " in line)
    run_cli("duplicates", wd, "--undo", log)
    assert _snapshot(images) == before


def test_a_link_that_cannot_be_made_and_an_action_killed_halfway_are_undone(folder_with_copies, monkeypatch):
    images, wd, _ = folder_with_copies
    before = _snapshot(images)
    workdir = Workdir(wd)
    table = plan(workdir, latest_run_with_duplicates(workdir))
    made, calls, real_link = [], [], os.link

    def link(keeper, path):  # the second link fails as one across file systems does
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))
        real_link(keeper, path)
        made.append(Path(path))

    monkeypatch.setattr(os, "link", link)
    result = act(workdir, table, "hardlink", apply=True)
    monkeypatch.undo()
    failed = [(p, why) for p, why in result.refused if why.startswith("cannot make the hardlink")]
    assert len(failed) == 1 and (images / failed[0][0]).read_bytes() == before[failed[0][0]]  # back in its place
    assert len(made) >= 2 and len(result.done) == len(made)
    made[0].unlink()  # as a kill between moving the file away and linking it would leave it
    logged = [json.loads(line)["path"] for line in result.log.read_text().splitlines()]
    assert str(images / failed[0][0]) in logged  # logged before it was touched

    restored = undo(result.log)
    assert _snapshot(images) == before and not restored.refused  # byte for byte, the failed one left as it was
    assert len(restored.done) == len(made)


def test_apply_without_an_action_and_a_missing_undo_log_exit_2(tmp_path):
    for args, message in ((["duplicates", tmp_path, "--apply"], "--apply needs an action"),
                          (["duplicates", tmp_path, "--undo", tmp_path / "nope.jsonl"], "does not exist")):
        proc = run_cli(*args, check=False)
        assert proc.returncode == 2 and message in proc.stderr
