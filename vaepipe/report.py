"""Pages a person looks at: report.html for a query run (thumbnails, pages, duplicate groups, outliers, a page of
likely duplicates only), and the samples page.

Self-contained: thumbnails go to a sibling `thumbs/` folder (one per distinct content, relative links),
so a report opens from disk with no server and no network. Large runs are split into pages of
`per_page` queries; only the first `max_queries` queries get pages (the Parquet table has them all).
"""

from __future__ import annotations

import contextlib
import heapq
import html
import itertools
import logging
import os
import shutil
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from vaepipe.config import usable_cores
from vaepipe.images import open_image, plain_mode
from vaepipe.store import REPORT_FILE, atomic_path, file_path, sha256_file

log = logging.getLogger("vaepipe")

THUMB_SIDE = 96
WARNED_FAILURES = 10

CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;background:#fafafa;color:#222}
h1{font-size:1.4em} table.summary td{padding:2px 12px 2px 0} .nav a{margin-right:.6em}
.query{display:flex;gap:12px;align-items:flex-start;background:#fff;border:1px solid #ddd;border-radius:6px;
padding:8px;margin:10px 0}
.q{border-right:2px solid #888;padding-right:12px} figure{margin:0;width:104px;text-align:center}
figure img{width:96px;height:96px;object-fit:contain;background:repeating-conic-gradient(#ddd 0 25%,#fff 0 50%) 50%/12px 12px;image-rendering:pixelated;border-radius:3px}
figcaption{font-size:11px;word-break:break-all} .sim{font-weight:bold;font-size:12px} .missing{width:96px;height:96px;
background:repeating-linear-gradient(45deg,#eee,#eee 6px,#ccc 6px,#ccc 12px)}
.group{background:#fff;border:1px solid #ddd;border-radius:6px;padding:8px;margin:10px 0}
.group .imgs{display:flex;flex-wrap:wrap;gap:8px} .kind{font-size:12px;color:#555}
.outlier{display:flex;gap:12px;background:#fff;border:1px solid #ddd;border-radius:6px;padding:8px;margin:10px 0}
.outliers{display:flex;flex-wrap:wrap;gap:4px} .same{color:#a40;font-size:11px}
"""


@dataclass
class Thumbs:
    """Writes each distinct image once as a small JPEG (PNG if transparent) under `folder`; returns its link
    relative to the page. With `cache` (Workdir.thumbs_dir), thumbnails are kept there by content and linked into
    `folder`: a nightly report of the same collection makes only the new ones (the folder stays whole, so a run
    folder can still be moved or mailed on its own)."""

    folder: Path
    link_prefix: str = "thumbs"
    cache: Path | None = None

    def __post_init__(self) -> None:
        self.done: dict[str, str | None] = {}
        self.failed = 0  # images without a thumbnail; the first WARNED_FAILURES are logged one by one
        self._lock = threading.Lock()  # make() runs link() on several threads

    def make(self, items: Iterable[tuple[str, Path]], workers: int = 0) -> None:
        """Write the thumbnails of (sha256, source) pairs not made yet, on `workers` threads (0: one per core):
        Pillow lets go of the GIL while it decodes, scales and encodes, and a report is mostly that."""
        todo = dict(items)
        for sha256 in self.done:
            todo.pop(sha256, None)
        with ThreadPoolExecutor(workers or usable_cores()) as pool:
            list(pool.map(self.link, todo.keys(), todo.values()))

    def link(self, sha256: str, source: Path) -> str | None:
        if sha256 not in self.done:
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
                name = self._from_cache(sha256) or self._make(sha256, source)
                self.done[sha256] = f"{self.link_prefix}/{name}"
            except Exception as e:  # Pillow raises anything on a damaged file: no thumbnail, the report goes on
                with self._lock:
                    self.failed += 1
                    named = self.failed <= WARNED_FAILURES
                if named:
                    log.warning("report: no thumbnail for %s (%s)", source, e)
                self.done[sha256] = None
        return self.done[sha256]

    def _make(self, sha256: str, source: Path) -> str:
        # A palette with a transparent colour is transparent too (a plain convert("RGB") paints it black).
        img = plain_mode(open_image(source, max_pixels=64_000_000, draft_size=THUMB_SIDE))
        img = img.convert("RGBA" if "A" in img.getbands() else "RGB")
        img.thumbnail((THUMB_SIDE, THUMB_SIDE))
        # JPEG where there is no transparency: encoding a PNG cost more than decoding the photo.
        name = f"{sha256[:20]}.{'png' if img.mode == 'RGBA' else 'jpg'}"
        if img.mode == "RGBA":
            img.save(self.folder / name, format="PNG", compress_level=1)
        else:
            img.save(self.folder / name, format="JPEG", quality=90)
        # Kept for later runs only if the file is still the content it was indexed as: a file changed since then
        # would put its new picture under the old content's name.
        if self.cache is not None and sha256_file(source) == sha256:
            self.cache.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileExistsError):  # another thread or run kept it first: the same picture
                _link_or_copy(self.folder / name, self.cache / name)
        return name

    def _from_cache(self, sha256: str) -> str | None:
        if self.cache is None:
            return None
        for name in (f"{sha256[:20]}.jpg", f"{sha256[:20]}.png"):
            try:
                _link_or_copy(self.cache / name, self.folder / name)
                return name
            except FileNotFoundError:
                continue
        return None


def _same_file(a: Path, b: Path) -> bool:
    """Whether two paths are one file on disk (hard or symbolic links); False if either cannot be looked at."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _link_or_copy(src: Path, dest: Path) -> None:
    """dest as a hard link to src, or a copy where links are refused (another file system); whole or not at all."""
    try:
        os.link(src, dest)
    except FileExistsError:
        raise
    except OSError:
        if not src.exists():
            raise FileNotFoundError(src) from None
        with atomic_path(dest) as tmp:
            shutil.copyfile(src, tmp)


def _figure(link: str | None, caption: str, extra: str = "") -> str:
    img = f'<img src="{html.escape(link)}" alt="{html.escape(caption)}">' if link else '<div class="missing"></div>'
    return f"<figure>{img}{extra}<figcaption>{html.escape(caption)}</figcaption></figure>"


def _page(title: str, body: str) -> str:
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{CSS}</style></head><body>{body}</body></html>\n")


def _summary_table(summary: dict[str, object]) -> str:
    rows = "".join(f"<tr><td>{html.escape(str(k))}</td><td><b>{html.escape(str(v))}</b></td></tr>" for k, v in summary.items())
    return f'<table class="summary">{rows}</table>'


SHOWN_COLUMNS = ["query_path", "query_sha256", "rank", "neighbour_path", "neighbour_sha256", "similarity"]
BATCH_ROWS = 8192  # neighbour rows read at a time: a batch becomes Python objects, ~1 KB a row


def iter_queries(neighbours: Path, limit: int) -> Iterator[tuple[str, str, list[dict]]]:
    """(query path, query sha256, its neighbour rows) for the first `limit` queries, reading the table in batches."""
    current: tuple[str, str] | None = None
    rows: list[dict] = []
    seen = 0
    for batch in pq.ParquetFile(neighbours).iter_batches(batch_size=BATCH_ROWS, columns=SHOWN_COLUMNS):
        for row in batch.to_pylist():
            key = (row["query_path"], row["query_sha256"])
            if key != current:
                if current is not None:
                    yield current[0], current[1], rows
                    seen += 1
                    if seen >= limit:
                        return
                current, rows = key, []
            rows.append(row)
    if current is not None and seen < limit:
        yield current[0], current[1], rows


MAX_OUTLIERS = 50  # shown in the report
MAX_LIKELY = 2_000  # queries shown on the page of likely duplicates


def outliers(neighbours: Path, n: int = MAX_OUTLIERS) -> list[dict]:
    """The n queries whose nearest neighbour is least alike (their rank-1 rows, least alike first): in an
    all-against-all run the images farthest from everything else, in a query folder the queries most unlike the
    collection; two queries each other's nearest are shown once. Reads the table in batches, keeping 2n rows."""
    kept: list[dict] = []
    for batch in pq.ParquetFile(neighbours).iter_batches(batch_size=BATCH_ROWS, columns=SHOWN_COLUMNS):
        firsts = pa.Table.from_batches([batch]).filter(pc.equal(batch["rank"], 1))
        if firsts.num_rows:  # 2n: two images each other's nearest are one outlier pair, shown once
            least = firsts.take(pc.select_k_unstable(firsts, min(2 * n, firsts.num_rows), [("similarity", "ascending")]))
            kept = heapq.nsmallest(2 * n, kept + least.to_pylist(), key=lambda r: r["similarity"])
    shown, pairs = [], set()
    for r in kept:
        pair = frozenset((r["query_path"], r["neighbour_path"]))
        if pair not in pairs:
            pairs.add(pair)
            shown.append(r)
    return shown[:n]


def group_of(groups: pa.Table) -> dict[str, int]:
    """Each grouped path's duplicate group (duplicates.parquet's rows)."""
    return dict(zip(groups["path"].to_pylist(), groups["group"].to_pylist()))


def same_group_rows(neighbours: Path, group_of: dict[str, int], limit: int = MAX_LIKELY
                    ) -> list[tuple[str, str, list[dict]]]:
    """The likely duplicates only: (query path, sha256, rows) of the first `limit` queries that have neighbours in
    their own duplicate group (`group_of`), with those rows only. The table is filtered in Arrow, batch by batch."""
    grouped = pa.array(list(group_of), pa.string())
    found: dict[tuple[str, str], list[dict]] = {}
    for batch in pq.ParquetFile(neighbours).iter_batches(batch_size=BATCH_ROWS, columns=SHOWN_COLUMNS):
        table = pa.Table.from_batches([batch])
        table = table.filter(pc.and_(pc.is_in(table["query_path"], grouped), pc.is_in(table["neighbour_path"], grouped)))
        for row in table.to_pylist():
            if group_of[row["query_path"]] == group_of[row["neighbour_path"]]:
                key = (row["query_path"], row["query_sha256"])
                if key in found or len(found) < limit:
                    found.setdefault(key, []).append(row)
    return [(path, sha, rows) for (path, sha), rows in found.items()]


def write_query_report(run_dir: Path, neighbours: Path, collection_root: Path, query_root: Path,
                       summary: dict[str, object], groups: pa.Table | None = None,
                       per_page: int = 100, max_queries: int = 5_000, thumbs_cache: Path | None = None) -> Path:
    """report.html (summary, duplicate groups, outliers, first page of neighbours), report-NNNN.html for further
    pages and, with duplicate groups, likely-duplicates.html: each query's neighbours in its own group only.
    thumbs_cache: where thumbnails are kept across runs (Thumbs.cache).
    Pages are made one at a time (their thumbnails, then their HTML): memory does not grow with max_queries."""
    thumbs = Thumbs(run_dir / "thumbs", cache=thumbs_cache)
    n_queries = sum(1 for _ in iter_queries(neighbours, max_queries))  # every page's links name every page
    grouped = group_of(groups) if groups is not None else {}
    likely = same_group_rows(neighbours, grouped) if groups is not None else []
    odd = outliers(neighbours)

    def query_src(path: str) -> Path:
        return Path(file_path(query_root, path))

    def image_src(path: str) -> Path:
        return Path(file_path(collection_root, path))

    def pictured(queries: list[tuple[str, str, list[dict]]]) -> list[tuple[str, Path]]:
        return ([(qsha, query_src(qpath)) for qpath, qsha, _ in queries]
                + [(r["neighbour_sha256"], image_src(r["neighbour_path"])) for _, _, rows in queries for r in rows])

    thumbs.make(pictured(likely)
                + [(r["query_sha256"], query_src(r["query_path"])) for r in odd]
                + [(r["neighbour_sha256"], image_src(r["neighbour_path"])) for r in odd]
                + [(m["sha256"], image_src(m["path"])) for m in _shown_members(groups)])

    def block(qpath: str, qsha: str, rows: list[dict]) -> str:
        # The very file at other paths (hard or symbolic links) is named under the query, not shown as neighbours:
        # a file with ten links would otherwise fill the row with itself.
        links = [r["neighbour_path"] for r in rows
                 if r["neighbour_sha256"] == qsha and _same_file(query_src(qpath), image_src(r["neighbour_path"]))]
        note = (f'<div class="same">the same file (a link) at: {html.escape(", ".join(links))}</div>' if links else "")
        figs = [_figure(thumbs.link(qsha, query_src(qpath)), qpath, note)]
        same = grouped.get(qpath)
        for r in rows:
            if r["neighbour_path"] in links:
                continue
            note = ('<div class="same">same duplicate group</div>'
                    if same is not None and grouped.get(r["neighbour_path"]) == same else "")
            if r["neighbour_sha256"] == qsha:  # identical bytes at another path: a copy
                note = '<div class="same">identical bytes</div>'
            figs.append(_figure(thumbs.link(r["neighbour_sha256"], image_src(r["neighbour_path"])), r["neighbour_path"],
                                f'<div class="sim">#{r["rank"]} sim {r["similarity"]:.4f}</div>{note}'))
        return f'<div class="query"><div class="q">{figs[0]}</div>{"".join(figs[1:])}</div>'

    names = [REPORT_FILE] + [f"report-{i + 1:04d}.html" for i in range(1, max(1, -(-n_queries // per_page)))]
    nav = '<p class="nav">Pages: ' + "".join(f'<a href="{n}">{i + 1}</a>' for i, n in enumerate(names)) + "</p>"
    views = ('<p class="nav">' + ('<a href="likely-duplicates.html">Likely duplicates only</a>'
                                  if groups is not None else "")
             + f'<a href="{REPORT_FILE}#outliers">Outliers</a><a href="{REPORT_FILE}#neighbours">Neighbours</a></p>')
    shown = f"<p>Showing {n_queries:,} queries" + (f" (the first {max_queries:,}; all are in neighbours.parquet)" if n_queries >= max_queries else "") + ".</p>"
    head = f"<h1>vaepipe similarity report</h1>{_summary_table(summary)}{shown}{views}"
    group_html = _groups_html(groups, thumbs, collection_root) if groups is not None else ""
    outlier_html = _outliers_html(odd, thumbs, query_src, image_src)
    queries = iter_queries(neighbours, n_queries)
    for i, name in enumerate(names):
        page = list(itertools.islice(queries, per_page))
        thumbs.make(pictured(page))
        body = (head + group_html + outlier_html if i == 0 else f"<h1>vaepipe similarity report, page {i + 1}</h1>{views}") + nav
        body += f'<h2 id="neighbours">Neighbours</h2>{"".join(block(*q) for q in page)}{nav}'
        with atomic_path(run_dir / name) as tmp:
            tmp.write_text(_page("vaepipe report", body))
    if groups is not None:
        more = f" (the first {MAX_LIKELY:,}; duplicates.parquet has every group)" if len(likely) >= MAX_LIKELY else ""
        body = (f"<h1>vaepipe: likely duplicates only</h1>{views}<p>{len(likely):,} images{more} with their neighbours "
                "in the same duplicate group; look-alikes that are not in it are left out.</p>"
                + ("".join(block(*q) for q in likely) or "<p>None.</p>"))
        with atomic_path(run_dir / "likely-duplicates.html") as tmp:
            tmp.write_text(_page("vaepipe likely duplicates", body))
    if thumbs.failed > WARNED_FAILURES:  # a moved or deleted folder is one line, not one per image
        log.warning("report: %d more images without a thumbnail (changed, moved or unreadable since they were "
                    "indexed)", thumbs.failed - WARNED_FAILURES)
    log.info("report: %s (%d pages, %d thumbnails)", run_dir / REPORT_FILE, len(names), len(thumbs.done))
    return run_dir / REPORT_FILE


MAX_GROUPS, MAX_MEMBERS = 200, 40  # shown in the report; duplicates.parquet has every group and member


def _by_group(groups: pa.Table) -> dict[int, list[dict]]:
    by_group: dict[int, list[dict]] = {}
    for row in groups.to_pylist():
        by_group.setdefault(row["group"], []).append(row)
    return by_group


def _shown_members(groups: pa.Table | None) -> list[dict]:
    if groups is None:
        return []
    return [m for members in list(_by_group(groups).values())[:MAX_GROUPS] for m in members[:MAX_MEMBERS]]


def _groups_html(groups: pa.Table, thumbs: Thumbs, root: Path) -> str:
    if groups.num_rows == 0:
        return "<h2>Duplicate groups</h2><p>None found.</p>"
    by_group = _by_group(groups)
    parts = [f"<h2>Duplicate groups ({len(by_group):,})</h2>"]
    for gid, members in list(by_group.items())[:MAX_GROUPS]:
        figs = "".join(_figure(thumbs.link(m["sha256"], Path(file_path(root, m["path"]))), m["path"])
                       for m in members[:MAX_MEMBERS])
        if len(members) > MAX_MEMBERS:
            figs += f"<p>... and {len(members) - MAX_MEMBERS:,} more (see duplicates.parquet)</p>"
        kind = members[0]["kind"]
        parts.append(f'<div class="group"><div class="kind">group {gid}: {kind}, {len(members)} files</div>'
                     f'<div class="imgs">{figs}</div></div>')
    return "".join(parts)


def _outliers_html(rows: list[dict], thumbs: Thumbs, query_src: Callable[[str], Path],
                   image_src: Callable[[str], Path]) -> str:
    if not rows:
        return ""
    pairs = []
    for r in rows:
        query = _figure(thumbs.link(r["query_sha256"], query_src(r["query_path"])), r["query_path"])
        nearest = _figure(thumbs.link(r["neighbour_sha256"], image_src(r["neighbour_path"])), r["neighbour_path"],
                          f'<div class="sim">nearest, sim {r["similarity"]:.4f}</div>')
        pairs.append(f'<div class="outlier">{query}{nearest}</div>')
    return (f'<h2 id="outliers">Outliers ({len(rows)})</h2><p>The images least like anything else: their nearest '
            f'neighbour is the least alike of all.</p><div class="outliers">{"".join(pairs)}</div>')


def write_samples_page(samples_dir: Path, files: list[Path], summary: dict[str, object], note: str = "") -> Path:
    """index.html beside the sample PNGs: summary, a note on what to expect, grid, reconstructions, interpolation,
    then every sample."""
    def img(name: str, caption: str) -> str:
        return f'<figure style="width:auto"><img style="width:auto;height:auto" src="{name}" alt="{caption}"><figcaption>{caption}</figcaption></figure>'

    names = {f.name for f in files}
    body = f"<h1>vaepipe samples</h1>{_summary_table(summary)}"
    if note:
        body += f"<p>{html.escape(note)}</p>"
    for name, caption in [("grid.png", "samples from the prior N(0, I)"),
                          ("grid-fitted.png", "samples from a Gaussian fitted to the collection's latent means"),
                          ("reconstructions.png", "top: collection images; bottom: their reconstructions"),
                          ("interpolation.png", "interpolation between two images in latent space")]:
        if name in names:
            body += f"<h2>{caption}</h2>{img(name, caption)}"
    singles = sorted(n for n in names if n.startswith("sample-"))
    body += "<h2>Each sample</h2><div style='display:flex;flex-wrap:wrap;gap:6px'>" + "".join(
        f'<img src="{n}" alt="{n}" style="width:64px;height:64px;image-rendering:pixelated">' for n in singles) + "</div>"
    with atomic_path(samples_dir / "index.html") as tmp:
        tmp.write_text(_page("vaepipe samples", body))
    return samples_dir / "index.html"
