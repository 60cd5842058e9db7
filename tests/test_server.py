"""On a real Prefect server: deploy from deployments/prefect.yaml, run deployments through a worker.

Select alone with `pytest -m server`. Everything listens on 127.0.0.1 and is shut down at the end.
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest

from helpers import free_port, stop_group, write_fmnist

pytestmark = pytest.mark.server
REPO = Path(__file__).resolve().parents[1]
PREFECT = [sys.executable, "-m", "prefect"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("prefect-server-home")
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_LOGGING_EXTRA_LOGGERS": "vaepipe"}
    log = open(home / "server.log", "w")
    proc = subprocess.Popen([*PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        for _ in range(120):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        else:
            pytest.fail("prefect server did not start:\n" + (home / "server.log").read_text())
        yield env
    finally:
        stop_group(proc, timeout=60)
        log.close()
    with pytest.raises(httpx.HTTPError):  # shut down cleanly: nothing listens any more
        httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=1)


def prefect(env, *args, timeout=300) -> str:
    proc = subprocess.run([*PREFECT, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"prefect {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_deployments_run_on_a_real_server(server, tmp_path):
    env = server
    images, workdir = tmp_path / "images", tmp_path / "wd"
    write_fmnist(images, n=200)
    prefect(env, "work-pool", "create", "vaepipe", "--type", "process")
    prefect(env, "--no-prompt", "deploy", "--all", "--prefect-file", "deployments/prefect.yaml")
    worker_log = open(tmp_path / "worker.log", "w")
    worker = subprocess.Popen([*PREFECT, "worker", "start", "--pool", "vaepipe"], env=env, cwd=REPO,
                              stdout=worker_log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        prefect(env, "deployment", "run", "build-index/nightly", "--param", f"images={images}",
                "--param", f"workdir={workdir}", "--param", 'config={"train": {"epochs": 2}}', "--watch",
                "--watch-timeout", "400", timeout=450)
        prefect(env, "deployment", "run", "bulk-query/on-demand", "--param", f"workdir={workdir}",
                "--param", "k=4", "--watch", "--watch-timeout", "200", timeout=250)
    finally:
        stop_group(worker, timeout=60)  # its shutdown is not what this test is about
        worker_log.close()

    # outputs on disk
    table = pq.read_table(next(workdir.glob("runs/*/neighbours.parquet")))
    assert table.num_rows == 200 * 4
    assert len(list(workdir.glob("models/*/model.pt"))) == 1

    # states and schedule through the Prefect API
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    with SyncPrefectClient(env["PREFECT_API_URL"]) as client:
        runs = {(r.name, r.deployment_id): r for r in client.read_flow_runs()}
        deployments = {d.id: d for d in client.read_deployments()}
        names = {f"{client.read_flow(d.flow_id).name}/{d.name}" for d in deployments.values()}
        assert {"build-index/nightly", "bulk-query/on-demand", "generate-samples/on-demand", "pipeline/on-demand"} <= names
        ran = [r for r in runs.values() if r.deployment_id is not None and r.state.is_final()]
        assert len(ran) == 2 and all(r.state.is_completed() for r in ran), [r.state for r in ran]
        nightly = client.read_deployments(deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["nightly"])))[0]
        assert [(s.schedule.cron, s.active) for s in nightly.schedules] == [("0 2 * * *", False)]
        # one run at a time per deployment
        ours = [d for d in deployments.values() if d.name in ("nightly", "on-demand")]
        assert ours and all(d.global_concurrency_limit and d.global_concurrency_limit.limit == 1 for d in ours)
    # the library's progress reached the run logs
    assert "vaepipe - train: epoch 2/2" in (tmp_path / "worker.log").read_text()
