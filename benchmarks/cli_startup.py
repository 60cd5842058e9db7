"""The fixed cost of one `vaepipe` command, and how much of indexing 500 photos it is, side by side in one run.

    .venv/bin/python benchmarks/cli_startup.py --repeats 3

Measured, each in a fresh process (the median of --repeats runs, alternating so a noisy neighbour hits all alike):

  imports            python -c "import flows.build_index" (interpreter, Prefect, torch, FAISS)
  index, 1 photo     `vaepipe index` of one 640x480 JPEG with --model (no training): all fixed cost
  index, 500 photos  the same with 500 photos, as the CLI runs it (the temporary server's process started
                     before Prefect is imported, no flow heartbeats to a server that ends with the command)
  --no-prefect       the same two without Prefect: the library calls of the flow's tasks, in the CLI's process
  ... settings first the same flow with the server's process started after Prefect's settings are read, and
                     flow heartbeats on (what the CLI did until 2026-11-26 03:00)
  ... Prefect class  the same flow with the server started by Prefect's own class in a thread, after importing
                     Prefect's server package, before torch (what the CLI did until early 2026-11-26)
  ... server first   the same flow called after the imports, so the temporary server boots only at the first
                     API call (what the CLI did until 2026-11-25; the flow code is the same)
  ... running server the CLI with PREFECT_API_URL set to a Prefect server that is already up (started once by
                     this script), what a user who indexes often should do

Otherwise no PREFECT_API_URL is set: those runs pay for Prefect's temporary server, as a first-time user does.
Results go to benchmarks/results/cli_startup.json and .md.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from results_io import save_results  # benchmarks/ is on sys.path when a script runs
from throughput import make_folder

REPO = Path(__file__).resolve().parent.parent
LATE_START = """
import logging, os, sys
os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"  # as --quiet does
import flows
logging.getLogger("vaepipe").setLevel(logging.WARNING)
from flows.build_index import build_index
from flows.cli import build_config, parser
a = parser().parse_args(sys.argv[1:])
build_index(str(a.images.resolve()), str(a.workdir.resolve()), model=a.model, config=build_config(a))
"""

# What the CLI did until 2026-11-26: Prefect's own server class started in a thread, after importing Prefect's
# server package (~2 s), before torch and FAISS.
PREFECT_CLASS_START = """
import logging, os, sys, threading
os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"  # as --quiet does
import flows
logging.getLogger("vaepipe").setLevel(logging.WARNING)
from prefect.server.api.server import SubprocessASGIServer
thread = threading.Thread(target=SubprocessASGIServer().start, daemon=True)
thread.start()
from flows.build_index import build_index
from flows.cli import build_config, parser
a = parser().parse_args(sys.argv[1:])
thread.join()
build_index(str(a.images.resolve()), str(a.workdir.resolve()), model=a.model, config=build_config(a))
"""

# What the CLI did until 2026-11-26 03:00: its temporary server's process started after Prefect's settings were
# read (~1 s in), and flows sent heartbeats to it (each flow run waits up to 1 s for its heartbeat thread to end).
SETTINGS_FIRST_START = """
import logging, os, sys
os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"  # as --quiet does
import flows
logging.getLogger("vaepipe").setLevel(logging.WARNING)
from prefect.settings import PREFECT_API_URL, temporary_settings
from flows.temporary_server import _TemporaryServer
server = _TemporaryServer()
server.start()
from flows.build_index import build_index
from flows.cli import build_config, parser
a = parser().parse_args(sys.argv[1:])
assert server.ready(120)
with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
    build_index(str(a.images.resolve()), str(a.workdir.resolve()), model=a.model, config=build_config(a))
"""


def timed(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.monotonic()
    subprocess.run(cmd, cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.monotonic() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    from vaepipe.model import VAE, VAEConfig, save_checkpoint

    photos = make_folder("jpeg", 500)
    scratch = Path(tempfile.mkdtemp(prefix="vaepipe-startup-"))
    one = scratch / "one"
    one.mkdir()
    shutil.copy(next(photos.rglob("*.jpg")), one / "photo.jpg")
    model = scratch / "model.pt"
    save_checkpoint(VAE(VAEConfig(image_size=32, channels=3)), model)  # untrained: the cost does not depend on weights
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    import flows  # noqa: F401  (Prefect settings as the CLI has them)
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()  # a real Prefect server in its own process, up before the runs that use it
    server.start()
    with_server = {**env, "PREFECT_API_URL": server.api_url}

    def index(folder: Path, script: str | None = None, prefect: bool = True) -> list[str]:
        work = scratch / f"work-{time.monotonic_ns()}"
        rest = ["--quiet", *([] if prefect else ["--no-prefect"]), "index", str(folder), "--workdir", str(work),
                "--model", str(model)]
        return [sys.executable, "-c", script, *rest] if script else [sys.executable, "-m", "flows.cli", *rest]

    cases = {
        "imports (python -c 'import flows.build_index')": lambda: [sys.executable, "-c", "import flows.build_index"],
        "`vaepipe index`, 1 photo, --model": lambda: index(one),
        "`vaepipe index`, 500 photos, --model": lambda: index(photos),
        "`vaepipe --no-prefect index`, 1 photo, --model (no flow: the library in this process)": lambda: index(one, prefect=False),
        "`vaepipe --no-prefect index`, 500 photos, --model": lambda: index(photos, prefect=False),
        "same flow, 500 photos, server started after Prefect's settings, heartbeats on (the CLI until 2026-11-26 03:00)": lambda: index(photos, SETTINGS_FIRST_START),
        "same flow, 500 photos, Prefect's server class started before torch (the CLI until early 2026-11-26)": lambda: index(photos, PREFECT_CLASS_START),
        "same flow, 500 photos, server started at the first API call (the CLI until 2026-11-25)": lambda: index(photos, LATE_START),
    }
    cases["`vaepipe index`, 500 photos, --model, PREFECT_API_URL of a running server"] = lambda: index(photos)
    envs = {name: with_server if "running server" in name else env for name in cases}
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.repeats):
        for name, cmd in cases.items():
            times[name].append(timed(cmd(), envs[name]))
    server.stop()
    shutil.rmtree(scratch, ignore_errors=True)

    lines = ["| what | median s | runs (s) |", "|---|---:|---|"]
    lines += [f"| {name} | {statistics.median(t):.2f} | {', '.join(f'{x:.2f}' for x in t)} |" for name, t in times.items()]
    header = (f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {platform.machine()}, {os.cpu_count()} cores; "
              f"command: `python benchmarks/cli_startup.py --repeats {args.repeats}`")
    save_results("cli_startup", header, lines, {"seconds": times})


if __name__ == "__main__":
    main()
