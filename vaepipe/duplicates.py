"""Duplicate groups from an all-against-all neighbour table.

  exact: files with the same sha256 (byte-identical content at several paths);
  near:  connected components of pairs that are in each other's neighbour lists with a similarity
         of at least the threshold.

The default threshold is calibrated per model, so it means the same thing on any collection: take a
sample of collection images, make the copies a person would call duplicates (re-saved as JPEG,
quality 85), and use the 5th percentile of the original-to-copy similarities. 95% of such copies
then land in a group with their original. Groups are connected components, so a loose threshold
chains look-alikes into one big group: pass a higher threshold when that happens.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

from vaepipe.images import ImageError, open_image, to_array, to_float
from vaepipe.index import SearchIndex, prepare
from vaepipe.model import VAE

log = logging.getLogger("vaepipe")

DUPLICATES_SCHEMA = pa.schema([("group", pa.int32()), ("kind", pa.string()), ("path", pa.string()), ("sha256", pa.string())])


def _resaved(img: Image.Image) -> Image.Image:
    """The copy a person calls a duplicate: the same picture re-saved as a JPEG (quality 85)."""
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=85)
    return Image.open(io.BytesIO(buf.getvalue()))


@torch.no_grad()
def calibrate_threshold(model: VAE, index: SearchIndex, image_root: Path, n: int = 200, seed: int = 0) -> float:
    """5th percentile of cosine similarity between sampled collection images and their re-saved copies."""
    paths = index.ids["path"].to_pylist()
    rng = np.random.default_rng(seed)
    pairs = []
    for i in rng.choice(len(paths), size=min(n, len(paths)), replace=False):
        try:
            img = open_image(Path(image_root) / paths[i], max_pixels=64_000_000)
            pairs.append((to_array(img, model.config.spec), to_array(_resaved(img), model.config.spec)))
        except (ImageError, OSError):
            continue
    if not pairs:
        return 0.99
    device = next(model.parameters()).device
    a = model.encode(to_float(torch.from_numpy(np.stack([p[0] for p in pairs]))).to(device))[0].cpu().numpy()
    b = model.encode(to_float(torch.from_numpy(np.stack([p[1] for p in pairs]))).to(device))[0].cpu().numpy()
    centre = np.asarray(index.meta["centre"], np.float32)
    sims = (prepare(a, "cosine", centre) * prepare(b, "cosine", centre)).sum(1)
    return float(np.quantile(sims, 0.05))


def duplicate_groups(neighbours: Path, ids: pa.Table, threshold: float) -> pa.Table:
    """Exact groups (same sha256) first, then near groups; each group's files in path order, biggest groups first."""
    paths_of: dict[str, list[str]] = {}
    for path, sha in zip(ids["path"].to_pylist(), ids["sha256"].to_pylist()):
        paths_of.setdefault(sha, []).append(path)

    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    close: set[tuple[str, str]] = set()
    for batch in pq.ParquetFile(neighbours).iter_batches(columns=["query_sha256", "neighbour_sha256", "similarity"]):
        q, nb, sim = (batch.column(i).to_numpy(zero_copy_only=False) for i in range(3))
        close.update((a, b) for a, b in zip(q[sim >= threshold], nb[sim >= threshold]) if a != b)
    for a, b in close:
        if (b, a) in close:  # mutual neighbours only: one-way links are how look-alikes chain into blobs
            parent[find(a)] = find(b)

    components: dict[str, list[str]] = {}
    for sha in parent:
        components.setdefault(find(sha), []).append(sha)
    exact = [sorted(p) for p in paths_of.values() if len(p) > 1]
    near = [sorted(p for sha in shas for p in paths_of.get(sha, [])) for shas in components.values() if len(shas) > 1]
    sha_of = dict(zip(ids["path"].to_pylist(), ids["sha256"].to_pylist()))
    ordered = [(kind, members) for kind, groups in (("exact", exact), ("near", near))
               for members in sorted(groups, key=lambda g: (-len(g), g[0]))]
    rows = [{"group": gid, "kind": kind, "path": p, "sha256": sha_of[p]}
            for gid, (kind, members) in enumerate(ordered, start=1) for p in members]
    log.info("duplicates: %d exact and %d near groups at similarity >= %.4f", len(exact), len(near), threshold)
    return pa.Table.from_pylist(rows, schema=DUPLICATES_SCHEMA)
