"""Reports as a person sees them: rendered in headless Chromium, every thumbnail loads; duplicate groups are right."""

import io
import json
from dataclasses import replace
import shutil
import subprocess

import pyarrow.parquet as pq
import pytest
from PIL import Image

from conftest import FAST_TRAIN, SERIAL, write_fmnist
from vaepipe.config import IngestConfig
from vaepipe.embed import embed
from vaepipe.generate import generate
from vaepipe.index import build_index
from vaepipe.ingest import ingest
from vaepipe.query import query_all
from vaepipe.store import Workdir
from vaepipe.train import train

CHECK_PAGE = """<!doctype html><html><body><iframe id="r" src="{page}" style="width:1200px;height:900px"></iframe>
<script>
document.getElementById("r").addEventListener("load", () => {{
  const doc = document.getElementById("r").contentDocument;
  const imgs = [...doc.images];
  const wait = () => {{
    if (!imgs.every(i => i.complete)) return setTimeout(wait, 50);
    const result = {{images: imgs.length, broken: imgs.filter(i => i.naturalWidth === 0).length,
                    queries: doc.querySelectorAll(".query").length, groups: doc.querySelectorAll(".group").length}};
    document.body.setAttribute("data-result", JSON.stringify(result));
  }};
  wait();
}});
</script></body></html>"""


def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    assert exe, "chromium is missing: `make test` installs it (Debian package 'chromium')"
    return exe


def render(page) -> dict:
    """Open `page` in headless Chromium and return what the page's images and blocks look like once loaded."""
    check = page.parent / f"check-{page.stem}.html"
    check.write_text(CHECK_PAGE.format(page=page.name))
    out = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
                          "--virtual-time-budget=20000", "--dump-dom", check.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    marker = 'data-result="'
    assert marker in out, out[-2000:]
    raw = out.split(marker, 1)[1].split('"', 1)[0].replace("&quot;", '"')
    return json.loads(raw)


def screenshot(page, out) -> None:
    subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--window-size=1280,1000", f"--screenshot={out}", page.as_uri()], capture_output=True, timeout=120)


def test_report_renders_with_every_thumbnail(built_copy, tmp_path):
    result = query_all(built_copy, k=5)
    report = result.report
    assert report == result.run_dir / "report.html"
    first = render(report)
    assert first == {"images": first["images"], "broken": 0, "queries": 100, "groups": first["groups"]}
    assert first["images"] >= 100 * 6  # each query and its 5 neighbours
    pages = sorted(result.run_dir.glob("report-*.html"))
    assert len(pages) == 5  # 600 queries, 100 per page
    last = render(pages[-1])
    assert last["broken"] == 0 and last["queries"] == 100
    # links are relative: the run folder can be moved or mailed as a whole
    moved = shutil.copytree(result.run_dir, tmp_path / "moved")
    assert render(moved / "report.html")["broken"] == 0
    screenshot(report, tmp_path / "shot.png")
    with Image.open(tmp_path / "shot.png") as shot:
        assert shot.size == (1280, 1000) and len(shot.convert("L").getcolors(256) or []) > 20  # not a blank page


@pytest.fixture(scope="module")
def with_copies(tmp_path_factory):
    """A collection with 3 byte-identical copies and 3 re-saved JPEG copies of its own images."""
    root = tmp_path_factory.mktemp("dups")
    originals = write_fmnist(root / "images", n=300)
    for i, src in enumerate(originals[10:13]):
        shutil.copy(src, root / "images" / f"exact-copy-{i}.png")
    for i, src in enumerate(originals[50:53]):
        buf = io.BytesIO()
        Image.open(src).convert("RGB").save(buf, format="JPEG", quality=92)
        (root / "images" / f"resaved-{i}.jpg").write_bytes(buf.getvalue())
    wd = Workdir(root / "wd")
    ingest(root / "images", wd.manifest, IngestConfig(workers=1))
    # Trained longer than FAST_TRAIN: near-duplicate detection needs an embedding finer than the class level.
    trained = train(root / "images", wd.manifest, wd, replace(FAST_TRAIN, epochs=10), workers=0)
    embed(root / "images", wd.manifest, trained.model_dir, wd.embeddings_dir(trained.model_id), SERIAL)
    build_index(wd.embeddings_dir(trained.model_id), wd.manifest, wd.index_dir(trained.model_id), trained.model_id)
    wd.write_collection(root / "images", trained.model_id)
    return root, wd, originals


def test_duplicate_groups_exact_and_near(with_copies):
    root, wd, originals = with_copies
    result = query_all(wd, k=5)
    groups = pq.read_table(result.duplicates).to_pandas()
    exact = groups[groups["kind"] == "exact"].groupby("group")["path"].apply(set).tolist()
    rel = [p.relative_to(root / "images").as_posix() for p in originals]
    assert sorted(exact, key=sorted) == sorted([{rel[10 + i], f"exact-copy-{i}.png"} for i in range(3)], key=sorted)
    near = groups[groups["kind"] == "near"].groupby("group")["path"].apply(set).tolist()
    found = sum(any({rel[50 + i], f"resaved-{i}.jpg"} <= g for g in near) for i in range(3))
    assert found >= 2  # the threshold is calibrated to catch 95% of such copies
    assert render(result.report)["groups"] == groups["group"].nunique()


def test_groups_are_mutual_neighbours_above_the_threshold(tmp_path):
    import pyarrow as pa

    from vaepipe.duplicates import duplicate_groups
    from vaepipe.store import NEIGHBOURS_SCHEMA

    ids = pa.table({"path": ["a", "b", "c", "d", "e", "f", "g"], "sha256": ["1", "2", "3", "4", "5", "6", "6"]})
    pairs = [("1", "2", 0.99), ("2", "1", 0.99),  # mutual and close: a near group {a, b}
             ("2", "3", 0.99),                    # one-way: does not chain c into it
             ("4", "5", 0.97), ("5", "4", 0.97),  # mutual but below the threshold
             ("3", "4", 0.5)]
    rows = [{"query_path": q, "query_sha256": q, "rank": 1, "neighbour_path": n, "neighbour_sha256": n,
             "distance": 1 - s, "similarity": s} for q, n, s in pairs]
    pq.write_table(pa.Table.from_pylist(rows, schema=NEIGHBOURS_SCHEMA), tmp_path / "n.parquet")
    groups = duplicate_groups(tmp_path / "n.parquet", ids, threshold=0.98).to_pylist()
    assert [(g["group"], g["kind"], g["path"]) for g in groups] == [(1, "exact", "f"), (1, "exact", "g"),
                                                                   (2, "near", "a"), (2, "near", "b")]


def test_samples_page_shows_every_picture(built, fmnist_dir, tmp_path):
    mid = json.loads(built.collection.read_text())["model_id"]
    result = generate(built.model_dir(mid) / "model.pt", fmnist_dir, built.manifest, tmp_path / "s", n=8)
    assert result.page == tmp_path / "s" / "index.html"
    check = render(result.page)
    assert check["broken"] == 0 and check["images"] == 3 + 8
