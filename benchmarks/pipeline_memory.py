"""Memory of folder -> embeddings, stage by stage, at two folder sizes: does it grow with the number of files?

    .venv/bin/python benchmarks/pipeline_memory.py --sizes 10000 100000

Each size runs in a fresh process on the PNG folders of benchmarks/throughput.py (28 px Fashion-MNIST
copies, 1,000 files per sub-folder): ingest, plan, embed (the product's default untrained 28 px network),
then a re-run on the unchanged folder (ingest reuses every row, planning finds nothing to embed). The
process's resident memory is sampled every 10 ms; each stage reports its peak above what the process held
after its imports, so the stages compare across sizes. Decoding workers are separate processes, reported
as the largest child's peak. Compare old and new code side by side with PYTHONPATH=<other checkout>.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from results_io import save_results  # benchmarks/ is on sys.path when a script runs
from throughput import make_folder

STAGES = ["ingest", "plan", "embed", "re-ingest", "re-plan"]


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(n: int) -> dict:
    """In a child: peak resident memory of each stage above the memory after imports, in MB."""
    from vaepipe.config import EmbedConfig, IngestConfig, TrainConfig
    from vaepipe.embed import embed
    from vaepipe.embeddings import plan_shards
    from vaepipe.ingest import ingest
    from vaepipe.model import VAE, VAEConfig, save_checkpoint

    folder = make_folder("png", n)
    work = Path(tempfile.mkdtemp(prefix="vaepipe-mem-"))
    t = TrainConfig()
    model = VAE(VAEConfig(28, 1, t.latent_dim, t.width, batch_norm=t.use_batch_norm(28))).eval()
    save_checkpoint(model, work / "model" / "model.pt")
    del model
    peak = [0.0]

    def sample() -> None:
        while True:
            peak[0] = max(peak[0], rss_mb())
            time.sleep(0.01)

    threading.Thread(target=sample, daemon=True).start()
    base = rss_mb()
    manifest, emb = work / "manifest.parquet", work / "emb"
    steps = {
        "ingest": lambda: ingest(folder, manifest, IngestConfig()),
        "plan": lambda: plan_shards(manifest, emb, t.latent_dim, EmbedConfig().part_rows),
        "embed": lambda: embed(folder, manifest, work / "model", emb, EmbedConfig()),
        "re-ingest": lambda: ingest(folder, manifest, IngestConfig()),
        "re-plan": lambda: plan_shards(manifest, emb, t.latent_dim, EmbedConfig().part_rows),
    }
    out: dict = {"n": n, "after_imports_mb": round(base)}
    for stage in STAGES:
        time.sleep(0.05)
        peak[0] = start = rss_mb()
        t0 = time.monotonic()
        steps[stage]()
        seconds = time.monotonic() - t0
        time.sleep(0.05)
        out[stage] = {"peak_above_imports_mb": round(peak[0] - base, 1), "start_above_imports_mb": round(start - base, 1),
                      "seconds": round(seconds, 2)}
    out["largest_child_mb"] = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
    shutil.rmtree(work, ignore_errors=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(args.child)))
        return
    runs = []
    for n in args.sizes:
        out = subprocess.run([sys.executable, __file__, "--child", str(n)], check=True, capture_output=True, text=True)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(runs[-1], flush=True)
    # glibc's malloc raises its mmap threshold as large blocks are freed, then serves them from a heap that keeps
    # its pages: run once with the threshold fixed (MALLOC_MMAP_THRESHOLD_=131072) to see what is the allocator's.
    malloc = {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")}
    env = "".join(f"{k}={v} " for k, v in malloc.items())
    header = (f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {platform.machine()}, {os.cpu_count()} cores; "
              f"command: `{env}python benchmarks/pipeline_memory.py --sizes {' '.join(map(str, args.sizes))}`; "
              "peak resident memory of each stage above the process after its imports, MB (seconds)")
    lines = ["| files | after imports MB | " + " | ".join(STAGES) + " | largest child MB |",
             "|---:|---:|" + "---:|" * len(STAGES) + "---:|"]
    for r in runs:
        lines.append(f"| {r['n']:,} | {r['after_imports_mb']} | "
                     + " | ".join(f"{r[s]['peak_above_imports_mb']:.0f} ({r[s]['seconds']:.1f} s)" for s in STAGES)
                     + f" | {r['largest_child_mb']} |")
    save_results("pipeline_memory" + ("-malloc-env" if malloc else ""), header, lines, {"runs": runs, "env": malloc})


if __name__ == "__main__":
    main()
