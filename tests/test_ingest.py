"""The manifest records every file seen, bad ones with the reason, and skips unchanged files on re-runs."""

import os
import random

import pyarrow as pa
import pyarrow.parquet as pq

from helpers import write_fmnist, write_mixed
from vaepipe.config import IngestConfig
from vaepipe.ingest import ingest, read_ok, scan, walk
from vaepipe.store import MANIFEST_SCHEMA, sha256_file


def test_manifest_has_a_row_per_file_and_reasons_for_bad_ones(tmp_path):
    files = write_mixed(tmp_path / "imgs")
    (tmp_path / "imgs" / ".hidden").mkdir()
    (tmp_path / "imgs" / ".hidden" / "x.png").write_bytes((tmp_path / "imgs" / "grey.png").read_bytes())
    result = ingest(tmp_path / "imgs", tmp_path / "manifest.parquet", IngestConfig(workers=1))

    table = pq.read_table(tmp_path / "manifest.parquet")
    assert table.schema.equals(MANIFEST_SCHEMA)
    rows = {r["path"]: r for r in table.to_pylist()}
    assert set(rows) == {p.relative_to(tmp_path / "imgs").as_posix() for p in files.values()}  # hidden skipped
    assert result.n_files == len(files) and result.n_error == 3 and result.n_ok == len(files) - 3
    assert rows["bad/notes.jpg"]["status"] == "error" and rows["bad/notes.jpg"]["error"] == "not an image: format not recognised"
    assert "0 bytes" in rows["bad/empty.png"]["error"]
    assert "truncated" in rows["bad/truncated.png"]["error"]
    ok = rows["colour/photo.jpg"]
    assert ok["status"] == "ok" and ok["error"] is None
    assert (ok["width"], ok["height"], ok["mode"]) == (60, 40, "RGB")
    assert ok["sha256"] == sha256_file(files["jpeg"])
    assert ok["bytes"] == files["jpeg"].stat().st_size
    assert read_ok(tmp_path / "manifest.parquet").num_rows == result.n_ok


def test_a_workdir_inside_the_image_folder_is_not_indexed(tmp_path, caplog):
    """Its thumbnails and samples are PNGs: indexed, every image's nearest neighbour would be its own thumbnail."""
    files = write_mixed(tmp_path / "imgs")
    thumbs = tmp_path / "imgs" / "wd" / "runs" / "r1" / "thumbs"
    thumbs.mkdir(parents=True)
    (thumbs / "a.png").write_bytes(files["grey"].read_bytes())
    (tmp_path / "imgs" / "wdx").mkdir()  # a sibling whose name starts like the workdir's is still read
    (tmp_path / "imgs" / "wdx" / "b.png").write_bytes(files["grey"].read_bytes())
    with caplog.at_level("WARNING", logger="vaepipe"):
        ingest(tmp_path / "imgs", tmp_path / "imgs" / "wd" / "manifest.parquet", IngestConfig(workers=1))
    paths = pq.read_table(tmp_path / "imgs" / "wd" / "manifest.parquet")["path"].to_pylist()
    assert "wdx/b.png" in paths and not any(p.startswith("wd/") for p in paths)
    assert "lies inside the image folder" in caplog.text


def test_files_plainly_not_images_by_name_are_skipped_not_failed(tmp_path):
    files = write_mixed(tmp_path / "imgs")
    (tmp_path / "imgs" / "index.theme.json").write_text("{}")
    (tmp_path / "imgs" / "app.desktop").write_text("[Desktop Entry]\n")
    (tmp_path / "imgs" / "README").write_text("icons")
    (tmp_path / "imgs" / "photo.txt").write_bytes(files["jpeg"].read_bytes())  # an image, by its name not one
    result = ingest(tmp_path / "imgs", tmp_path / "m.parquet", IngestConfig(workers=1))
    rows = {r["path"]: r for r in pq.read_table(tmp_path / "m.parquet").to_pylist()}
    skipped = {p: r["error"] for p, r in rows.items() if r["status"] == "skipped"}
    assert skipped == {"index.theme.json": "not an image: file type .json is not read",
                       "app.desktop": "not an image: file type .desktop is not read",
                       "README": "not an image: file type (no suffix) is not read",
                       "photo.txt": "not an image: file type .txt is not read"}
    # the three bad files with image names stay failures
    assert result.n_skipped == 4 and result.n_error == 3 and all(r["status"] == "error" for p, r in rows.items()
                                                                  if p.startswith("bad/"))


def test_excluded_files_are_not_read(tmp_path):
    files = write_mixed(tmp_path / "imgs")
    (tmp_path / "imgs" / "meta.json").write_text("{}")
    config = IngestConfig(workers=1, exclude=("*.json", "bad/*", "colour/photo.jpg"))
    result = ingest(tmp_path / "imgs", tmp_path / "m.parquet", config)
    paths = set(pq.read_table(tmp_path / "m.parquet")["path"].to_pylist())
    assert not any(p.endswith(".json") or p.startswith("bad/") for p in paths) and "colour/photo.jpg" not in paths
    assert result.n_error == 0 and result.n_files == len(paths) == len(files) - 4  # 3 bad files and the photo


def test_rerun_reads_only_changed_files(tmp_path):
    files = write_mixed(tmp_path / "imgs")
    m = tmp_path / "manifest.parquet"
    first = ingest(tmp_path / "imgs", m, IngestConfig(workers=1))
    files["grey"].write_bytes(files["png_rgb"].read_bytes())  # content changes
    os.utime(files["grey"], (1, 1))
    files["bmp"].unlink()
    second = ingest(tmp_path / "imgs", m, IngestConfig(workers=1))
    assert second.n_files == first.n_files - 1
    assert second.n_reused == first.n_ok - 2  # all ok files but the changed and the deleted one
    rows = {r["path"]: r for r in pq.read_table(m).to_pylist()}
    assert rows["grey.png"]["sha256"] == sha256_file(files["png_rgb"]) and rows["grey.png"]["mode"] == "RGB"


def test_mtime_is_a_timestamp_and_manifests_with_float_seconds_are_upgraded_without_reading_files_again(tmp_path):
    files = write_mixed(tmp_path / "imgs")
    m = tmp_path / "manifest.parquet"
    first = ingest(tmp_path / "imgs", m, IngestConfig(workers=1))
    frame = pq.read_table(m).to_pandas()
    assert str(frame["mtime"].dtype) == "datetime64[ns, UTC]"
    stamp = frame.set_index("path")["mtime"]
    assert all(stamp[p.relative_to(tmp_path / "imgs").as_posix()].value == p.stat().st_mtime_ns for p in files.values())

    # The manifest as versions before this one wrote it: mtime in float seconds from os.stat, the same metadata.
    table = pq.read_table(m)
    seconds = pa.array([None if r["mtime"] is None else os.stat(tmp_path / "imgs" / r["path"]).st_mtime
                        for r in table.to_pylist()], pa.float64())
    old = table.set_column(table.schema.get_field_index("mtime"), "mtime", seconds)
    pq.write_table(old.replace_schema_metadata(table.schema.metadata), m)
    assert read_ok(m).schema.equals(MANIFEST_SCHEMA) and read_ok(m).num_rows == first.n_ok  # read as it is

    os.utime(files["grey"], (1, 1))  # a file touched since is still read again
    second = ingest(tmp_path / "imgs", m, IngestConfig(workers=1))
    assert second.n_reused == first.n_ok - 1 and second.n_files == first.n_files
    upgraded = pq.read_table(m)
    assert upgraded.schema.equals(MANIFEST_SCHEMA)
    for r in upgraded.to_pylist():
        if r["status"] == "ok":  # the timestamp converts back to the float that was kept
            assert r["mtime"].value / 1_000_000_000 == os.stat(tmp_path / "imgs" / r["path"]).st_mtime, r["path"]


def test_a_rerun_with_other_rules_for_usable_files_gives_what_a_rebuild_gives(tmp_path):
    """Rows are reused only under the rules that decided them: a lower pixel limit or no longer following links
    out of the folder must turn rows that were ok into errors, as a first run with those settings would."""
    from PIL import Image

    (tmp_path / "imgs").mkdir()
    (tmp_path / "outside").mkdir()
    Image.new("RGB", (300, 300), "red").save(tmp_path / "imgs" / "big.png")
    Image.new("RGB", (20, 20), "blue").save(tmp_path / "imgs" / "small.png")
    Image.new("RGB", (20, 20), "green").save(tmp_path / "outside" / "x.png")
    os.symlink(tmp_path / "outside" / "x.png", tmp_path / "imgs" / "link.png")
    m = tmp_path / "manifest.parquet"
    loose = IngestConfig(workers=1, follow_symlinks_outside=True)
    assert ingest(tmp_path / "imgs", m, loose).n_ok == 3
    strict = IngestConfig(workers=1, max_pixels=10_000)
    again = ingest(tmp_path / "imgs", m, strict)
    rebuilt = ingest(tmp_path / "imgs", tmp_path / "fresh.parquet", strict)
    columns = ["path", "status", "error", "sha256"]
    assert pq.read_table(m, columns=columns).equals(pq.read_table(tmp_path / "fresh.parquet", columns=columns))
    assert again.n_ok == rebuilt.n_ok == 1 and again.n_reused == 0
    assert ingest(tmp_path / "imgs", m, strict).n_reused == 1  # same rules again: the usable row is reused


def test_parallel_ingest_matches_serial(tmp_path, fmnist_dir):
    serial = ingest(fmnist_dir, tmp_path / "a.parquet", IngestConfig(workers=1))
    parallel = ingest(fmnist_dir, tmp_path / "b.parquet", IngestConfig(workers=2))
    assert serial.n_ok == parallel.n_ok == len(scan(fmnist_dir))
    a, b = pq.read_table(tmp_path / "a.parquet"), pq.read_table(tmp_path / "b.parquet")
    assert a.select(["path", "sha256"]).equals(b.select(["path", "sha256"]))


def test_walk_lists_files_in_the_order_of_their_relative_names(tmp_path):
    # Names where walking directory by directory and sorting whole paths could disagree: "a.png" < "a/x" < "a0".
    names = ["a", "a.png", "a0", "a-b", "a b", "A", "ä", "a_", "a.b"]
    rng = random.Random(0)
    for _ in range(200):
        path = tmp_path.joinpath(*(rng.choice(names) for _ in range(rng.randint(1, 4))))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
        except OSError:  # a name already taken by a file (or a directory) of the other kind
            pass
    everything = sorted((p for p in tmp_path.rglob("*") if p.is_file()), key=lambda p: p.relative_to(tmp_path).as_posix())
    assert len(everything) > 50 and any(p.parent != tmp_path for p in everything)
    assert list(walk(tmp_path)) == [str(p) for p in everything]


def test_rerun_counts_the_same_changes_whatever_the_chunk_size(tmp_path, caplog):
    images = tmp_path / "imgs"
    paths = write_fmnist(images, n=40)
    for every in (3, 7, 1000):  # chunk edges between the changes, and one chunk for all
        ingest(images, tmp_path / f"m{every}.parquet", IngestConfig(workers=1, checkpoint_every=every))
    ordered = sorted(paths, key=lambda p: p.relative_to(images).as_posix())
    for p in ordered[:2] + ordered[17:19] + ordered[-2:]:  # removed: first, middle and last of the walk
        p.unlink()
    for p, donor in zip(ordered[5:8], write_fmnist(tmp_path / "donors", start=100, n=3)):
        p.write_bytes(donor.read_bytes())  # new content under the same path
    write_fmnist(images / "0-first", start=200, n=2)  # added before every earlier file, and among them
    write_fmnist(images / "m-middle", start=300, n=2)
    counts = {}
    for every in (3, 7, 1000):
        r = ingest(images, tmp_path / f"m{every}.parquet", IngestConfig(workers=1, checkpoint_every=every))
        counts[every] = (r.added, r.changed, r.removed, r.kept, r.n_reused)
        table = pq.read_table(tmp_path / f"m{every}.parquet")
        assert table["path"].to_pylist() == sorted(table["path"].to_pylist())
    assert counts[3] == counts[7] == counts[1000] == (4, 3, 6, 40 - 6 - 3, 40 - 6 - 3)
