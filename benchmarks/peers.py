"""The duplicates job against the tool people would otherwise use (imagededup), side by side, speed and quality.

    python benchmarks/peers.py --sizes 3000 30000 --rounds 3     # the table in BENCHMARKS.md ("Against imagededup")
    python benchmarks/peers.py --sizes 3000 --rounds 1           # a quick look

One folder of 640x480 JPEG photographs per size, cut from the Debian wallpaper packages (`make bench-deps`):
non-overlapping tiles of every wallpaper (none plain, none like another tile of its wallpaper), then (where a size
needs more than the wallpapers hold) tiles of the larger wallpapers cut at other scales and places, which look like
the first tiles of their wallpaper but are not copies of them. A tenth of the folder are everyday edited copies of
other photos in it (benchmarks/copies.py's edits: JPEG q30, half size, squashed, brightness, greyscale, border,
banner, crop, mirror, rotation), so that every job's duplicate groups are scored against known copies in the same
run as they are timed.

Each job is a whole command in a fresh process, as a user runs it, timed from start to exit, with its peak RSS:
  imagededup PHash / DHash   encode_images(folder) + find_duplicates (its default distance, 10 bits)
  vaepipe full               `vaepipe index` (ingest, train, embed, index) into a new workdir, then `query --all`
  vaepipe warm               `vaepipe index --model <the full job's model>` into a new workdir, then `query --all`
  vaepipe nightly            the warm job's commands again on its workdir, nothing changed (a scheduled re-index)
  vaepipe one image          `vaepipe index` of a one-image folder with a model: the fixed cost of a command
  vaepipe full, --max-minutes M   (with --budget M) the full job with training stopped after the epoch that crosses M
Jobs alternate within a round; the table gives medians over rounds.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from copies import EDITS_BY_FOLDER, WALLPAPERS, glob_files, as_rgb, write_edit  # noqa: E402
from results_io import save_results  # noqa: E402

Image.MAX_IMAGE_PIXELS = None  # the packaged wallpapers are trusted, and some are large
W, H = 640, 480
COPY_SHARE = 0.1
FOLDER_VERSION = 2  # bumped when make_folder changes: a folder made by another version is made again


def _wallpapers() -> list[Path]:
    """The largest file of each wallpaper (packages ship one picture at several resolutions)."""
    best: dict[str, tuple[int, Path]] = {}
    for p in glob_files(WALLPAPERS["val"] + WALLPAPERS["test"]):
        key = p.parent.parent.parent.name if p.parent.name == "images" else p.stem.split("_")[0].split("-l")[0]
        try:
            with Image.open(p) as im:
                area = im.width * im.height
        except Exception:
            continue
        if key not in best or area > best[key][0]:
            best[key] = (area, p)
    return [p for _, p in sorted(best.values(), key=lambda t: str(t[1]))]


def make_folder(n: int, dest: Path, seed: int = 0) -> dict[str, str]:
    """Write n photos into dest (once; reused while its truth file is there). Returns {copy: original}, paths
    relative to dest."""
    truth_file = dest.with_name(dest.name + f".truth-v{FOLDER_VERSION}.json")
    if truth_file.exists() and dest.is_dir():
        return json.loads(truth_file.read_text())
    shutil.rmtree(dest, ignore_errors=True)
    rng = random.Random(seed)
    n_copies = round(n * COPY_SHARE)
    n_photos = n - n_copies
    photos: list[Path] = []
    wallpapers = _wallpapers()
    seen: dict[int, np.ndarray] = {}  # per wallpaper, the small views of its tiles so far, stacked

    def save(tile: Image.Image, s: int, name: str) -> None:
        """Keep a tile unless it is plain (a flat or smooth region) or looks like another tile of its wallpaper at
        16 px (a repeating pattern, a crop of the same place): those would be copies nobody made."""
        small = np.asarray(tile.resize((16, 12), Image.Resampling.BOX), np.float32)
        earlier = seen.get(s, np.empty((0, *small.shape), np.float32))
        if len(photos) >= n_photos or small.std() < 20 or (np.abs(earlier - small).mean(axis=(1, 2, 3)) < 10).any():
            return
        seen[s] = np.concatenate([earlier, small[None]])
        f = dest / "photos" / f"{name}.jpg"
        f.parent.mkdir(parents=True, exist_ok=True)
        tile.save(f, quality=90)
        photos.append(f)

    # Non-overlapping tiles at the wallpapers' own resolution: distinct photos.
    for s, p in enumerate(wallpapers):
        im = as_rgb(Image.open(p))
        for r in range(im.height // H):
            for c in range(im.width // W):
                save(im.crop((c * W, r * H, (c + 1) * W, (r + 1) * H)), s, f"w{s:03d}-{r}-{c}")
    # More than the wallpapers hold: tiles of the larger wallpapers at other scales and places (look-alikes of the
    # tiles above, not copies), a round over every wallpaper at a time until there are enough.
    large = [s for s, p in enumerate(wallpapers) if min(Image.open(p).size[0] / W, Image.open(p).size[1] / H) >= 2]
    decoded: dict[int, Image.Image] = {}  # a few GB at most; decoding them again each round was most of the time
    while len(photos) < n_photos:
        before = len(photos)
        for s in large:
            if s not in decoded:
                decoded[s] = as_rgb(Image.open(wallpapers[s]))
            im = decoded[s]
            for _ in range(min(-(-(n_photos - len(photos)) // len(large)), 64)):
                scale = rng.uniform(0.5, 1.0) * min(im.width / W, im.height / H)
                w, h = round(W * scale), round(H * scale)
                x, y = rng.randrange(im.width - w + 1), rng.randrange(im.height - h + 1)
                save(im.crop((x, y, x + w, y + h)).resize((W, H), Image.Resampling.BILINEAR), s, f"s{s:03d}-{len(photos):06d}")
        if len(photos) == before:
            sys.exit(f"the wallpapers hold no more than {len(photos):,} distinct tiles; ask for fewer photos")
    copies: dict[str, str] = {}
    edits = EDITS_BY_FOLDER["photos"]
    for i, orig in enumerate(rng.sample(photos, n_copies)):
        edit = edits[i % len(edits)]
        with Image.open(orig) as img:
            img.load()
            name = f"{i:05d}-{edit.replace(' ', '_').replace('%', 'pc').replace('°', 'deg')}"
            out = write_edit(img, edit, dest / "copies" / name, rng)
        copies[str(out.relative_to(dest))] = str(orig.relative_to(dest))
    truth_file.write_text(json.dumps(copies, indent=0))
    return copies


# ---------------------------------------------------------------- the jobs, each a whole command in a fresh process

IMAGEDEDUP = """
import json, sys, time
from imagededup.methods import DHash, PHash
method = {"phash": PHash, "dhash": DHash}[sys.argv[1]](verbose=False)
encodings = method.encode_images(image_dir=sys.argv[2], recursive=True)
duplicates = method.find_duplicates(encoding_map=encodings)
t = time.monotonic()
json.dump(duplicates, open(sys.argv[3], "w"))  # for scoring: not part of the job
print("dump seconds:", time.monotonic() - t)
"""


def timed(cmd: list[str]) -> dict:
    """Run a command to its exit: wall seconds and the peak RSS of its largest process (GNU time's %M)."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as out:
        t0 = time.monotonic()
        done = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", out.name, *cmd], capture_output=True, text=True)
        seconds = time.monotonic() - t0
        if done.returncode:
            sys.exit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
        # vaepipe's summary: "<stage> seconds: <s>" for each stage of an index, "seconds: <s>" for a query
        stages = {line.split(":")[0].strip(): float(line.split(":")[1]) for line in done.stdout.splitlines()
                  if line.split(":")[0].strip().endswith("seconds") and ":" in line}
        return {"seconds": seconds, "peak_mb": int(out.read().split()[-1]) / 1024, "stages": stages}


def vaepipe(*args: str) -> list[str]:
    # Not --quiet: the summary it prints has each stage's seconds; the flow's log goes to stderr, not timed apart.
    return [str(Path(sys.executable).with_name("vaepipe")), *args]


def imagededup_job(kind: str, folder: Path, work: Path) -> tuple[dict, set[tuple[str, str]]]:
    result = work / f"{kind}.json"
    t = timed([sys.executable, "-c", IMAGEDEDUP, kind, str(folder), str(result)])
    t["seconds"] -= t["stages"].pop("dump seconds")
    # imagededup names files by their path relative to the folder when it recurses
    found = json.loads(result.read_text())
    return t, {tuple(sorted((a, b))) for a, dups in found.items() for b in dups}


def vaepipe_job(folder: Path, workdir: Path, *options: str, fresh: bool = True, prefect: bool = True
                ) -> tuple[dict, set[tuple[str, str]], Path]:
    """`vaepipe index` then `vaepipe query --all`; prefect=False: both with --no-prefect (no flow, no server)."""
    if fresh:
        shutil.rmtree(workdir, ignore_errors=True)
    how = [] if prefect else ["--no-prefect"]
    index = timed(vaepipe(*how, "index", str(folder), "--workdir", str(workdir), *options))
    query = timed(vaepipe(*how, "query", str(workdir), "--all", "-k", "10"))
    run = max((workdir / "runs").iterdir())
    groups: dict[int, list[str]] = {}
    for g, p in zip(*pq.read_table(run / "duplicates.parquet", columns=["group", "path"]).to_pydict().values()):
        groups.setdefault(g, []).append(p)
    pairs = {(a, b) for members in groups.values() for a in members for b in members if a < b}
    model_id = json.loads((workdir / "collection.json").read_text())["model_id"]
    return ({"seconds": index["seconds"] + query["seconds"], "index_s": index["seconds"], "query_s": query["seconds"],
             "peak_mb": max(index["peak_mb"], query["peak_mb"]), "index_mb": index["peak_mb"],
             "query_mb": query["peak_mb"],
             "stages": {**index["stages"], "query task seconds": query["stages"].get("seconds", 0.0)
                        + query["stages"].get("report seconds", 0.0)}},
            pairs, workdir / "models" / model_id / "model.pt")


def scored(pairs: set[tuple[str, str]], copies: dict[str, str]) -> dict[str, float]:
    """Pair precision (a pair is right when both are one photo: a copy and its original, or two copies of one), copy
    recall (the share of known copies paired with their original), and precision counting as wrong only pairs of
    photos cut from different wallpapers (tiles of one wallpaper, at other scales and places, are look-alikes a
    person may well call copies)."""
    def photo(path: str) -> str:
        return copies.get(path, path)

    def wallpaper(path: str) -> str:  # photos/w012-1-2.jpg, photos/s012-004711.jpg -> 012
        return Path(photo(path)).name[1:4]

    right = sum(1 for a, b in pairs if photo(a) == photo(b))
    other = sum(1 for a, b in pairs if wallpaper(a) != wallpaper(b))
    found = sum(1 for c, o in copies.items() if tuple(sorted((c, o))) in pairs)
    return {"pairs": len(pairs), "precision": right / max(len(pairs), 1), "copy_recall": found / max(len(copies), 1),
            "precision_across_wallpapers": 1 - other / max(len(pairs), 1)}


def run_size(n: int, rounds: int, data_root: Path, work: Path, budgets: list[float]) -> dict:
    folder = data_root / str(n)
    copies = make_folder(n, folder)
    one = data_root / "one"
    if not one.is_dir():
        one.mkdir(parents=True)
        shutil.copy(next((folder / "photos").iterdir()), one)
    times: dict[str, list[dict]] = {}
    quality: dict[str, dict] = {}
    for r in range(rounds):
        for kind in ("phash", "dhash"):
            t, pairs = imagededup_job(kind, folder, work)
            times.setdefault(f"imagededup {kind}", []).append(t)
            quality[f"imagededup {kind}"] = scored(pairs, copies)
            print(f"{n} round {r + 1}: imagededup {kind} {t['seconds']:.1f} s", flush=True)
        t, pairs, model = vaepipe_job(folder, work / "full")
        times.setdefault("vaepipe full", []).append(t)
        quality["vaepipe full"] = scored(pairs, copies)
        print(f"{n} round {r + 1}: vaepipe full {t['seconds']:.1f} s", flush=True)
        for minutes in budgets:  # training on a time budget: what speed it buys, what it costs
            job = f"vaepipe full, --max-minutes {minutes:g}"
            t, pairs, _ = vaepipe_job(folder, work / "budget", "--max-minutes", str(minutes))
            times.setdefault(job, []).append(t)
            quality[job] = scored(pairs, copies)
            print(f"{n} round {r + 1}: {job} {t['seconds']:.1f} s", flush=True)
        t, pairs, _ = vaepipe_job(folder, work / "warm", "--model", str(model))
        times.setdefault("vaepipe warm", []).append(t)
        quality["vaepipe warm"] = scored(pairs, copies)
        print(f"{n} round {r + 1}: vaepipe warm {t['seconds']:.1f} s", flush=True)
        t, pairs, _ = vaepipe_job(folder, work / "warm", fresh=False)
        times.setdefault("vaepipe nightly", []).append(t)
        quality["vaepipe nightly"] = scored(pairs, copies)
        print(f"{n} round {r + 1}: vaepipe nightly {t['seconds']:.1f} s", flush=True)
        for job, fresh in (("vaepipe warm, --no-prefect", True), ("vaepipe nightly, --no-prefect", False)):
            t, pairs, _ = vaepipe_job(folder, work / "warm-here", *(["--model", str(model)] if fresh else []),
                                      fresh=fresh, prefect=False)
            times.setdefault(job, []).append(t)
            quality[job] = scored(pairs, copies)
            print(f"{n} round {r + 1}: {job} {t['seconds']:.1f} s", flush=True)
        for job, how in (("vaepipe index, one image", []), ("vaepipe index, one image, --no-prefect", ["--no-prefect"])):
            shutil.rmtree(work / "one", ignore_errors=True)
            t = timed(vaepipe(*how, "index", str(one), "--workdir", str(work / "one"), "--model", str(model)))
            times.setdefault(job, []).append(t)
    return {"n": n, "copies": len(copies), "times": times, "quality": quality}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[3000, 30000])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--data-root", type=Path, default=Path("/tmp/vaepipe-peers"), help="where the folders are written")
    p.add_argument("--budget", type=float, nargs="*", default=[],
                   help="also the full job with training stopped after these many minutes (--max-minutes)")
    p.add_argument("--name", default="peers")
    args = p.parse_args(argv)
    machine = (f"{subprocess.run(['nproc'], capture_output=True, text=True).stdout.strip()} cores, "
               f"{subprocess.run(['uname', '-m'], capture_output=True, text=True).stdout.strip()}")
    record = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine,
              "command": "python " + " ".join([str(Path(sys.argv[0]))] + sys.argv[1:]), "sizes": []}
    lines = ["| photos | job | median s | x PHash | peak RSS MB (index / query) | rounds (s) | pairs | pair precision | "
             "precision across wallpapers | copy recall |", "|---:|---|---:|---:|---:|---|---:|---:|---:|---:|"]
    with tempfile.TemporaryDirectory(prefix="vaepipe-peers-") as tmp:
        for n in args.sizes:
            r = run_size(n, args.rounds, args.data_root, Path(tmp), args.budget)
            record["sizes"].append(r)
            phash = statistics.median(t["seconds"] for t in r["times"]["imagededup phash"])
            for job, ts in r["times"].items():
                med = statistics.median(t["seconds"] for t in ts)
                q = r["quality"].get(job)
                runs = ", ".join(f"{t['seconds']:.1f}" for t in ts)
                extra = ""
                if "index_s" in ts[0]:
                    index_s = statistics.median(t["index_s"] for t in ts)
                    extra = f" (index {index_s:.1f} + query {statistics.median(t['query_s'] for t in ts):.1f})"
                peak = f"{max(t['peak_mb'] for t in ts):,.0f}"
                if "index_mb" in ts[0]:  # which command peaked: index / query
                    peak += f" ({max(t['index_mb'] for t in ts):,.0f} / {max(t['query_mb'] for t in ts):,.0f})"
                lines.append(f"| {n:,} | {job}{extra} | {med:.1f} | {med / phash:.2f} | {peak} | {runs} | "
                             + (f"{q['pairs']:,} | {q['precision']:.2f} | {q['precision_across_wallpapers']:.2f} | "
                                f"{q['copy_recall']:.2f} |" if q else " | | | |"))
    lines += ["", "Where the vaepipe jobs' seconds go (medians; \"other\" is start-up, Prefect's temporary server and "
              "its bookkeeping, and exit):", "",
              "| photos | job | index: ingest | model | embed | index | other | query: search, groups, report | other |",
              "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in record["sizes"]:
        for job, ts in r["times"].items():
            if "index_s" not in ts[0]:
                continue
            med = {k: statistics.median(t["stages"].get(f"{k} seconds") or 0.0 for t in ts)
                   for k in ("ingest", "model", "embed", "index", "query task")}
            index_other = statistics.median(t["index_s"] - sum(t["stages"].get(f"{k} seconds") or 0.0
                                                               for k in ("ingest", "model", "embed", "index")) for t in ts)
            query_other = statistics.median(t["query_s"] - (t["stages"].get("query task seconds") or 0.0) for t in ts)
            lines.append(f"| {r['n']:,} | {job} | {med['ingest']:.1f} | {med['model']:.1f} | {med['embed']:.1f} | "
                         f"{med['index']:.1f} | {index_other:.1f} | {med['query task']:.1f} | {query_other:.1f} |")
    header = f"Run {record['date']} on {machine}; command: `{record['command']}`"
    save_results(args.name, header, lines, record)
    return record


if __name__ == "__main__":
    main()
