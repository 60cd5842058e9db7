"""Everyday copies of real images: given an edited copy, does the collection find its original?

    python benchmarks/copies.py --split val --name tune-x [recipe flags]   # tuning: validation folders only
    python benchmarks/copies.py --split test --name test-default            # the final figure
    python benchmarks/copies.py --split val --folders photos --vae-only     # a faster tuning run, no baselines

The folders are cut from Debian packages nobody here made (`make bench-deps` installs them), split by source so
that tuning never sees the test images:

  photos   256 px tiles of desktop wallpapers (photographs and digital art), saved as JPEG
           val: mate-backgrounds and Plasma wallpapers A-K; test: Plasma L-Z, UKUI, GNOME, Lomiri
  clipart  Openclipart drawings with transparency, longer side at most 256 px
           val: animals, people, food, ...; test: recreation, plants, buildings, ...
  icons    an icon theme's PNGs, every size each icon is drawn at (16-256 px), transparent
           val: Oxygen and Tango; test: Adwaita, GNOME and hicolor
  mixed    photos + clipart + icons of the split, with edited copies inside the collection: duplicate groups
  mixed-N  (validation only, tuning) another draw of the mixed folder, seed N

Queries are edited copies of 60 originals per folder (truth: the original), written as files and read through
the product's own loading path, against the collection built with the product's library calls (ingest -> train ->
embed -> index). In the same run, on the same files: raw pixels (32 px, the naive script: convert("RGB") and
resize), PCA of those pixels to the VAE's dimension, pHash and dHash (imagehash, 64 bits, Hamming distance).
Ties count as a random order (expected recall), so a method that scores many images alike gains nothing from it.

Results go to benchmarks/results/copies-<name>.{json,md}; `--table` prints the tuning table of every run so far.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import faiss
import numpy as np
import torch
from PIL import Image, ImageDraw, ImageEnhance, ImageOps

from vaepipe.build import build as build_collection
from vaepipe.config import BuildConfig, IndexConfig, TrainConfig
from vaepipe.duplicates import _components  # the one union-find: groups of keys joined by pixels
from vaepipe.embed import encode_files
from vaepipe.embeddings import Embedded
from vaepipe.index import SearchIndex, prepare
from vaepipe.model import load_checkpoint
from vaepipe.query import find_duplicates, query_all
from vaepipe.store import Workdir
from vaepipe import views

from quality import add_recipe_flags, recipe  # benchmarks/, beside this script

Image.MAX_IMAGE_PIXELS = None  # the packaged wallpapers are trusted, and some are large

log = logging.getLogger("vaepipe")
RESULTS = Path(__file__).resolve().parent / "results"
N_QUERIES = 60  # originals edited per folder
TILE = 256
RERANK_DEPTHS: list[int] = []  # tuning (--rerank-depths): views.RERANK_DEPTH of extra "vaepipe depth N" methods

# ---------------------------------------------------------------- sources (Debian packages, split by source)

WALLPAPERS = {
    "val": ["/usr/share/backgrounds/mate/**/*.jpg", "/usr/share/backgrounds/mate/**/*.png",
            "/usr/share/wallpapers/[A-K]*/contents/images/*"],
    "test": ["/usr/share/wallpapers/[L-Z]*/contents/images/*", "/usr/share/wallpapers/[a-z]*/contents/images/*",
             "/usr/share/backgrounds/*.jpg", "/usr/share/backgrounds/*.png", "/usr/share/backgrounds/gnome/*-l.webp"],
}
CLIPART = {
    "val": ["animals", "people", "food", "transportation", "tools", "office", "special"],
    "test": ["recreation", "plants", "buildings", "education", "geography", "electronics", "unsorted"],
}
ICON_THEMES = {"val": ["oxygen/base", "Tango"], "test": ["Adwaita", "gnome", "hicolor"]}
PACKAGES = ["mate-backgrounds", "plasma-workspace-wallpapers", "ukui-wallpapers", "gnome-backgrounds",
            "lomiri-wallpapers", "openclipart-png", "oxygen-icon-theme", "tango-icon-theme", "gnome-icon-theme",
            "adwaita-icon-theme", "hicolor-icon-theme"]


def glob_files(patterns: list[str]) -> list[Path]:
    return sorted({p for pattern in patterns for p in Path("/").glob(pattern.lstrip("/")) if p.is_file()})


# ---------------------------------------------------------------- the everyday edits

def _banner(img: Image.Image, rng: random.Random) -> Image.Image:
    """A dark band with text over the bottom fifth, as a caption or a meme tool leaves it."""
    out = img.convert("RGBA")
    layer = Image.new("RGBA", out.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    w, h = out.size
    draw.rectangle((0, int(h * 0.8), w, h), fill=(20, 20, 20, 215))
    words = " ".join(rng.choice(["holiday", "2019", "SALE", "copy", "best of", "lol", "me", "@friend"]) for _ in range(3))
    draw.text((w * 0.05, h * 0.84), words, fill=(255, 255, 255, 255), font_size=max(8, h // 12))
    return Image.alpha_composite(out, layer).convert("RGBA" if has_alpha(img) else "RGB")


def _flatten(img: Image.Image, colour: tuple[int, int, int]) -> Image.Image:
    rgba = img.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, colour + (255,)), rgba).convert("RGB")


def as_rgb(img: Image.Image) -> Image.Image:
    """What a JPEG writer makes of a transparent image: flattened onto white (as GIMP, browsers, converters do)."""
    return _flatten(img, (255, 255, 255)) if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info else img.convert("RGB")


# name -> (edit, file suffix); every edit takes the original as PIL decoded it
EDITS: dict[str, tuple[Callable[[Image.Image, random.Random], Image.Image], str]] = {
    "jpeg q30": (lambda im, r: as_rgb(im), ".jpg"),  # saved with quality 30 below
    "half size": (lambda im, r: im.resize((max(1, im.width // 2), max(1, im.height // 2)), Image.Resampling.LANCZOS), ".png"),
    "aspect 70%": (lambda im, r: im.resize((im.width, max(1, round(im.height * 0.7))), Image.Resampling.LANCZOS), ".png"),
    "brightness x0.7": (lambda im, r: ImageEnhance.Brightness(as_rgb(im)).enhance(0.7), ".png"),
    "brightness x1.4": (lambda im, r: ImageEnhance.Brightness(as_rgb(im)).enhance(1.4), ".png"),
    "greyscale": (lambda im, r: as_rgb(im).convert("L"), ".png"),
    "border 10%": (lambda im, r: ImageOps.expand(as_rgb(im), border=max(1, round(0.1 * max(im.size))), fill="white"), ".png"),
    "banner with text": (_banner, ".png"),
    "crop 80%": (lambda im, r: ImageOps.crop(im, border=0).crop((round(im.width * 0.1), round(im.height * 0.1),
                                                               round(im.width * 0.9), round(im.height * 0.9))), ".png"),
    "mirror": (lambda im, r: ImageOps.mirror(im), ".png"),
    "rotate 10°": (lambda im, r: im.rotate(10, resample=Image.Resampling.BILINEAR, expand=True), ".png"),
    "flattened on white": (lambda im, r: _flatten(im, (255, 255, 255)), ".png"),
    "flattened on black": (lambda im, r: _flatten(im, (0, 0, 0)), ".png"),
}
TRANSPARENCY_EDITS = ("flattened on white", "flattened on black")
EDITS_BY_FOLDER = {
    "photos": [e for e in EDITS if e not in TRANSPARENCY_EDITS],
    "clipart": list(EDITS),
    "icons": list(TRANSPARENCY_EDITS) + ["jpeg q30", "half size", "greyscale", "mirror"],
}


def write_edit(img: Image.Image, edit: str, dest: Path, rng: random.Random) -> Path:
    fn, suffix = EDITS[edit]
    out = fn(img, rng)
    dest = dest.with_suffix(suffix)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".jpg":
        out.convert("RGB" if out.mode != "L" else "L").save(dest, quality=30)
    else:
        out.save(dest)
    return dest


def has_alpha(img: Image.Image) -> bool:
    if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
        return img.convert("RGBA").getchannel("A").getextrema()[0] < 250
    return False


# ---------------------------------------------------------------- building the folders

def make_photos(split: str | list[str], dest: Path, per_side: int = 3, tile: int = TILE) -> list[Path]:
    """Wallpapers (the largest file of each) scaled to a shorter side of per_side tiles, cut into square tiles;
    near-blank tiles and tiles that look like an earlier one at 16 px are dropped (they are not distinct).
    split: "val" or "test", or a list of glob patterns."""
    by_name: dict[str, Path] = {}
    for p in glob_files(WALLPAPERS[split] if isinstance(split, str) else split):
        key = p.parent.parent.parent.name if p.parent.name == "images" else p.stem.split("_")[0]
        try:
            with Image.open(p) as im:
                area = im.width * im.height
        except Exception:
            continue
        if key not in by_name or area > Image.open(by_name[key]).size[0] * Image.open(by_name[key]).size[1]:
            by_name[key] = p
    out, thumbs = [], []
    for key, p in sorted(by_name.items()):
        im = as_rgb(Image.open(p))
        scale = per_side * tile / min(im.size)
        im = im.resize((round(im.width * scale), round(im.height * scale)), Image.Resampling.LANCZOS)
        for r in range(im.height // tile):
            for c in range(im.width // tile):
                piece = im.crop((c * tile, r * tile, (c + 1) * tile, (r + 1) * tile))
                small = np.asarray(piece.resize((16, 16), Image.Resampling.BOX), np.float32)
                if small.std() < 12 or any(np.abs(small - t).mean() < 6 for t in thumbs):
                    continue
                thumbs.append(small)
                f = dest / f"{key}-{r}-{c}.jpg"
                f.parent.mkdir(parents=True, exist_ok=True)
                piece.save(f, quality=92)
                out.append(f)
    return out


def make_clipart(split: str, dest: Path, n: int = 600, seed: int = 0) -> list[Path]:
    files = [p for c in CLIPART[split] for p in sorted(Path("/usr/share/openclipart/png", c).rglob("*.png"))]
    random.Random(seed).shuffle(files)
    out, seen = [], set()
    for p in files:
        if len(out) >= n:
            break
        try:
            im = Image.open(p)
            im.load()
        except Exception:
            continue
        if not has_alpha(im) or im.getbbox() is None:
            continue
        key = p.stem.rsplit("_", 1)[0]  # openclipart ships some drawings twice (_01, _02)
        if key in seen:
            continue
        seen.add(key)
        if max(im.size) > 256:
            im.thumbnail((256, 256), Image.Resampling.LANCZOS)
        f = dest / p.parent.name / p.name
        f.parent.mkdir(parents=True, exist_ok=True)
        im.save(f)
        out.append(f)
    return out


def make_icons(split: str, dest: Path, n_names: int = 250, seed: int = 0) -> dict[str, list[Path]]:
    """Icons drawn at several sizes: {theme/category/name: [files, one per size]}, transparent PNGs as shipped."""
    groups: dict[str, list[tuple[str, Path]]] = {}
    for theme in ICON_THEMES[split]:
        root = Path("/usr/share/icons", theme)
        for p in sorted(root.rglob("*.png")):
            rel = p.relative_to(root).parts  # <size>/<category>/<name>.png
            if len(rel) != 3 or "x" not in rel[0] or "symbolic" in p.name:
                continue
            groups.setdefault(f"{theme.split('/')[0]}/{rel[1]}/{p.stem}", []).append((rel[0], p))
    names = sorted(k for k, v in groups.items() if len(v) >= 3)
    random.Random(seed).shuffle(names)
    out: dict[str, list[Path]] = {}
    seen: set[str] = set()
    for name in names:
        if len(out) == n_names:
            break
        # Themes ship one drawing under several names (links, legacy names): one of them only, or a copy's
        # original would have a twin that search cannot tell from it.
        largest = max((p for _, p in groups[name]), key=lambda p: p.stat().st_size)
        digest = hashlib.sha256(largest.read_bytes()).hexdigest()
        if digest in seen:
            continue
        seen.add(digest)
        files = []
        for size, p in groups[name]:
            f = dest / name.replace("/", "-") / f"{size}.png"
            f.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(p, f)
            files.append(f)
        out[name] = files
    return out


def prepare_split(split: str, root: Path) -> dict:
    """Write the folders of a split (once; reused while truth.json is there) and return their truth."""
    base = root / split
    truth_file = base / "truth.json"
    if truth_file.exists():
        return json.loads(truth_file.read_text())
    missing = [p for p in PACKAGES if subprocess.run(["dpkg", "-s", p], capture_output=True).returncode]
    if missing:
        sys.exit(f"missing Debian packages for the real folders: {' '.join(missing)} (make bench-deps)")
    shutil.rmtree(base, ignore_errors=True)
    rng = random.Random(0)
    truth: dict = {}

    def queries_for(folder: str, originals: list[Path], coll: Path, edits: list[str]) -> dict:
        q: dict[str, str] = {}
        for i, orig in enumerate(originals):
            img = Image.open(orig)
            img.load()
            for edit in edits:
                if edit in TRANSPARENCY_EDITS and not has_alpha(img):
                    continue
                dest = base / folder / "queries" / edit.replace(" ", "_").replace("%", "pc").replace("°", "deg") / f"{i:03d}"
                q[str(write_edit(img, edit, dest, rng).relative_to(base))] = str(orig.relative_to(coll))
        return q

    for folder, make in (("photos", make_photos), ("clipart", make_clipart)):
        coll = base / folder / "collection"
        files = make(split, coll)
        picks = sorted(rng.sample(files, min(N_QUERIES, len(files))))
        truth[folder] = {"collection": str(coll.relative_to(base)), "n": len(files),
                         "queries": queries_for(folder, picks, coll, EDITS_BY_FOLDER[folder])}
    coll = base / "icons" / "collection"
    groups = make_icons(split, coll)
    largest = [max(fs, key=lambda f: Image.open(f).size[0]) for fs in groups.values()]
    picks = sorted(rng.sample(largest, min(N_QUERIES, len(largest))))
    truth["icons"] = {"collection": str(coll.relative_to(base)), "n": sum(len(v) for v in groups.values()),
                      "queries": queries_for("icons", picks, coll, EDITS_BY_FOLDER["icons"]),
                      "sizes": {k: [str(f.relative_to(coll)) for f in v] for k, v in groups.items()}}

    truth["mixed"] = make_mixed(base, "mixed", rng)
    truth_file.write_text(json.dumps(truth, indent=1))
    return truth


def make_mixed(base: Path, folder: str, rng: random.Random) -> dict:
    """A mixed folder: a third of each of the split's folders plus 170 edited copies of some of them, inside the
    collection; its truth (the copies and their originals)."""
    coll = base / folder / "collection"
    shutil.rmtree(coll, ignore_errors=True)
    members: list[tuple[Path, Path]] = []  # (source, in mixed)
    for source in ("photos", "clipart", "icons"):
        src = sorted(f for f in (base / source / "collection").rglob("*") if f.is_file())
        for p in rng.sample(src, len(src) // 3):
            d = coll / source / p.relative_to(base / source / "collection")
            d.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(p, d)
            members.append((p, d))
    copies: dict[str, str] = {}
    for i, (_, d) in enumerate(rng.sample(members, 170)):
        img = Image.open(d)
        img.load()
        edits = [e for e in EDITS if e not in TRANSPARENCY_EDITS or has_alpha(img)]
        edit = rng.choice(edits)
        dest = coll / "copies" / f"{i:03d}-{edit.replace(' ', '_').replace('%', 'pc').replace('°', 'deg')}"
        copies[str(write_edit(img, edit, dest, rng).relative_to(coll))] = str(d.relative_to(coll))
    return {"collection": str(coll.relative_to(base)), "n": len(members) + len(copies), "copies": copies}


def more_mixed(split: str, root: Path, truth: dict, folders: list[str]) -> dict:
    """Another draw of the mixed folder for each `mixed-N` in folders (seed N; validation only), written once and
    kept in truth.json: one mixed folder of 170 copies is a small sample to choose duplicate settings on."""
    for folder in folders:
        if not folder.startswith("mixed-") or folder in truth:
            continue
        if split != "val" or not folder[len("mixed-"):].isdigit():
            sys.exit(f"{folder}: more draws of the mixed folder are for tuning: --split val, named mixed-<seed>")
        truth[folder] = make_mixed(root / split, folder, random.Random(int(folder[len("mixed-"):])))
        (root / split / "truth.json").write_text(json.dumps(truth, indent=1))
    return truth


# ---------------------------------------------------------------- baselines

def naive_pixels(paths: list[Path], side: int = 32) -> np.ndarray:
    """What a 20-line script does: convert("RGB"), resize to side x side, flatten."""
    out = np.zeros((len(paths), side * side * 3), np.float32)
    for i, p in enumerate(paths):
        out[i] = np.asarray(Image.open(p).convert("RGB").resize((side, side), Image.Resampling.BILINEAR), np.float32).ravel() / 255
    return out


def hashes(paths: list[Path], kind: str) -> np.ndarray:
    import imagehash

    fn = imagehash.phash if kind == "phash" else imagehash.dhash
    return np.stack([fn(Image.open(p)).hash.ravel() for p in paths]).astype(np.uint8)


def cosine_scores(db: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Similarity of every query to every database vector with the product's metric (centred on the database)."""
    centre = db.mean(0).astype(np.float32)
    return prepare(q, "cosine", centre) @ prepare(db, "cosine", centre).T


def expected_recall(scores: np.ndarray, truth: np.ndarray, k: int, also: np.ndarray | None = None) -> np.ndarray:
    """Per query: the chance that the true row is in the top k when ties are ordered at random. also: (queries,
    rows) mask of other rows that count as found (the same icon drawn at another size)."""
    if also is None:
        true = scores[np.arange(len(truth)), truth][:, None]
        better = (scores > true).sum(1)
        tied = (scores == true).sum(1)  # includes the true row
        return np.clip((k - better) / tied, 0, 1)
    right = also.copy()
    right[np.arange(len(truth)), truth] = True
    best = np.where(right, scores, -np.inf).max(1, keepdims=True)
    better = ((scores > best) & ~right).sum(1)
    tied = ((scores == best) & ~right).sum(1) + 1
    return np.clip((k - better) / tied, 0, 1)


# ---------------------------------------------------------------- the product

def build(folder: Path, workdir: Workdir, cfg: TrainConfig) -> dict:
    r = build_collection(folder, workdir, BuildConfig(train=cfg, index=IndexConfig(kind="flat")))
    last = r.trained.metrics[-1] if r.trained.metrics else {}
    return {"model_id": r.trained.model_id, "ingest_s": r.seconds["ingest"], "train_s": r.seconds["model"],
            "embed_index_s": r.seconds["embed"] + r.seconds["index"],
            "epochs": len(r.trained.metrics), "val_elbo": last.get("val_elbo"), "val_kl": last.get("val_kl"),
            "active_units": last.get("val_active_units"),
            "likelihood": load_checkpoint(r.trained.model_dir / "model.pt").config.likelihood}


def product_embedded(workdir: Workdir, paths: list[Path]) -> Embedded:
    model = load_checkpoint(workdir.model_file(workdir.read_collection()["model_id"]))
    done, batches = [], []
    for idx, embedded, errors in encode_files(model, paths, 256, 2):
        assert not errors, errors
        done += idx
        batches.append(embedded)
    assert done == list(range(len(paths)))
    return Embedded.concat(batches, model.config.latent_dim)


def product_scores(index: SearchIndex, queries: Embedded, prepared: bool = False) -> np.ndarray:
    """Each query's similarity to every collection image, as the product's search ranks them (greyscale queries
    among the grey renderings): (Q, N), an exact search for all N."""
    n = index.meta["n"]
    rows, _, sim = index.search(queries, n, prepared=prepared)
    assert (rows >= 0).all()
    out = np.empty((len(queries), n), np.float32)
    np.put_along_axis(out, rows, sim, axis=1)
    return out


def evaluate_folder(name: str, base: Path, t: dict, cfg: TrainConfig, work: Path, baselines: bool = True) -> dict:
    coll = base / t["collection"]
    workdir = Workdir(work / name)
    shutil.rmtree(workdir.root, ignore_errors=True)
    built = build(coll, workdir, cfg)
    index = SearchIndex.open(workdir.index_dir(built["model_id"]))
    db_paths = [coll / p for p in index.ids["path"].to_pylist()]
    row_of = {p: i for i, p in enumerate(index.ids["path"].to_pylist())}
    dim = index.dim
    methods: dict[str, Callable[[list[Path]], np.ndarray]] = {"pixels 32 px": naive_pixels}
    feats = {m: fn(db_paths) for m, fn in methods.items()}
    mean = feats["pixels 32 px"].mean(0)
    _, _, vt = np.linalg.svd(feats["pixels 32 px"] - mean, full_matrices=False)
    pca = vt[:dim].T
    feats[f"PCA-{dim}"] = (feats["pixels 32 px"] - mean) @ pca
    hash_db = {h: hashes(db_paths, h) for h in ("phash", "dhash")} if baselines else {}
    out: dict = {"build": built, "n": len(db_paths)}
    model = load_checkpoint(workdir.model_file(built["model_id"]))
    views_model = model if views.uses_views(model, index) else None

    def score(method: str, q_paths: list[Path]) -> np.ndarray:
        if method in ("phash", "dhash"):
            qh = hashes(q_paths, method)
            return -(qh[:, None, :] != hash_db[method][None]).sum(2).astype(np.float32)
        if method == "vaepipe as stored":
            return product_scores(index, product_embedded(workdir, q_paths))
        if method.startswith("vaepipe depth "):
            saved, views.RERANK_DEPTH = views.RERANK_DEPTH, int(method.split()[-1])
            try:
                return score("vaepipe", q_paths)
            finally:
                views.RERANK_DEPTH = saved
        if method == "vaepipe":
            queries = product_embedded(workdir, q_paths)
            s = product_scores(index, queries)
            if views_model is not None:  # as search_files orders its shortlist: again through edited views
                top = np.argsort(-s, axis=1, kind="stable")[:, :views.RERANK_DEPTH]
                t = time.monotonic()
                rows, sim = views.rerank(index, views_model, coll, q_paths, queries, top,
                                         np.take_along_axis(s, top, 1))
                timing = out.setdefault("rerank", {}).setdefault(str(views.RERANK_DEPTH), {"queries": 0, "seconds": 0.0})
                timing["queries"] += len(q_paths)
                timing["seconds"] += time.monotonic() - t
                np.put_along_axis(s, rows, sim, axis=1)
            return s
        q = (naive_pixels(q_paths) - mean) @ pca if method.startswith("PCA") else methods[method](q_paths)
        return cosine_scores(feats[method], q)

    all_methods = ["vaepipe"] + (["vaepipe as stored"] + [f"vaepipe depth {d}" for d in RERANK_DEPTHS]
                                 if views_model is not None else []) + (
        ["pixels 32 px", f"PCA-{dim}", "phash", "dhash"] if baselines else [])
    if "queries" in t:
        by_edit: dict[str, list[tuple[str, str]]] = {}
        for q, orig in t["queries"].items():
            by_edit.setdefault(Path(q).parent.name, []).append((q, orig))
        out["edits"] = {}
        for edit, pairs in sorted(by_edit.items()):
            q_paths = [base / q for q, _ in pairs]
            truth = np.asarray([row_of[o] for _, o in pairs])
            also = None
            if "sizes" in t:  # an icon theme draws each icon at several sizes: any of them is the same picture
                group_of = {p: g for g, ps in t["sizes"].items() for p in ps}
                g = np.asarray([group_of[p] for p in index.ids["path"].to_pylist()])
                also = g[None, :] == np.asarray([group_of[o] for _, o in pairs])[:, None]
            out["edits"][edit] = {}
            for m in all_methods:
                s = score(m, q_paths)
                out["edits"][edit][m] = {f"r@{k}": float(expected_recall(s, truth, k).mean()) for k in (1, 10)}
                if also is not None:
                    out["edits"][edit][m]["r@1 any size"] = float(expected_recall(s, truth, 1, also).mean())
    if "sizes" in t:  # icons drawn at several sizes: do the other sizes come up among an icon's top 10?
        group_of = {p: g for g, ps in t["sizes"].items() for p in ps}
        g = np.asarray([group_of[p] for p in index.ids["path"].to_pylist()])
        same = g[:, None] == g[None]
        np.fill_diagonal(same, False)
        out["sizes"] = {}
        for m in all_methods:
            if m in ("phash", "dhash"):
                s = -(hash_db[m][:, None, :] != hash_db[m][None]).sum(2).astype(np.float32)
            elif m.startswith("vaepipe"):
                s = product_scores(index, index.stored(np.arange(len(db_paths))), prepared=True)
            else:
                s = cosine_scores(feats[m], feats[m])
            np.fill_diagonal(s, -np.inf)
            rng = np.random.default_rng(0)
            order = np.lexsort((rng.random(s.shape), -s), axis=1)[:, :10]  # ties in random order
            hits = np.take_along_axis(same, order, 1)
            out["sizes"][m] = {"top1": float(hits[:, 0].mean()), "any in top 10": float(hits.any(1).mean()),
                               "recall@10": float((hits.sum(1) / np.minimum(same.sum(1), 10)).mean())}
    if "copies" in t:
        out["duplicates"] = duplicates_quality(workdir, t, hash_db)
    return out


def _shown_pixels(path: Path) -> str | None:
    """What a file shows, as a key: its RGBA pixels (colour under full transparency, which nothing shows, zeroed) and
    their size; None where it does not open."""
    try:
        with Image.open(path) as img:
            rgba = np.array(img.convert("RGBA"))
    except Exception:  # Pillow raises anything; such a file is only not merged with another
        return None
    rgba[rgba[..., 3] == 0] = 0
    return hashlib.sha256(rgba.tobytes() + repr(rgba.shape).encode()).hexdigest()


def true_groups(workdir: Workdir, t: dict) -> dict[str, list[str]]:
    """What a person calls one picture in the mixed folder: an original with its edited copies, an icon with the
    same icon at its other sizes (the theme's own "half size" copies) and their copies, and files that show the same
    pixels (an icon theme draws some pictures under two names: oxygen's video-x-theora+ogg and video-x-theor+ogg)."""
    import pyarrow.parquet as pq

    def key(path: str) -> str:
        path = t["copies"].get(path, path)
        return "/".join(path.split("/")[:2]) if path.startswith("icons/") else path

    paths = pq.read_table(workdir.manifest, columns=["path"])["path"].to_pylist()
    root = Path(workdir.read_collection()["image_root"])
    keys = sorted({key(p) for p in paths})
    node = {k: i for i, k in enumerate(keys)}
    first_showing: dict[str, int] = {}
    a, b = [], []  # keys joined by a file that shows the same pixels as a file of the other
    for p in paths:
        pixels = _shown_pixels(root / p)
        if pixels is not None:
            a.append(first_showing.setdefault(pixels, node[key(p)]))
            b.append(node[key(p)])
    component = _components(len(keys), np.asarray(a, np.int64), np.asarray(b, np.int64))
    groups: dict[int, list[str]] = {}
    for p in paths:
        groups.setdefault(int(component[node[key(p)]]), []).append(p)
    return {keys[k]: v for k, v in groups.items() if len(v) > 1}


SWEEP = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99)


def _pairs(groups: list[list[str]]) -> set[tuple[str, str]]:
    return {(a, b) for g in groups for a in g for b in g if a < b}


def _scored(pred: set[tuple[str, str]], truth: set[tuple[str, str]], copies: set[tuple[str, str]]) -> dict[str, float]:
    """Pair precision and recall against the true groups, and copy recall: the share of known copies grouped with
    their original (what the issue's target counts; icon sizes only count for precision and pair recall)."""
    return {"pair precision": len(pred & truth) / max(len(pred), 1), "pair recall": len(pred & truth) / len(truth),
            "copy recall": len(pred & copies) / len(copies)}


def duplicates_quality(workdir: Workdir, t: dict, hash_db: dict) -> dict:
    """Pair precision and recall of the product's duplicate groups against the true groups (true_groups), at the
    default threshold, for k = 10 and 20 (they must not differ), and at fixed thresholds."""
    truth = _pairs(list(true_groups(workdir, t).values()))
    copies = {tuple(sorted(pair)) for pair in t["copies"].items()}
    res: dict = {"known copies": len(copies)}
    for k in (10, 20):
        q = query_all(workdir, k=k)
        groups_tbl = __import__("pyarrow.parquet", fromlist=["x"]).read_table(q.duplicates).to_pandas()
        groups = [list(g["path"]) for _, g in groups_tbl.groupby("group")]
        pred = _pairs(groups)
        sizes = sorted((len(g) for g in groups), reverse=True)
        res[f"k={k}"] = {"threshold": json.loads((q.run_dir / "run.json").read_text()).get("duplicate_threshold"),
                         "groups": len(groups), "largest": sizes[:5], "in groups": sum(sizes), **_scored(pred, truth, copies)}
        if k == 10:  # what is missed and what is wrong, to look at: copy recall by edit, and the pairs that are not
            by_edit: dict[str, list[bool]] = {}
            for pair in copies:
                copy = pair[0] if pair[0].startswith("copies/") else pair[1]
                by_edit.setdefault(copy.split("/")[1].split("-", 1)[1].rsplit(".", 1)[0], []).append(pair in pred)
            res["copy recall by edit"] = {e: f"{sum(v)}/{len(v)}" for e, v in sorted(by_edit.items())}
            res["wrong pairs"] = sorted(pred - truth)
    # The same at fixed thresholds, to see how far the calibrated one is from the best it could be.
    collection = workdir.read_collection()
    index = SearchIndex.open(workdir.index_dir(collection["model_id"]))
    res["sweep"] = {}
    for thr in SWEEP:  # as the product groups them: with the edited views of models trained for copies
        groups = [list(g["path"]) for _, g in find_duplicates(workdir, thr).to_pandas().groupby("group")]
        pred = _pairs(groups)
        res["sweep"][f"{thr:g}"] = {**_scored(pred, truth, copies), "groups": len(groups)}
    res["calibration"] = json.loads((q.run_dir / "run.json").read_text()).get("duplicate_calibration")
    if hash_db:  # imagededup's way: images within a Hamming distance of each other's pHash, joined into groups
        paths = index.ids["path"].to_pylist()
        dist = (hash_db["phash"][:, None, :] != hash_db["phash"][None]).sum(2)
        res["phash"] = {}
        for d in (4, 6, 10):
            parent = list(range(len(paths)))

            def find(x: int) -> int:
                while parent[x] != x:
                    parent[x] = parent[parent[x]]
                    x = parent[x]
                return x

            for a, b in zip(*np.nonzero(np.triu(dist <= d, 1))):
                parent[find(a)] = find(b)
            comps: dict[int, list[str]] = {}
            for i, p in enumerate(paths):
                comps.setdefault(find(i), []).append(p)
            pred = _pairs([g for g in comps.values() if len(g) > 1])
            res["phash"][f"<= {d}"] = _scored(pred, truth, copies)
    return res


# ---------------------------------------------------------------- report

def summary_rows(r: dict) -> list[str]:
    lines = []
    for folder, f in r["folders"].items():
        if "edits" not in f:
            continue
        methods = list(next(iter(f["edits"].values())))
        lines += ["", f"**{folder}** ({f['n']} images; model: {f['build']['epochs']} epochs, train {f['build']['train_s']:.0f} s, "
                  f"val ELBO {f['build']['val_elbo']:.0f} nats ({f['build']['likelihood']}), {f['build']['active_units']} active units). Recall@1 / recall@10:",
                  "", "| edit | " + " | ".join(methods) + " |", "|---|" + "---:|" * len(methods)]
        for edit, m in f["edits"].items():
            lines.append(f"| {edit} | " + " | ".join(f"{m[x]['r@1']:.2f} / {m[x]['r@10']:.2f}" for x in methods) + " |")
        means = {x: (np.mean([m[x]["r@1"] for m in f["edits"].values()]), np.mean([m[x]["r@10"] for m in f["edits"].values()])) for x in methods}
        lines.append("| **mean** | " + " | ".join(f"**{a:.2f}** / {b:.2f}" for a, b in means.values()) + " |")
        if all("r@1 any size" in m[x] for m in f["edits"].values() for x in methods):
            lines.append("| mean r@1, the same icon at another size counting as found | "
                         + " | ".join(f"{np.mean([m[x]['r@1 any size'] for m in f['edits'].values()]):.2f}" for x in methods) + " |")
        if "sizes" in f:
            lines += ["", "Icon sizes (the same icon drawn at other sizes): other size at rank 1 / any in top 10 / recall@10:", "",
                      "| " + " | ".join(f["sizes"]) + " |", "|" + "---:|" * len(f["sizes"]),
                      "| " + " | ".join(f"{v['top1']:.2f} / {v['any in top 10']:.2f} / {v['recall@10']:.2f}" for v in f["sizes"].values()) + " |"]
    for folder, f in r["folders"].items():
        if "duplicates" not in f:
            continue
        d = f["duplicates"]
        known = d.get("known copies", len(r["truth_copies"]))  # runs before 2026-12-04 had only "mixed"
        lines += ["", f"**{folder}** ({f['n']} images, {known} known copies): duplicate groups", "",
                  "| k | threshold | groups | images in groups | largest | pair precision | pair recall | copy recall |",
                  "|---|---:|---:|---:|---|---:|---:|---:|"]
        for k in ("k=10", "k=20"):
            v = d[k]
            lines.append(f"| {k} | {v['threshold']:.4f} | {v['groups']} | {v['in groups']} | {v['largest']} | "
                         f"{v['pair precision']:.3f} | {v['pair recall']:.3f} | {v.get('copy recall', float('nan')):.3f} |")
        lines += ["", "The same groups at fixed thresholds (pair precision / pair recall / copy recall):", "",
                  "| " + " | ".join(d["sweep"]) + " |", "|" + "---:|" * len(d["sweep"]),
                  "| " + " | ".join(f"{v['pair precision']:.2f} / {v['pair recall']:.2f} / {v.get('copy recall', float('nan')):.2f}"
                                    for v in d["sweep"].values()) + " |"]
        if "phash" in d:
            lines += ["", "pHash groups (Hamming distance, as imagededup finds them), pair precision / pair recall / copy recall: "
                      + ", ".join(f"{k}: {v['pair precision']:.2f} / {v['pair recall']:.2f} / {v.get('copy recall', float('nan')):.2f}"
                                  for k, v in d["phash"].items())]
    return lines


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--split", choices=["val", "test"], default="val")
    p.add_argument("--folders", nargs="+", default=["photos", "clipart", "icons", "mixed"])
    p.add_argument("--data-root", type=Path, default=Path("/tmp/vaepipe-copies"), help="where the folders are written")
    p.add_argument("--name", default=None)
    add_recipe_flags(p)
    p.add_argument("--vae-only", action="store_true", help="tuning: skip the baselines (they do not change between runs)")
    p.add_argument("--table", action="store_true", help="print the table of every copies-* run in benchmarks/results and exit")
    p.add_argument("--rerank-depths", nargs="*", type=int, default=[],
                   help="tuning: also rank through views with views.RERANK_DEPTH set to each")
    args = p.parse_args(argv)
    RERANK_DEPTHS[:] = args.rerank_depths
    if args.table:
        print_table()
        return {}
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    name = args.name or f"{args.split}-{time.strftime('%Y%m%d-%H%M%S')}"
    truth = more_mixed(args.split, args.data_root, prepare_split(args.split, args.data_root), args.folders)
    cfg = recipe(args)
    work = args.data_root / "work" / name
    t0 = time.monotonic()
    r: dict = {"name": name, "split": args.split, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               "command": "python " + " ".join([str(Path(sys.argv[0]))] + sys.argv[1:]), "train_config": asdict(cfg),
               "machine": f"{subprocess.run(['nproc'], capture_output=True, text=True).stdout.strip()} cores, torch {torch.__version__}, faiss {faiss.__version__}",
               "folders": {}, "truth_copies": truth["mixed"]["copies"]}
    for folder in args.folders:
        r["folders"][folder] = evaluate_folder(folder, args.data_root / args.split, truth[folder], cfg, work, not args.vae_only)
        log.info("copies: %s done", folder)
    r["seconds"] = time.monotonic() - t0
    md = "\n".join([f"Run `{name}` ({args.split}), {r['date']}, {r['machine']}. Command: `{r['command']}`"] + summary_rows(r)) + "\n"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"copies-{name}.json").write_text(json.dumps(r, indent=1, default=str) + "\n")
    (RESULTS / f"copies-{name}.md").write_text(md)
    print(md)
    shutil.rmtree(work, ignore_errors=True)
    return r


def print_table(pattern: str = "copies-*") -> None:
    """One row per run: the recipe (what differs from TrainConfig's defaults then), VAE recall@1 per folder, its
    worst edits, training time and ELBO."""
    runs = [json.loads(p.read_text()) for p in sorted(RESULTS.glob(f"{pattern}.json"))]
    defaults = asdict(TrainConfig())
    print("| run | split | recipe | photos r@1 | clipart r@1 | icons r@1 | icon sizes top 10 | dup. precision / recall | worst edits (photos, clipart) | train s | ELBO |")
    print("|---|---|---|---:|---:|---:|---:|---|---|---:|---|")
    for r in sorted(runs, key=lambda r: r["date"]):
        # Settings that were tried and dropped from TrainConfig since are left out.
        recipe = ", ".join(f"{k} {v}" for k, v in r["train_config"].items() if k in defaults and defaults[k] != v) or "defaults"
        cells, worst, secs, elbo = [], [], [], []
        for folder in ("photos", "clipart", "icons"):
            f = r["folders"].get(folder)
            if not f or "edits" not in f:
                cells.append("")
                continue
            per = {e: m["vaepipe"]["r@1"] for e, m in f["edits"].items()}
            cells.append(f"{np.mean(list(per.values())):.3f}")
            if folder != "icons":
                worst += [f"{e} {v:.2f}" for e, v in sorted(per.items(), key=lambda kv: kv[1])[:2]]
            secs.append(f"{f['build']['train_s']:.0f}")
            elbo.append(f"{f['build']['val_elbo']:.0f}")
        sizes = r["folders"].get("icons", {}).get("sizes", {}).get("vaepipe", {}).get("any in top 10")
        dup = next((f for n, f in r["folders"].items() if n.startswith("mixed")), {}).get("duplicates", {}).get("k=10")
        sizes_cell = "" if sizes is None else f"{sizes:.2f}"
        dup_cell = "" if not dup else f"{dup['pair precision']:.2f} / {dup['pair recall']:.2f}" + (f" / {dup['copy recall']:.2f}" if 'copy recall' in dup else "")
        print(f"| {r['name']} | {r['split']} | {recipe} | {' | '.join(cells)} | {sizes_cell} | {dup_cell} | "
              f"{', '.join(worst)} | {'/'.join(secs)} | {'/'.join(elbo)} |")


if __name__ == "__main__":
    main()
