"""Reports as a person sees them: rendered in headless Chromium, every thumbnail loads; duplicate groups are right."""

import io
import json
import re
from dataclasses import replace
from pathlib import Path
import shutil
import subprocess

import pyarrow.parquet as pq
import numpy as np
import pytest
from PIL import Image

from helpers import FAST_TRAIN, SERIAL, flat_index, write_fmnist
from vaepipe.build import build
from vaepipe.config import BuildConfig, IngestConfig
from vaepipe.generate import generate
from vaepipe.query import query_all
from vaepipe.report import group_of, outliers, same_group_rows
from vaepipe.store import Workdir

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
    # Pages are made one at a time: together they show every query once, in the table's order, and each links all.
    shown = [re.findall(r'<div class="q"><figure>.*?<figcaption>(.*?)</figcaption>', page.read_text())
             for page in [report, *pages]]
    assert [len(s) for s in shown] == [100] * 6
    in_table = list(dict.fromkeys(pq.read_table(result.neighbours, columns=["query_path"])["query_path"].to_pylist()))
    assert [q for s in shown for q in s] == in_table
    assert all(page.read_text().count('<a href="report-') >= 2 * 5 for page in [report, *pages])  # nav, top and bottom
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
    # Trained longer than FAST_TRAIN: near-duplicate detection needs an embedding finer than the class level.
    build(root / "images", wd, BuildConfig(IngestConfig(workers=1), replace(FAST_TRAIN, epochs=10), SERIAL))
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

    # The likely duplicates only: every query with a neighbour in its own group, with those neighbours alone.
    expected = dict(zip(groups["path"], groups["group"]))
    rows = pq.read_table(result.neighbours).to_pandas()
    same = rows[[expected.get(q, -1) == expected.get(n, -2) for q, n in zip(rows.query_path, rows.neighbour_path)]]
    assert len(same) and len(same) < len(rows)
    likely = same_group_rows(result.neighbours, group_of(pq.read_table(result.duplicates)))
    assert {(q, r["neighbour_path"]) for q, _, rs in likely for r in rs} == set(zip(same.query_path, same.neighbour_path))
    page = render(result.run_dir / "likely-duplicates.html")
    assert page["broken"] == 0 and page["queries"] == same.query_path.nunique() == len(likely)
    assert page["images"] == len(likely) + len(same)


def test_outliers_are_the_images_least_like_any_other(built_copy):
    result = query_all(built_copy, k=3)
    rows = pq.read_table(result.neighbours).to_pandas()
    firsts = rows[rows["rank"] == 1].sort_values("similarity")
    shown = outliers(result.neighbours, n=20)
    assert len(shown) == 20 and [r["similarity"] for r in shown] == sorted(r["similarity"] for r in shown)
    assert shown[0]["similarity"] == firsts.similarity.iloc[0]
    # Every rank-1 row less alike than the last one shown is shown, or is the other half of a pair shown.
    pairs = {frozenset((r["query_path"], r["neighbour_path"])) for r in shown}
    below = firsts[firsts.similarity < shown[-1]["similarity"]]
    assert all(frozenset(pair) in pairs for pair in zip(below.query_path, below.neighbour_path))
    assert len(pairs) == len(shown)  # two images each other's nearest: shown once
    html_text = result.report.read_text()
    assert 'id="outliers"' in html_text and shown[0]["query_path"] in html_text
    # The run time on the report is the one the command prints; writing the report is counted apart.
    assert f"{result.summary()['seconds']:.2f} s (search and groups" in html_text and result.report_seconds > 0
    # Similarity is shown with four digits, which tell a row's neighbours apart: no other picture shows as 1.0000,
    # and next neighbours rarely show the same value.
    shown_sims = re.findall(r'<div class="sim">#\d+ sim ([-\d.]+)</div>', html_text)
    assert shown_sims and all(len(v.split(".")[1]) == 4 for v in shown_sims)
    labels = rows.sort_values(["query_path", "rank"]).assign(label=lambda d: d["similarity"].map("{:.4f}".format))
    other = labels[labels["query_sha256"] != labels["neighbour_sha256"]]
    assert not (other["label"] == "1.0000").any()
    same_query = labels["query_path"].eq(labels["query_path"].shift())
    assert (labels["label"].eq(labels["label"].shift()) & same_query).sum() < 0.1 * same_query.sum()


def test_thumbnails_are_kept_by_content_for_the_next_run(built_copy):
    """A second report links the first one's thumbnails instead of making them again; the run folder stays whole
    on its own; a file changed since it was indexed gets a thumbnail of what it is now, which is not kept."""
    first = query_all(built_copy, k=3)
    kept = {p.name: p.stat().st_ino for p in built_copy.thumbs_dir.iterdir()}
    assert kept and kept.keys() == {p.name for p in (first.run_dir / "thumbs").iterdir()}
    root = Path(json.loads(built_copy.collection.read_text())["image_root"])
    shutil.rmtree(built_copy.thumbs_dir)  # start the cache again, with one file changed since indexing
    victim = sorted(root.rglob("*.png"))[0]
    original = victim.read_bytes()
    try:
        Image.open(victim).transpose(Image.Transpose.ROTATE_90).save(victim)
        second = query_all(built_copy, k=3)
        again = query_all(built_copy, k=3)
    finally:
        victim.write_bytes(original)
    thumbs = {p.name: p.stat() for p in (again.run_dir / "thumbs").iterdir()}
    assert thumbs.keys() == {p.name for p in (second.run_dir / "thumbs").iterdir()}
    cached = {p.name: p.stat().st_ino for p in built_copy.thumbs_dir.iterdir()}
    assert len(cached) == len(thumbs) - 1  # all but the changed file's
    assert all(thumbs[name].st_ino == ino for name, ino in cached.items())  # linked, not made again
    assert render(again.report)["broken"] == 0


def test_links_and_identical_files_are_marked_among_the_neighbours(tmp_path):
    """A symbolic and a hard link to an image are that image: the report says so beside them, and an identical
    copy is marked as identical bytes (the duplicate groups call them links and exact)."""
    from vaepipe.build import build
    from vaepipe.config import BuildConfig

    images = tmp_path / "images"
    paths = write_fmnist(images, n=40)
    (images / "symlink.png").symlink_to(paths[0])
    (images / "hardlink.png").hardlink_to(paths[0])
    shutil.copy(paths[5], images / "copy.png")
    wd = Workdir(tmp_path / "wd")
    build(images, wd, BuildConfig(ingest=IngestConfig(workers=1), train=FAST_TRAIN, embed=SERIAL))
    result = query_all(wd, k=3)
    page = result.report.read_text()
    first = paths[0].relative_to(images).as_posix()
    # Each of the three names the other two under it, and neither is shown as its neighbour.
    listed = re.findall(r"the same file \(a link\) at: ([^<]*)</div>", page)
    assert len(listed) == 3 and sorted(sorted(names.split(", ")) for names in listed) == sorted(
        sorted({first, "symlink.png", "hardlink.png"} - {q}) for q in (first, "symlink.png", "hardlink.png"))
    shown = [re.findall(r"<figcaption>([^<]*)</figcaption>", b) for b in page.split('<div class="query">')[1:]]
    for names in shown:
        if names[0] in {first, "symlink.png", "hardlink.png"}:
            assert not {first, "symlink.png", "hardlink.png"} & set(names[1:])
    assert page.count("identical bytes") == 2  # the copy and its original, each the other's
    kinds = pq.read_table(result.duplicates).to_pandas().groupby("kind")["path"].apply(set).to_dict()
    assert kinds["links"] == {first, "symlink.png", "hardlink.png"} and kinds["exact"] == {paths[5].relative_to(images).as_posix(), "copy.png"}


def test_thumbnails_keep_palette_transparency(tmp_path):
    """A palette PNG with a transparent colour (as many icons and clip art are) keeps its transparency in the
    report: read as plain RGB, its transparent field turned black."""
    from vaepipe.report import Thumbs

    img = Image.new("P", (64, 64), 0)
    img.putpalette([0, 0, 0, 200, 30, 30] + [0] * 762)
    img.paste(1, (16, 16, 48, 48))
    img.save(tmp_path / "icon.png", transparency=0)
    thumbs = Thumbs(tmp_path / "thumbs")
    link = thumbs.link("abc", tmp_path / "icon.png")
    with Image.open(tmp_path / link) as thumb:
        assert thumb.mode == "RGBA" and thumb.getpixel((0, 0))[3] == 0 and thumb.getpixel((32, 32))[:3] == (200, 30, 30)


def test_groups_join_pairs_above_the_threshold_whatever_k(tmp_path):
    from vaepipe.duplicates import duplicate_groups

    rng = np.random.default_rng(0)
    base = rng.normal(size=(4, 16))
    copies = base[0] + 0.05 * rng.normal(size=(12, 16))  # twelve copies of one picture: more than any -k
    vectors = np.vstack([copies, base[1], base[1] + 0.05 * rng.normal(size=16), base[2], base[3], base[3]])
    paths = [f"copy-{i:02d}" for i in range(12)] + ["b", "b2", "c", "d1", "d2"]
    shas = [f"s{i}" for i in range(14)] + ["sc", "sd", "sd"]  # d1 and d2: the same bytes
    groups = duplicate_groups(flat_index(vectors, paths, shas), threshold=0.95).to_pylist()
    by_group: dict[int, tuple[str, set]] = {}
    for g in groups:
        by_group.setdefault(g["group"], (g["kind"], set()))[1].add(g["path"])
    assert sorted((kind, sorted(members)) for kind, members in by_group.values()) == [
        ("exact", ["d1", "d2"]), ("near", ["b", "b2"]), ("near", [f"copy-{i:02d}" for i in range(12)])]
    assert duplicate_groups(flat_index(vectors, paths, shas), threshold=0.9999).to_pylist() == [
        {"group": 1, "kind": "exact", "path": p, "sha256": "sd"} for p in ("d1", "d2")]


def test_groups_of_one_size_come_closest_first():
    from vaepipe.duplicates import duplicate_groups

    basis = np.eye(8)

    def at(cos: float, a: int, b: int) -> np.ndarray:
        return cos * basis[a] + np.sqrt(1 - cos ** 2) * basis[b]

    vectors = np.array([basis[0], at(0.96, 0, 1), basis[2], at(0.995, 2, 3), basis[4], at(0.98, 4, 5),
                        basis[6], at(0.97, 6, 7), at(0.97, 6, 5)])
    paths = ["a", "a2", "b", "b2", "c", "c2", "d", "d2", "d3"]
    groups = duplicate_groups(flat_index(vectors, paths, paths), threshold=0.95).to_pandas()
    order = [sorted(g) for _, g in groups.groupby("group", sort=True)["path"]]
    assert order == [["d", "d2", "d3"], ["b", "b2"], ["c", "c2"], ["a", "a2"]]  # the largest, then the closest


def test_a_picture_and_its_only_copy_pair_up_below_the_threshold(tmp_path):
    """The ratio test (duplicates.only_copy_pairs): two images each other's most alike, clearly more alike than
    anything else, pair up below the threshold; three look-alikes, a picture with two copies (for the threshold and
    the views to group), a pair not alike enough and identical files do not; a pair not alike enough as stored
    pairs up once a view finds them alike."""
    from vaepipe.duplicates import candidate_pairs, only_copy_pairs

    rng = np.random.default_rng(1)
    basis = np.linalg.qr(rng.normal(size=(64, 64)))[0].T  # orthonormal: unrelated pictures have similarity 0

    def at(cos: float, a: int, b: int) -> np.ndarray:  # a vector with cosine `cos` to basis[a]
        return cos * basis[a] + np.sqrt(1 - cos ** 2) * basis[b]

    vectors = [basis[0], at(0.95, 0, 1),  # a picture and its only copy
               basis[2], at(0.95, 2, 3), at(0.95, 2, 4),  # three look-alikes: none is clearly the other's only copy
               basis[5], at(0.85, 5, 6),  # most alike to each other, but not alike enough
               basis[7], at(0.85, 7, 8), at(0.97, 7, 9),  # two copies: neither is the only one
               basis[10], basis[10]]  # identical files: an exact group, not a near pair
    paths = [f"p{i:02d}" for i in range(len(vectors))]
    shas = paths[:-1] + ["p10"]
    index = flat_index(np.array(vectors), paths, shas)
    candidates = candidate_pairs(index)  # no model: nothing seen through views
    a, b = only_copy_pairs(index, candidates, index.nearest_of_all(3))
    assert [(paths[i], paths[j]) for i, j in zip(a, b)] == [("p00", "p01")]

    candidates.seen[(candidates.a == 5) & (candidates.b == 6)] = 0.97  # as if a view showed p06 is p05 turned
    a, b = only_copy_pairs(index, candidates, index.nearest_of_all(3))
    assert [(paths[i], paths[j]) for i, j in zip(a, b)] == [("p00", "p01"), ("p05", "p06")]


def test_samples_page_shows_every_picture(built, fmnist_dir, tmp_path):
    mid = json.loads(built.collection.read_text())["model_id"]
    result = generate(built.model_file(mid), fmnist_dir, built.manifest, tmp_path / "s", n=8)
    assert result.page == tmp_path / "s" / "index.html"
    check = render(result.page)
    assert check["broken"] == 0 and check["images"] == 4 + 8  # prior and fitted grids, reconstructions, interpolation


def test_the_threshold_follows_what_the_model_was_trained_for(tmp_path):
    """A model trained for copies uses the threshold chosen on the validation folders; a plain VAE is calibrated on
    the collection (JPEG re-saves), whose similarities are measured and recorded."""
    import torch

    from vaepipe.duplicates import COPY_THRESHOLD, calibrate_threshold
    from vaepipe.images import load_array
    from vaepipe.model import VAE, VAEConfig

    paths = write_fmnist(tmp_path / "images", n=20)
    rel = [p.relative_to(tmp_path / "images").as_posix() for p in paths]
    for invariance, rule in ((0.03, "fixed for models trained for copies"), (0.0, "5th percentile of JPEG re-saves")):
        torch.manual_seed(0)
        model = VAE(VAEConfig(image_size=28, channels=1, latent_dim=8, invariance=invariance)).eval()
        with torch.no_grad():
            x = torch.stack([torch.from_numpy(load_array(p, model.config.spec)) for p in paths]).float() / 255
            vectors = model.embed(x).numpy()
        index = flat_index(vectors - vectors.mean(0), rel, [f"sha{i}" for i in range(len(rel))])
        index.meta["centre"] = vectors.mean(0).tolist()
        cal = calibrate_threshold(model, index, tmp_path / "images")
        assert cal.rule == rule
        if invariance:  # fixed: no image is decoded for it
            assert cal.threshold == COPY_THRESHOLD and cal.sampled == 0
        else:
            assert cal.sampled == 20 and 0.5 < cal.resave_similarity["0.5"] <= 1.0001
            assert cal.threshold == cal.resave_similarity["0.05"]


def test_images_gone_since_indexing_are_a_few_warnings_not_one_per_image(built, tmp_path, caplog):
    """A report of a collection whose files were moved away: the pages are written, ten images are named, and the
    rest are counted in one line."""
    from vaepipe.build import build
    from vaepipe.config import BuildConfig

    images = tmp_path / "images"
    paths = write_fmnist(images, n=40)
    wd = Workdir(tmp_path / "work")
    model = built.model_dir(json.loads(built.collection.read_text())["model_id"]) / "model.pt"
    build(images, wd, BuildConfig(ingest=IngestConfig(workers=1), embed=SERIAL), model=model)
    for p in paths[:30]:
        p.unlink()
    with caplog.at_level("WARNING", logger="vaepipe"):
        result = query_all(wd, k=3)
    named = [r for r in caplog.records if "no thumbnail for" in r.getMessage()]
    assert len(named) == 10
    assert any("20 more images without a thumbnail" in r.getMessage() for r in caplog.records)
    assert result.report.exists() and "missing" in result.report.read_text()
