"""Reliability on hostile input: a folder with every kind of bad file from tests/hostile.py plus a few
hundred good Fashion-MNIST images, through the real build-index flow. Prints and saves:
files tried, good embedded, bad recorded, bad by reason, and "lost", computed by comparing the
manifest and the index with the folder itself.

    .venv/bin/python benchmarks/reliability.py [--good 500]

With --kills, instead: builds SIGKILLed in every stage and resumed, against a clean build (neighbour rows that
differ); searches opening the index while another process rebuilds it over other images, and is SIGKILLed, again
and again (answers that are neither the old index's nor the new one's); CLI commands SIGKILLed while their
temporary Prefect server runs (servers left behind).

Results: benchmarks/results/reliability.json / reliability-kills.json and .md (copied into BENCHMARKS.md by hand).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import shutil
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the suite's helpers, run here at a larger scale (pytest has tests/ on its path)

import flows  # noqa: E402,F401  (Prefect settings before prefect is imported)
import pyarrow.parquet as pq  # noqa: E402
from helpers import (FORMATS, clustered_vectors, format_sample, mutated, neighbour_rows, run_build_driver,  # noqa: E402
                     temporary_servers, write_fmnist, write_vector_collection)
from hostile import write_hostile  # noqa: E402

from flows.build_index import build_index  # noqa: E402
from vaepipe.config import BuildConfig, EmbedConfig, IngestConfig, TrainConfig  # noqa: E402
from vaepipe.store import name_of  # noqa: E402


def write_fuzzed(folder: Path, per_format: int, seed: int = 0) -> int:
    """Damaged copies of a small file of every format (tests/test_fuzz.py's mutations): each must end as a row."""
    import random

    rng = random.Random(seed)
    folder.mkdir(parents=True)
    for suffix, fmt in FORMATS.items():
        data = format_sample(fmt)
        for i in range(per_format):
            (folder / f"{suffix}-{i:03d}.{suffix}").write_bytes(mutated(data, rng))
    return per_format * len(FORMATS)


def files_in(root: Path) -> set[str]:
    """What a person sees in the folder: every file, not hidden, not through a symlinked directory."""
    seen = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for f in filenames:
            if not f.startswith("."):
                seen.add(name_of(os.path.relpath(os.path.join(dirpath, f), root)))
    return seen


# A process that rebuilds one index over two collections in turn, for ever (until killed).
REBUILDER = """
import sys
from pathlib import Path
from vaepipe.config import IndexConfig
from vaepipe.index import build_index
root = Path(sys.argv[1])
print("ready", flush=True)
while True:
    for name in ("a", "b"):
        build_index(root / name / "emb", root / name / "manifest.parquet", root / "index", "m", IndexConfig(kind="flat"))
"""


def kills(rounds: int) -> dict:
    """The --kills figures (see the module's docstring)."""
    import random
    import signal
    import subprocess

    import numpy as np
    from vaepipe.config import IndexConfig
    from vaepipe.index import SearchIndex, build_index as build_index_files

    tmp = Path(tempfile.mkdtemp(prefix="vaepipe-kills-"))
    out: dict = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                 "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
                 "command": f"python benchmarks/reliability.py --kills {rounds}"}

    # 1. A build SIGKILLed in each stage, then run again, against a clean build of the same folder.
    write_fmnist(tmp / "images", n=300)
    run_build_driver(tmp / "images", tmp / "reference")
    reference = neighbour_rows(tmp / "reference")
    stages = {"ingest": "ingest: checkpoint after 100", "train": "train: saved training state after epoch 2",
              "embed": "embed: wrote part-00001", "index": "index: writing"}
    out["builds killed and resumed"] = {}
    for stage, marker in stages.items():
        run_build_driver(tmp / "images", tmp / f"killed-{stage}", kill_on=marker)
        run_build_driver(tmp / "images", tmp / f"killed-{stage}")
        got = neighbour_rows(tmp / f"killed-{stage}")
        out["builds killed and resumed"][stage] = f"{sum(a != b for a, b in zip(got, reference)) + abs(len(got) - len(reference))} of {len(reference)} neighbour rows differ"

    # 2. Searches while another process rebuilds the index over other images, killed at random moments.
    vectors = clustered_vectors(n=600)
    for name, x in (("a", vectors), ("b", vectors[::-1][:400])):
        (tmp / "rebuild" / name).mkdir(parents=True)
        write_vector_collection(tmp / "rebuild" / name, x)
    index_dir = tmp / "rebuild" / "index"
    queries = vectors[:50]
    answers = {}
    for name in ("a", "b"):  # each collection's answer, from a clean build of its own
        build_index_files(tmp / "rebuild" / name / "emb", tmp / "rebuild" / name / "manifest.parquet",
                          tmp / "rebuild" / f"clean-{name}", "m", IndexConfig(kind="flat"))
        clean = SearchIndex.open(tmp / "rebuild" / f"clean-{name}")
        answers[name] = np.asarray(clean.ids["path"].to_pylist(), dtype=object)[clean.search(queries, 5)[0]].tolist()
    build_index_files(tmp / "rebuild" / "a" / "emb", tmp / "rebuild" / "a" / "manifest.parquet", index_dir, "m",
                      IndexConfig(kind="flat"))
    rng = random.Random(0)
    searches = neither = 0
    seen = {"a": 0, "b": 0}
    for _ in range(rounds):
        writer = subprocess.Popen([sys.executable, "-c", REBUILDER, str(tmp / "rebuild")], stdout=subprocess.PIPE,
                                  text=True)
        writer.stdout.readline()  # imports done: rebuilding from now on
        deadline = time.monotonic() + rng.uniform(1.0, 4.0)
        while time.monotonic() < deadline:
            index = SearchIndex.open(index_dir)
            got = np.asarray(index.ids["path"].to_pylist(), dtype=object)[index.search(queries, 5)[0]].tolist()
            searches += 1
            neither += got not in (answers["a"], answers["b"])
            seen["a" if got == answers["a"] else "b"] += got in (answers["a"], answers["b"])
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        writer.stdout.close()
        index = SearchIndex.open(index_dir)  # after the kill: whichever was published last, whole
        got = np.asarray(index.ids["path"].to_pylist(), dtype=object)[index.search(queries, 5)[0]].tolist()
        searches += 1
        neither += got not in (answers["a"], answers["b"])
    out["searches during rebuilds"] = (f"{searches} searches ({seen['a']} answered from one collection, {seen['b']} from "
                                       f"the other), {rounds} rebuilding processes killed: {neither} answers neither "
                                       "the old index's nor the new one's")

    # 3. CLI commands killed while their temporary Prefect server runs.
    left = 0
    for i in range(min(rounds, 5)):
        home = tmp / f"prefect-home-{i}"
        env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"} | {"PREFECT_HOME": str(home)}
        proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "index", str(tmp / "images"), "--workdir",
                                 str(tmp / f"cli-{i}")], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                cwd=REPO)
        deadline = time.monotonic() + 90
        while not temporary_servers(home) and time.monotonic() < deadline:
            time.sleep(0.2)
        started = bool(temporary_servers(home))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 30
        while temporary_servers(home) and time.monotonic() < deadline:
            time.sleep(0.2)
        left += len(temporary_servers(home)) if started else 1  # a command that started no server counts as a failure
    out["CLI commands killed with their server running"] = f"{min(rounds, 5)}: {left} servers left running 30 s later"
    shutil.rmtree(tmp, ignore_errors=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--good", type=int, default=500)
    ap.add_argument("--fuzzed", type=int, default=100, help="damaged files per format")
    ap.add_argument("--kills", type=int, default=0, help="the kill figures instead, with this many killed rebuilds")
    args = ap.parse_args()
    if args.kills:
        from prefect.testing.utilities import prefect_test_harness

        with prefect_test_harness(server_startup_timeout=120):  # one server for the killed builds' flow runs
            result = kills(args.kills)
        _save("reliability-kills", result)
        return
    tmp = Path(tempfile.mkdtemp(prefix="vaepipe-reliability-"))
    expect = write_hostile(tmp / "folder", tmp / "outside")
    write_fmnist(tmp / "folder" / "good", n=args.good)
    n_fuzzed = write_fuzzed(tmp / "folder" / "fuzzed", args.fuzzed)
    os.mkfifo(tmp / "folder" / "pipe.png")  # a reader that opened it would wait forever
    expect["pipe.png"] = "empty file"
    t0 = time.monotonic()
    summary = build_index(str(tmp / "folder"), str(tmp / "wd"),
                          config=BuildConfig(ingest=IngestConfig(workers=1), train=TrainConfig(epochs=2),
                                             embed=EmbedConfig(workers=0)))
    seconds = time.monotonic() - t0
    manifest = pq.read_table(tmp / "wd" / "manifest.parquet").to_pylist()
    ids = set(pq.read_table(Path(summary["index"]) / "ids.parquet")["path"].to_pylist())
    in_folder = files_in(tmp / "folder")
    shutil.rmtree(tmp, ignore_errors=True)
    rows = {r["path"]: r for r in manifest}
    ok = {p for p, r in rows.items() if r["status"] == "ok"}
    lost = len(in_folder - rows.keys()) + len(ok - ids)  # not in the manifest, or usable but not searchable
    wrong = [n for n, kind in expect.items()
             if (kind is None) != (rows.get(n, {}).get("status") == "ok")
             or (kind and not (rows.get(n, {}).get("error") or "").startswith(kind.removeprefix("skipped: ")))
             or (kind and (rows.get(n, {}).get("status") == "skipped") != kind.startswith("skipped: "))]
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "files tried": len(manifest), "of which fuzzed (damaged copies of every format)": n_fuzzed,
        "fuzzed files ending ok / error": f"{sum(rows[n]['status'] == 'ok' for n in rows if n.startswith('fuzzed/'))} / "
                                          f"{sum(rows[n]['status'] != 'ok' for n in rows if n.startswith('fuzzed/'))}",
        "crashes": 0,  # the build returned
        "good embedded": len(ids), "bad recorded": len(manifest) - len(ok),
        "bad by reason": summary["failed by reason"], "lost": lost, "recorded with the wrong outcome": wrong,
        "seconds": round(seconds, 1), "command": f"python benchmarks/reliability.py --good {args.good} --fuzzed {args.fuzzed}",
    }
    _save("reliability", result)
    print(f"lost: {lost}")


def _save(name: str, result: dict) -> None:
    out = REPO / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    md = ["| figure | value |", "|---|---|"] + [f"| {k} | {v if not isinstance(v, dict) else ', '.join(f'{a}: {b}' for a, b in v.items())} |"
                                             for k, v in result.items()]
    (out / f"{name}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
