"""The `vaepipe` command as a user runs it: real subprocesses, real Prefect runs."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from helpers import run_cli, temporary_servers, write_fmnist, write_mixed

pytestmark = pytest.mark.integration  # subprocesses, servers and clusters: minutes (make test-fast skips)


def test_help_reads_well():
    out = run_cli("--help").stdout
    for command in ("index", "query", "sample", "pipeline", "demo"):
        assert command in out
    assert "--model CHECKPOINT" in run_cli("index", "--help").stdout
    assert "--all" in run_cli("query", "--help").stdout
    assert run_cli("--version").stdout.startswith("vaepipe ")
    import argparse

    from flows.cli import parser

    commands = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    bare = [(name, action.dest) for name, sub in commands.items() for action in sub._actions
            if not action.help and not isinstance(action, argparse._HelpAction)]
    assert not bare  # every argument of every command says what it is for


@pytest.mark.parametrize("args,message", [
    (["index", "/no/such/folder", "--workdir", "/tmp/x"], "does not exist"),
    (["query", "/no/such/workdir", "--all"], "workdir /no/such/workdir does not exist"),
    (["query", ".", "--all", "-k", "0"], "-k must be at least 1"),
    (["sample", ".", "-n", "0"], "-n must be from 1 to 4,096"),
    (["sample", ".", "-n", "10000000"], "-n must be from 1 to 4,096"),
    (["sample", ".", "--seed", "-1"], "--seed must be at least 0"),
    (["index", ".", "--workdir", "/tmp/x", "--shard-size", "0"], "shard size (part rows) must be at least 1"),
    (["index", ".", "--workdir", "/tmp/x", "--workers", "0"], "workers must be at least 1"),
    (["index", ".", "--workdir", "/tmp/x", "--max-pixels", "-3"], "max pixels must be at least 1"),
    (["index", "tests", "--workdir", "."], "lies inside the workdir"),
    (["query", ".", "--all", "--threshold", "nan"], "threshold is a similarity from -1 to 1"),
    (["query", ".", "--all", "--threshold", "-5"], "threshold is a similarity from -1 to 1"),
    (["query", ".", "--queries", ".", "--threshold", "0.9"], "--threshold is for duplicate groups"),
    (["index", ".", "--workdir", "/tmp/x", "--background", "300"], "background must be a grey level"),
    (["index", ".", "--workdir", "/tmp/x", "--invariance", "-1"], "invariance must be 0 or more"),
    (["index", ".", "--workdir", "/tmp/x", "--epochs", "0"], "epochs must be at least 1"),
    (["pipeline", ".", "--workdir", "/tmp/x", "--image-size", "30"], "image size must be a multiple of 4"),
    (["index", ".", "--workdir", "/tmp/x", "--latent-dim", "0"], "latent dimension must be from 1 to 1024"),
    (["pipeline", ".", "--workdir", "/tmp/x", "--seed", "-2"], "seed must be at least 0"),
])
def test_expected_errors_exit_2_without_traceback(args, message):
    proc = run_cli(*args, check=False)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_indexing_another_folder_into_a_built_workdir_exits_2_and_changes_nothing(tmp_path):
    from vaepipe.store import Workdir

    write_fmnist(tmp_path / "a", n=5)
    write_fmnist(tmp_path / "b", n=5)
    wd = Workdir(tmp_path / "wd")
    before = wd.write_collection(tmp_path / "a", "m1").read_bytes()
    proc = run_cli("index", tmp_path / "b", "--workdir", wd.root, check=False)
    assert proc.returncode == 2 and "--replace" in proc.stderr and "Traceback" not in proc.stderr
    assert wd.collection.read_bytes() == before and not wd.manifest.exists()


@pytest.mark.usefixtures("prefect_server")
def test_index_query_sample_from_the_command_line(tmp_path):
    from prefect.settings import PREFECT_API_URL

    env = {"PREFECT_API_URL": PREFECT_API_URL.value()}  # the runs land on the test server
    photos = tmp_path / "photos"
    write_fmnist(photos / "nested" / "deeper", n=300)
    write_mixed(photos / "misc")
    wd = tmp_path / "wd"
    out = run_cli("index", photos, "--workdir", wd, "--epochs", "2", "--workers", "1", env=env).stdout
    assert "images failed: 3" in out and "index kind: flat" in out

    all_out = run_cli("query", wd, "--all", "-k", "3", env=env).stdout
    path = next(line.split(": ", 1)[1] for line in all_out.splitlines() if line.strip().startswith("neighbours:"))
    assert pq.read_table(path).num_rows == 3 * (300 + 11)

    queries = tmp_path / "q"
    queries.mkdir()
    src = sorted((photos / "nested").rglob("*.png"))[5]
    Image.open(src).save(queries / "same.jpg", quality=95)
    q_out = run_cli("query", wd, "--queries", queries, "-k", "2", env=env).stdout
    path = next(line.split(": ", 1)[1] for line in q_out.splitlines() if line.strip().startswith("neighbours:"))
    table = pq.read_table(path).to_pandas()
    assert table.loc[table["rank"] == 1, "neighbour_path"].item() == src.relative_to(photos).as_posix()

    s_out = run_cli("sample", wd, "-n", "4", env=env).stdout
    samples = next(line.split(": ", 1)[1] for line in s_out.splitlines() if line.strip().startswith("samples dir:"))
    assert len(list(Path(samples).glob("sample-*.png"))) == 4


def test_without_a_prefect_server_the_cli_starts_a_temporary_one_records_the_run_and_stops_it(built, tmp_path):
    import json
    import sqlite3

    photos = tmp_path / "photos"
    write_fmnist(photos, n=20)
    home = tmp_path / "prefect-home"
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(home)
    model = built.model_dir(json.loads(built.collection.read_text())["model_id"]) / "model.pt"
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "index", str(photos), "--workdir", str(tmp_path / "wd"),
                           "--model", str(model)], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "index kind: flat" in proc.stdout
    # the run went to the temporary server, whose database lives in PREFECT_HOME
    with sqlite3.connect(home / "prefect.db") as db:
        runs = db.execute("select f.name, r.state_type from flow_run r join flow f on r.flow_id = f.id").fetchall()
        events = {name for (name,) in db.execute("select distinct event from events")}
    assert ("build-index", "COMPLETED") in runs and {state for _, state in runs} == {"COMPLETED"}
    # without heartbeats, which a server that ends with the command has no use for (they cost each flow run ~1 s)
    assert "prefect.flow-run.Running" in events and "prefect.flow-run.heartbeat" not in events
    assert not temporary_servers(home)  # and the server is gone with the command


def test_every_config_field_has_a_flag_or_is_declared_off_the_cli():
    """Each flag of `index` reaches the config, and each BuildConfig field is set by a flag or listed in
    NOT_ON_THE_CLI: a new field (or flag) without the other fails here."""
    import argparse
    import dataclasses

    from flows.cli import NOT_ON_THE_CLI, build_config, parser
    from vaepipe.config import BuildConfig

    index = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction)).choices["index"]
    argv = ["images", "--workdir", "w"]
    for action in index._actions:  # every flag set to something other than its default
        if not action.option_strings or action.dest in ("help", "workdir", "model", "retrain", "replace",
                                                        "dask_address", "dask_workers"):
            continue
        flag = action.option_strings[0]
        if isinstance(action, argparse._StoreTrueAction):
            argv.append(flag)
        elif isinstance(action, argparse._AppendAction):
            argv += [flag, "*.txt"]
        elif action.choices:
            argv += [flag, str(next(c for c in action.choices if c != action.default))]
        else:  # where default + 3 is a setting the config refuses, another value
            argv += [flag, str({"image_size": 32, "background": 250}.get(action.dest, (action.default or 0) + 3))]
    built, default = build_config(parser().parse_args(["index", *argv])), BuildConfig()
    fields = {f"{part.name}.{f.name}" for part in dataclasses.fields(BuildConfig)
              for f in dataclasses.fields(getattr(default, part.name))}
    changed = {name for name in fields
               if getattr(getattr(built, name.split(".")[0]), name.split(".")[1])
               != getattr(getattr(default, name.split(".")[0]), name.split(".")[1])}
    assert NOT_ON_THE_CLI <= fields  # no stale names
    assert changed == fields - NOT_ON_THE_CLI


def test_no_prefect_runs_each_job_in_the_process_with_the_same_outcome(built, tmp_path, prefect_server):
    """--no-prefect: the library calls the flows' tasks make, in this process: no server, no run recorded; the same
    files and summary as a flow run (the model given, so both index the same way)."""
    import json

    photos = tmp_path / "photos"
    write_fmnist(photos, n=30)
    shutil.copy(next(photos.rglob("*.png")), photos / "copy.png")
    home = tmp_path / "prefect-home"
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(home)
    model = built.model_dir(json.loads(built.collection.read_text())["model_id"]) / "model.pt"
    outputs = {}
    for how, flags in (("here", ["--no-prefect"]), ("flow", [])):
        wd = tmp_path / f"wd-{how}"
        if how == "flow":  # the flows on the test server (a temporary one of their own would cost its start-up)
            env = {**env, "PREFECT_API_URL": prefect_server}
        lines = run_cli(*flags, "index", photos, "--workdir", wd, "--model", model, env=env).stdout
        lines += run_cli(*flags, "query", wd, "--all", "-k", "3", env=env).stdout
        lines += run_cli(*flags, "sample", wd, "-n", "4", env=env).stdout
        lines += run_cli(*flags, "duplicates", wd, "--hardlink", env=env).stdout
        if how == "here":
            assert not home.exists() and not temporary_servers(home)  # no Prefect at all
        summary = dict(line.strip().split(": ", 1) for line in lines.splitlines() if ": " in line)
        outputs[how] = summary
    a, b = outputs["here"], outputs["flow"]
    assert a.keys() == b.keys()
    for key in ("images ok", "model id", "queries", "rows written", "duplicate groups", "groups", "files in groups",
                "files it would act on", "samples", "files"):
        assert a[key] == b[key], key
    neighbours = [pq.read_table(s["neighbours"]).select(["query_path", "rank", "neighbour_path"]) for s in (a, b)]
    assert neighbours[0].equals(neighbours[1])
    assert Path(a["page"]).is_file() and Path(a["report"]).is_file() and "dry run" in a["action"]
    out = run_cli("--no-prefect", "pipeline", photos, "--workdir", tmp_path / "wd-pipe", "--model", model, "-k", "3",
                  "-n", "4", env=env).stdout
    whole = dict(line.strip().split(": ", 1) for line in out.splitlines() if ": " in line)
    assert whole["images ok"] == a["images ok"] and whole["duplicate groups"] == a["duplicate groups"]
    assert Path(whole["report"]).is_file() and Path(whole["samples page"]).is_file()
    # Dask shards are Prefect tasks: asked for without Prefect, one line and exit 2.
    proc = run_cli("--no-prefect", "index", photos, "--workdir", tmp_path / "wd-dask", "--dask-workers", "2",
                   env=env, check=False)
    assert proc.returncode == 2 and "--no-prefect" in proc.stderr and not (tmp_path / "wd-dask").exists()


def test_a_killed_command_takes_its_temporary_server_with_it(tmp_path):
    import signal
    import time

    write_fmnist(tmp_path / "photos", n=20)
    home = tmp_path / "prefect-home"
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(home)
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "index", str(tmp_path / "photos"), "--workdir",
                             str(tmp_path / "wd")], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not temporary_servers(home) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert temporary_servers(home), "the command started no temporary server"
    finally:
        proc.send_signal(signal.SIGKILL)  # no atexit, no finally: only the kernel can tell the server
        proc.wait()
    deadline = time.monotonic() + 30
    while temporary_servers(home) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not temporary_servers(home)


def test_a_first_run_waits_long_enough_for_the_temporary_server_to_create_its_database():
    # With a new PREFECT_HOME the server runs every migration first (7-20 s here): Prefect's own 20 s wait failed a
    # CI run. Importing flows raises the wait unless the user chose one.
    code = ("import flows; from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS as s; "
            "print(s.value())")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_SERVER_EPHEMERAL")}
    waits = []
    for chosen in (None, "45"):
        run_env = env if chosen is None else {**env, "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": chosen}
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=run_env, timeout=120)
        assert out.returncode == 0, out.stderr
        waits.append(float(out.stdout.split()[-1]))
    assert waits == [120, 45]


def test_a_server_named_in_a_prefect_profile_gets_the_run_and_the_early_temporary_one_is_stopped(built, tmp_path,
                                                                                                   prefect_server):
    import json
    from datetime import datetime, timedelta, timezone

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterStartTime
    from prefect.settings import PREFECT_API_URL

    # The CLI starts a temporary server before it reads Prefect's settings, when PREFECT_API_URL is not in the
    # environment; a profile that names a server must still win.
    profiles = tmp_path / "profiles.toml"
    profiles.write_text(f'active = "elsewhere"\n\n[profiles.elsewhere]\nPREFECT_API_URL = "{PREFECT_API_URL.value()}"\n')
    home = tmp_path / "prefect-home"
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_PROFILES_PATH=str(profiles), PREFECT_HOME=str(home))
    photos = tmp_path / "photos"
    write_fmnist(photos, n=10)
    model = built.model_dir(json.loads(built.collection.read_text())["model_id"]) / "model.pt"
    started = datetime.now(timezone.utc) - timedelta(seconds=5)
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "--quiet", "index", str(photos), "--workdir",
                           str(tmp_path / "wd"), "--model", str(model)], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(start_time=FlowRunFilterStartTime(after_=started)))
    assert any(r.parameters.get("images") == str(photos.resolve()) and r.state_type.value == "COMPLETED" for r in runs)
    assert not temporary_servers(home)
